"""Loihi-2-style fixed-point parameters of a layer graph, and their storage in the IR.

Per population, a ``gain`` g per channel (integer weight units per float unit of input current;
per neuron for flat layers) sets every scale: weights ``W_int = round_even(W*g_c / 2^we) << we``
(8-bit signed mantissa, even, one exponent we >= 0 per layer, baked in because Lava's Conv
ignores ``weight_exp``), threshold mantissa ``vth = round(theta*g)`` (<= 2^14: eight thresholds
of head-room in the 24-bit v), v_init and bias in v-units (``x*64*g``; bias as a 13-bit mantissa
<< 3-bit exponent). An IF neuron's spikes are unchanged when its input, bias, v and threshold
are scaled together, so each channel's gain is chosen to put that channel's largest weight near
the top of the shared mantissa range (a channel of small weights would otherwise keep only a few
bits), down to 1/128 of the threshold-limited gain. Populations fed by the host-computed input
get gains small enough for their bias range (data percentile).
The read-out has no threshold: full-range weights, capped so that T steps of the
99.9th-percentile current fit a 24-bit accumulator with a factor 2 margin.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .lowering import OUTPUT, LayerGraph

VTH_MAX = 1 << 14
W_MAX = 254
BIAS_MANT_MAX = 4095
BIAS_EXP_MAX = 7
V_LIMIT = (1 << 23) - 1
PREFIX = "lava_fx."


def round_even(x: np.ndarray) -> np.ndarray:
    """Nearest even integer: Lava's mixed-sign 8-bit weights keep only even values."""
    return (2 * np.rint(np.asarray(x) / 2)).astype(np.int64)


