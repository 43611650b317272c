"""Choose Loihi-2-style fixed-point parameters for the Lava target and store them in the IR.

For every neuron population of the Lava lowering (and the read-out) the pass picks 8-bit even
weight mantissas with a weight exponent, a threshold mantissa (<= 2^14), v_init and a
13-bit bias mantissa + exponent (scheme: :mod:`snnconvert.targets.lava.fixed`). Scales come
from calibration data: the host-injected input current (99.99th percentile) and the read-out
current (99.9th percentile, float simulation at ``ctx.timesteps``). The integers are written
as initializers ``lava_fx.<neuron node>.{gain,exp_dv,vth_mant,v_init,w<k>}`` (``readout`` for
the output); float semantics of the IR are unchanged.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import DataError, TargetError
from .base import Pass, PassContext

CALIB_MAX = 256


class QuantizeFixedPoint(Pass):
    name = "quantize-fixed-point"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        from ..targets.lava import fixed, lowering, reference

        if ctx.calib is None or len(ctx.calib) == 0:
            raise DataError("fixed-point quantization needs calibration data",
                            hint="Pass --calib (a few hundred training inputs).")
        lg = lowering.lower(model)
        for p in lg.populations.values():
            for t in p.terms:
                if not lowering.fixed_compatible(t.ops):
                    raise TargetError("a synapse chain has two weighted ops; fixed point needs one",
                                      node=p.name, op="IF")
        x = np.asarray(ctx.calib[:CALIB_MAX], np.float64)
        dyn = reference.dynamic_bias(lg, x)
        bias_range = {k: float(np.percentile(np.abs(v), 99.99)) for k, v in dyn.items()}
        sim = reference.simulate(lg, x, ctx.timesteps)
        out_cur = sim.readout - lg.output.bias - dyn.get(lg.output.name, 0.0)
        p999 = float(np.percentile(np.abs(out_cur), 99.9))
        layers = fixed.quantize(lg, ctx.timesteps, bias_range, p999)
        fixed.store(model, layers)
        worst = max(layers[n].weight_exp for n in layers)
        ctx.info(self.name, f"{len(layers)} populations quantized (max weight exponent {worst}, "
                            f"read-out p99.9 current {p999:.3g})")
        return model
