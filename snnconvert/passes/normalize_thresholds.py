"""Threshold balancing (Diehl 2015; Rueckauer 2017): θ = λ, the max or a high percentile of each
neuron layer's activation on calibration data, per layer or per channel.

Spikes carry amplitude θ in the IR, so setting θ = λ is equivalent to Rueckauer's weight
rescaling W·λ_{l-1}/λ_l with θ = 1 (OPI Theorem 1) and needs no weight change. Neurons from a
trained clip bound (Clip(0, c), ReLU6) keep θ = c unless ``override_clip``.
"""
from __future__ import annotations

import re

import numpy as np
import onnx

from .. import graph as g
from .. import ir
from ..errors import OptionError
from .base import Pass, PassContext

_METHOD = re.compile(r"^(max|percentile:(\d+(\.\d+)?))$")


def parse_method(method: str) -> str:
    """Validate 'max' or 'percentile:P' (0 < P <= 100)."""
    m = _METHOD.match(method.strip())
    if not m or (m.group(2) and not 0 < float(m.group(2)) <= 100):
        raise OptionError(f"unknown normalization '{method}'",
                          hint="Use 'max' or 'percentile:P' with 0 < P <= 100, e.g. percentile:99.99.")
    return method.strip()


class NormalizeThresholds(Pass):
    """Set every open (non-finite) threshold from the calibration statistics."""

    name = "normalize-thresholds"

    def __init__(self, method: str = "percentile:99.99", per_channel: bool = False,
                 override_clip: bool = False) -> None:
        self.method = parse_method(method)
        self.per_channel = per_channel
        self.override_clip = override_clip

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        done, kept, dead = 0, 0, 0
        for n in ir.neurons(model):
            if np.all(np.isfinite(n.threshold)) and not self.override_clip:
                kept += 1
                continue
            stats = ctx.stats.get(n.input)
            if stats is None:
                raise OptionError("no calibration statistics for this neuron", node=n.name, op=ir.NEURON_OP,
                                  hint="Run the 'calibrate' pass before 'normalize-thresholds'.")
            lam = np.asarray(stats.value(self.method, self.per_channel), np.float64)
            fallback = max(float(np.max(lam)), 1e-6) if lam.size else 1.0
            dead += int(np.sum(lam <= 0))
            lam = np.where(lam > 0, lam, fallback)
            if self.per_channel and lam.ndim == 1:
                rank = g.value_rank(model, n.input) or (4 if stats.channel_max.size > 1 else 2)
                lam = lam.reshape(g.channel_shape(rank, lam.size))
            ir.set_initializer(model, n.node.input[1], lam.astype(np.float32))
            ir.set_initializer(model, n.node.input[2],
                               np.zeros_like(lam, np.float32) + n.v_init.astype(np.float32))
            done += 1
        scope = "per channel" if self.per_channel else "per layer"
        msg = f"set {done} threshold(s) from '{self.method}' {scope}"
        if kept:
            msg += f"; kept {kept} trained clip bound(s)"
        if dead:
            msg += f"; {dead} channel(s) never active on the calibration data"
        ctx.info(self.name, msg)
        return model
