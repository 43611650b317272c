"""Choose Loihi-2-style fixed-point parameters for the Lava target and store them in the IR.

For every neuron population of the Lava lowering (and the read-out) this picks 8-bit even
weight mantissas with a weight exponent, a threshold mantissa (<= 2^14), v_init and a
13-bit bias mantissa + exponent (scheme: :mod:`.fixed`). Scales come from calibration data:
the host-injected input current (99.99th percentile over samples and, for per-step input, steps) and the read-out current (99.9th
percentile, float simulation at the IR's T). The integers are written as initializers
``lava_fx.<neuron node>.{gain,exp_dv,vth_mant,v_init,w<k>}`` (``readout`` for the output) and
stamped (``ir.stamp_derived``) with a digest of the float parameters they came from, so a
model whose floats change afterwards (fine-tuning, editing) cannot deploy them silently.
Float semantics of the IR are unchanged.
"""
from __future__ import annotations

import numpy as np
import onnx

from ... import ir
from ...errors import DataError, TargetError
from . import fixed, inputs, lowering, reference

CALIB_MAX = 256
"""Calibration samples (analog input); per-step input takes 256 * 8 / T of them (at least 16):
its currents hold T values per sample."""


def quantize(model: onnx.ModelProto, calib: np.ndarray | None, timesteps: int | None = None
             ) -> onnx.ModelProto:
    """A copy of ``model`` carrying fixed-point parameters derived from its float ones."""
    if calib is None or len(calib) == 0:
        raise DataError("fixed-point quantization needs calibration data",
                        hint="Pass --calib (a few hundred training inputs).")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ir.drop_derived(out, (fixed.PREFIX,))
    t = timesteps or ir.timesteps(out)
    lg = lowering.lower(out)
    for p in lg.populations.values():
        for term in p.terms:
            if not lowering.fixed_compatible(term.ops):
                raise TargetError("a synapse chain has two weighted ops; fixed point needs one",
                                  node=p.name, op=ir.NEURON_OP)
    calib = np.asarray(calib[:CALIB_MAX])
    data_t = ir.data_steps(out, calib.shape, "the calibration data")
    if data_t is not None:  # time-varying calibration data: as many of its steps as T asks for
        t = min(t, data_t)
    if data_t is not None or ir.encoding(out).kind == "rate":
        calib = calib[:max(16, CALIB_MAX * 8 // t)]  # per-step currents: samples x T values each
    x = inputs.step_input(out, calib, t)
    dyn = inputs.input_currents(lg, x)
    bias_range = {k: float(np.percentile(np.abs(v), 99.99)) for k, v in dyn.items()}
    sim = reference.simulate(lg, x, t)
    out_cur = sim.readout - lg.output.bias - inputs.output_current_mean(
        dyn.get(lg.output.name), inputs.per_step(lg, x), 0, t)
    p999 = float(np.percentile(np.abs(out_cur), 99.9))
    fixed.store(out, fixed.quantize(lg, t, bias_range, p999))
    ir.stamp_derived(out, fixed.PREFIX)
    return out
