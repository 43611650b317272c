"""Layer-by-layer calibration for the chosen T, label-free, driven by the ANN's activations.

One simulation of the network at T = ctx.timesteps on a subset of the calibration data: when
the simulation reaches a neuron layer, its input current is the one the already calibrated
layers before it actually produce; the layer steps (threshold search, bias correction,
potential calibration, ...) fit that layer against the ANN's activation on the same samples,
and its calibrated spikes flow on. The fitted θ, v(0) and bias are then written into the IR
(the bias folded into the preceding Conv/Gemm where possible).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import onnx
import torch

from .. import graph as g
from .. import ir, onnxrt
from ..datasets import head, is_empty
from ..errors import DataError
from .base import Pass, PassContext
from .calibrate_potential import CalibratePotential
from .correct_bias import CorrectBias
from .layer_state import LayerState
from .optimize_init import apply_bias_correction, can_fold_bias, open_thresholds
from .search_thresholds import SearchThresholds

LayerStep = Callable[[LayerState], None]

SAMPLES = 1024
"""At most this many calibration samples per simulation (per-neuron potentials need many)."""

SAMPLE_STEPS = 8192
"""Calibration samples × T simulated at once: bounds the memory of the one-shot simulation
(ResNet-20's largest activation then holds 16·32·32·8192 floats, 0.5 GB; its calibration peaks
at 7.2 GB resident at T=8, measured; the activations scale with samples × T)."""


def default_steps(potential: bool = True) -> list[LayerStep]:
    """Threshold search, bias correction and (unless ``potential`` is False, which keeps v(0)
    as set) potential calibration."""
    return [SearchThresholds(), CorrectBias()] + ([CalibratePotential()] if potential else [])


def sample_count(timesteps: int, samples: int = SAMPLES, sample_steps: int = SAMPLE_STEPS) -> int:
    """Calibration samples one simulation at T uses (samples × T bounded by ``sample_steps``)."""
    return max(16, min(samples, sample_steps // timesteps))


def ann_activations(model: onnx.ModelProto, x: np.ndarray) -> dict[str, torch.Tensor]:
    """Every neuron's ANN activation (ReLU output, unclipped) on ``x``, keyed by neuron name."""
    by_output = {n.output: n.name for n in ir.neurons(model)}
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in onnxrt.iterate(open_thresholds(model), x, list(by_output), batch_size=64):
        for o, v in batch.items():
            chunks.setdefault(by_output[o], []).append(v)
    return {name: torch.from_numpy(np.concatenate(parts)) for name, parts in chunks.items()}


def _per_channel(value: np.ndarray, view: list[int]) -> torch.Tensor:
    arr = np.asarray(value, np.float32)
    if arr.size == view[0]:
        arr = arr.reshape(view)
    return torch.from_numpy(np.broadcast_to(arr, view).copy()) if arr.size in (1, view[0]) \
        else torch.from_numpy(arr.copy())


class CalibrateForT(Pass):
    """Fit each neuron layer, in order, at T = ctx.timesteps with ``steps`` (see module doc)."""

    name = "calibrate-for-T"

    def __init__(self, steps: Sequence[LayerStep] | None = None, samples: int = SAMPLES,
                 sample_steps: int = SAMPLE_STEPS) -> None:
        self.steps = list(default_steps() if steps is None else steps)
        self.samples, self.sample_steps = samples, sample_steps
        self.layers: dict[str, LayerState] = {}

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        from ..runtime import SpikingNetwork

        if is_empty(ctx.calib):
            raise DataError("calibration for T needs calibration data",
                            hint="Pass --calib C.npz, or choose --calibration none.")
        t0 = time.perf_counter()
        steps = ctx.timesteps
        x = head(ctx.calib, sample_count(steps, self.samples, self.sample_steps))
        rank = len(model.graph.input[0].type.tensor_type.shape.dim)
        if rank and x.ndim != rank:
            ctx.info(self.name, f"skipped: calibration samples of shape {list(x.shape[1:])} are "
                     "time-varying (one frame per step); layer-by-layer calibration runs on "
                     "static inputs")
            return model
        neurons = {n.name: n for n in ir.neurons(model)}
        targets = ann_activations(model, x)
        self.layers = {}

        def hook(name: str, current: torch.Tensor, lead: int, fire) -> torch.Tensor:
            n = neurons[name]
            target = targets[name].to(torch.float32)
            view = [target.shape[1]] + [1] * (target.dim() - 2)
            layer = LayerState(name, current.to(torch.float32), target, steps,
                               theta=_per_channel(n.threshold, view), v0=_per_channel(n.v_init, view),
                               bias=torch.zeros(view), reset=n.reset, leak=n.leak,
                               bias_foldable=can_fold_bias(model, n, view[0]))
            for step in self.steps:
                step(layer)
            self.layers[name] = layer
            spikes = layer.spikes()
            layer.current = layer.current[:0]  # free the layer's currents; the fit is done
            return spikes

        net = SpikingNetwork(model, time_chunk=None)
        net.neuron_hook = hook
        with torch.no_grad():
            net(torch.from_numpy(x), steps)
        for name, layer in self.layers.items():
            n = neurons[name]
            ir.set_initializer(model, n.node.input[1], layer.theta.numpy().astype(np.float32))
            ir.set_initializer(model, n.node.input[2], layer.v0.numpy().astype(np.float32))
            if bool(torch.any(layer.bias != 0)):
                apply_bias_correction(model, n, layer.bias.numpy().astype(np.float64))
        g.remove_unused_initializers(model.graph)
        first = sum(lay.history[0][1] for lay in self.layers.values() if lay.history)
        last = sum(lay.history[-1][2] for lay in self.layers.values() if lay.history)
        ctx.stats["calibrate-for-T"] = {name: lay.history for name, lay in self.layers.items()}
        ctx.info(self.name, f"fitted {len(self.layers)} neuron layer(s) at T={steps} on {len(x)} "
                 f"sample(s) with {', '.join(s.name for s in self.steps)}: summed layer error "
                 f"{first:.4g} -> {last:.4g} ({time.perf_counter() - t0:.1f} s)")
        return model
