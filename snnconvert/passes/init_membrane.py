"""Initial membrane potential: v(0) = 0 or θ/2 (Bu et al. 2022).

With v(0) = θ/2 the IF's rate code rounds instead of flooring: the expected quantization error
is zero and its mean square four times smaller (1/12 vs 1/3 of (θ/T)²).
"""
from __future__ import annotations

import numpy as np
import onnx

from .. import ir
from ..errors import OptionError
from .base import Pass, PassContext

MODES = {"zero": 0.0, "half": 0.5}


class InitMembrane(Pass):
    """Set v_init = fraction · θ for every neuron."""

    name = "init-membrane"

    def __init__(self, mode: str | float = "half") -> None:
        if isinstance(mode, str):
            if mode not in MODES:
                raise OptionError(f"unknown initial potential '{mode}'",
                                  hint="Use zero, half, optimized or a fraction of the threshold.")
            self.fraction = MODES[mode]
        else:
            self.fraction = float(mode)
        self.mode = mode

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        for n in ir.neurons(model):
            if not np.all(np.isfinite(n.threshold)):
                raise OptionError("threshold not set", node=n.name, op=ir.NEURON_OP,
                                  hint="Run 'normalize-thresholds' before 'init-membrane'.")
            ir.set_initializer(model, n.node.input[2], (self.fraction * n.threshold).astype(np.float32))
        ctx.info(self.name, f"v(0) = {self.fraction:g}·θ for {len(ir.neurons(model))} neuron layer(s)")
        return model