@dataclass
class FixedLayer:
    """Integer parameters of one population (weights: last op of each term, ONNX layout)."""

    gain: np.ndarray | float   # per neuron (population shape); a scalar for the read-out
    weight_exp: int
    vth: np.ndarray
    v_init: np.ndarray
    dv: int = 0
    weights: list[np.ndarray] = field(default_factory=list)

    def quantize_bias(self, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float bias current -> (13-bit mantissa, exponent 0..7), saturating."""
        v = np.asarray(bias, np.float64) * 64.0 * self.gain
        mag = np.abs(v)
        exp = np.ceil(np.log2(np.maximum(mag, 1.0) / (BIAS_MANT_MAX + 0.5)))
        exp = np.clip(exp, 0, BIAS_EXP_MAX).astype(np.int64)
        mant = np.clip(np.rint(v / np.exp2(exp)), -BIAS_MANT_MAX - 1, BIAS_MANT_MAX).astype(np.int64)
        return mant, exp


def quantize(lg: LayerGraph, timesteps: int, bias_range: dict[str, float],
             output_p999: float) -> dict[str, FixedLayer]:
    """Choose the integer parameters of every population of ``lg``.

    bias_range   population -> high percentile of |bias current| over calibration data
                 (only populations fed by the graph input need it)
    output_p999  99.9th percentile of |read-out current| per step (float units)
    """
    out: dict[str, FixedLayer] = {}
    for name, p in lg.populations.items():
        last = [[o for o in t.ops if o.is_process][-1].weight for t in p.terms]
        max_w = max((float(np.abs(w).max()) for w in last), default=0.0)
        if p.is_output:
            g = W_MAX / max_w if max_w > 0 else 1.0
            if output_p999 > 0:
                g = min(g, (V_LIMIT + 1) / (2 * 64 * timesteps * output_p999))
            we, rows = 0, np.full(p.shape[0], g)
            vth = np.zeros(p.shape, np.int64)
            v0 = np.zeros(p.shape, np.int64)
        else:
            rows, we = _channel_gains(p, last, bias_range.get(name, 0.0))
            g = np.broadcast_to(rows.reshape((-1,) + (1,) * (len(p.shape) - 1)), p.shape).copy()
            vth = np.maximum(np.rint(p.threshold * g), 1).astype(np.int64)
            v0 = np.clip(np.rint(p.v_init * 64 * g), -V_LIMIT, V_LIMIT).astype(np.int64)
        weights = [np.clip(round_even(w * rows.reshape((-1,) + (1,) * (w.ndim - 1)) / 2 ** we),
                           -256, W_MAX) << we for w in last]
        out[name] = FixedLayer(g, we, vth, v0, int(np.rint(p.leak * 4096)), weights)
    return out


GAIN_SPREAD = 7  # a channel's gain may drop to 2^-7 of its threshold limit (vth >= 128)


def _channel_gains(p, last: list[np.ndarray], input_bias: float) -> tuple[np.ndarray, int]:
    """Gain of each channel (neuron, in flat layers) and the layer's weight exponent."""
    per_c = p.threshold.reshape(p.shape[0], -1)
    reach = np.abs(p.bias) if p.step_bias is None else np.maximum(
        np.abs(p.bias), np.abs(p.bias + p.step_bias).max(axis=0))  # the largest over the steps
    bias_c = reach.reshape(p.shape[0], -1).max(axis=1) + input_bias
    limit = VTH_MAX / per_c.max(axis=1)
    with np.errstate(divide="ignore"):
        limit = np.minimum(limit, np.where(bias_c > 0, BIAS_MANT_MAX * 2 ** BIAS_EXP_MAX / (64.0 * bias_c),
                                           np.inf))
    peak = np.zeros(p.shape[0])
    for w in last:
        peak = np.maximum(peak, np.abs(w).reshape(w.shape[0], -1).max(axis=1))
    top = peak * limit                       # each channel's largest weight at its highest gain
    if not np.any(top > 0):
        g_c, we = limit, 0
    else:
        floor = max(top[top > 0].min(), top.max() / 2 ** GAIN_SPREAD)
        we = max(0, int(np.ceil(np.log2(floor / W_MAX))))
        with np.errstate(divide="ignore"):
            g_c = np.minimum(limit, np.where(peak > 0, W_MAX * 2 ** we / peak, np.inf))
    return g_c, we


def _key(pop: str) -> str:
    return PREFIX + ("readout" if pop == OUTPUT else pop) + "."


def store(model: onnx.ModelProto, layers: dict[str, FixedLayer]) -> None:
    """Write ``layers`` into ``model`` as initializers ``lava_fx.<population>.<field>``."""
    keep = [t for t in model.graph.initializer if not t.name.startswith(PREFIX)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    add = model.graph.initializer.append
    for pop, fx in layers.items():
        k = _key(pop)
        add(numpy_helper.from_array(np.asarray(fx.gain, np.float64), k + "gain"))
        add(numpy_helper.from_array(np.asarray([fx.weight_exp, fx.dv], np.int32), k + "exp_dv"))
        add(numpy_helper.from_array(fx.vth.astype(np.int32), k + "vth_mant"))
        add(numpy_helper.from_array(fx.v_init.astype(np.int32), k + "v_init"))
        for i, w in enumerate(fx.weights):
            add(numpy_helper.from_array(w.astype(np.int32), k + f"w{i}"))


def load_layers(model: onnx.ModelProto, lg: LayerGraph) -> dict[str, FixedLayer] | None:
    """Read what :func:`store` wrote, or None if the model carries no fixed-point data."""
    inits = {t.name: t for t in model.graph.initializer if t.name.startswith(PREFIX)}
    if not inits:
        return None
    arr = lambda n: numpy_helper.to_array(inits[n])  # noqa: E731
    out = {}
    for pop, p in lg.populations.items():
        k = _key(pop)
        if k + "gain" not in inits:
            raise KeyError(f"fixed-point data missing for population '{pop}'")
        we, dv = (int(v) for v in arr(k + "exp_dv"))
        gain = arr(k + "gain").astype(np.float64)
        out[pop] = FixedLayer(float(gain) if gain.ndim == 0 else gain, we, arr(k + "vth_mant").astype(np.int64),
                              arr(k + "v_init").astype(np.int64), dv,
                              [arr(k + f"w{i}").astype(np.int64) for i in range(len(p.terms))])
    return out
