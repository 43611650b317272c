"""Emit a :class:`LayerGraph` as connected Lava processes, B samples side by side.

Layouts (no batch axis in Lava): an image population (C, H, W) is a Lava array (W, H, B*C)
with channel index b*C + c; a flat population (F,) is (B, 1, F). Conv ops become
``Conv(groups=B*g)`` with the kernel tiled B times (ONNX correlation -> Lava convolution:
flip + (Cout, kW, kH, Cin/g)); dense ops become a 1x1 ``Conv`` on the (B, 1, F) view, so no
weight is copied per sample; a flatten is a port ``transpose([2, 1, 0]).reshape((B, 1, CHW))``
that keeps ONNX's (c, h, w) order. Neurons are :class:`IF` with pipelined resets
(interval T+D, offset depth+1); the read-out is a :class:`WindowSum` sink.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fixed import FixedLayer
from .lowering import OUTPUT, LayerGraph, Op, Population


def to_lava(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """[B, *shape] -> Lava layout."""
    b = x.shape[0]
    if len(shape) == 1:
        return x.reshape(b, 1, shape[0])
    c, h, w = shape
    return x.transpose(3, 2, 0, 1).reshape(w, h, b * c)


def from_lava(a: np.ndarray, shape: tuple[int, ...], b: int) -> np.ndarray:
    """Lava layout -> [B, *shape]."""
    if len(shape) == 1:
        return a.reshape(b, shape[0])
    c, h, w = shape
    return a.reshape(w, h, b, c).transpose(2, 3, 1, 0)


def lava_shape(shape: tuple[int, ...], b: int) -> tuple[int, int, int]:
    if len(shape) == 1:
        return (b, 1, shape[0])
    c, h, w = shape
    return (w, h, b * c)


def lava_conv_weight(op: Op, weight: np.ndarray, b: int) -> tuple[np.ndarray, int]:
    """Lava Conv weight and groups for ``op`` with ``weight`` (ONNX layout), B samples."""
    if op.kind == "dense":
        w = weight
        if w.shape[0] == w.shape[1] and np.count_nonzero(w - np.diag(np.diag(w))) == 0:
            return np.diag(w).reshape(-1, 1, 1, 1), w.shape[0]  # diagonal: depthwise
        return w.reshape(w.shape[0], 1, 1, w.shape[1]), 1
    w = weight[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)
    return np.tile(w, (b, 1, 1, 1)), op.groups * b


def delay_dense(op: Op, weight: np.ndarray, b: int, weight_exp: int | None):
    """Lava ``DelayDense`` for B samples side by side: block-diagonal weights and delays on the
    flat (B * F,) view. Fixed point (``weight_exp`` given): ``weight`` holds the integer weights
    with the exponent baked in; DelayDense takes the 8-bit mantissas and shifts by the exponent."""
    from lava.proc.dense.process import DelayDense

    eye = np.eye(b, dtype=np.int64)
    delays = np.kron(eye, np.asarray(op.delays, np.int64))
    if weight_exp is None:
        return DelayDense(weights=np.kron(eye, np.asarray(weight, np.float64)), delays=delays,
                          max_delay=max(op.max_delay, 1), num_message_bits=0)
    mant = np.asarray(weight, np.int64) >> weight_exp
    return DelayDense(weights=np.kron(eye, mant).astype(np.int32), delays=delays,
                      max_delay=max(op.max_delay, 1), num_message_bits=0, weight_exp=weight_exp,
                      num_weight_bits=8)


@dataclass
class Emitted:
    """Handles to the processes of one emitted graph."""

    batch: int
    interval: int
    neurons: dict[str, object] = field(default_factory=dict)
    sink: object = None
    synapses: list = field(default_factory=list)


def population_bias(p: Population, fixed: FixedLayer | None, dynamic: np.ndarray | None, b: int,
                    steps: int = 1, timesteps: int = 0):
    """Per-bank, per-sample bias [K, B, *shape] (float), or (mantissa, exponent) in fixed point.

    ``dynamic`` is the input-driven current [K, B, *shape] of K banks (K = 1 without it): one
    per batch, or ``steps`` per batch, one per step (see :func:`emit`). A population with a step
    bias gets T = ``timesteps`` banks per batch, its step bias added to each step's.
    """
    total = np.broadcast_to(p.bias, (1, b) + p.shape)
    if dynamic is not None:
        total = total + dynamic
    rows = p.step_rows(timesteps)
    if rows is not None:
        grouped = total.reshape((-1, steps, b) + p.shape)
        grouped = np.broadcast_to(grouped, (len(grouped), timesteps, b) + p.shape)
        total = (grouped + rows[None, :, None]).reshape((-1, b) + p.shape)
    if fixed is None:
        return total, np.zeros((1, b) + p.shape, np.int32)
    mant, exp = fixed.quantize_bias(total)
    return mant.astype(np.int32), exp.astype(np.int32)


def _banked_lava(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """[K, B, *shape] -> [K, *lava layout]."""
    return np.stack([to_lava(np.asarray(k), shape) for k in a])


def emit(lg: LayerGraph, batch: int, timesteps: int, fixed: dict[str, FixedLayer] | None = None,
         dynamic_bias: dict[str, np.ndarray] | None = None, pack_counts: bool | set[str] = False,
         bank_steps: int = 1, readout_steps: tuple[int, int] | None = None) -> Emitted:
    """Build the Lava processes for ``batch`` samples (nothing runs yet).

    ``dynamic_bias`` maps populations to input-driven currents [K * S, B, *shape]: K batches run
    one after the other, batch k in the k-th reset window (its currents preloaded as bias banks),
    with S = ``bank_steps`` banks per batch, one per step, for per-step input (1: a constant
    input). ``pack_counts`` makes the neurons (all, or those named) keep packed per-neuron
    counts for a fast read-back.
    ``readout_steps`` (first step, count) is what the read-out sums (all T steps by default).
    """
    from lava.proc.conv.process import Conv

    from .procs.if_neuron import IF
    from .procs.window_sum import WindowSum

    depth = lg.depth
    interval = timesteps + depth + lg.delay_steps
    em = Emitted(batch, interval)
    dyn = dynamic_bias or {}
    for name, p in lg.populations.items():
        fx = fixed.get(name) if fixed else None
        shape = lava_shape(p.shape, batch)
        offset = (p.depth + 1) % interval
        if p.is_output:
            first, count = readout_steps or (0, timesteps)
            dst = WindowSum(shape=shape, interval=interval, offset=offset, window=first + count,
                            first=first, name="readout")
            em.sink = dst
        else:
            own_steps = bank_steps if name in dyn else 1
            bias, bias_exp = population_bias(p, fx, dyn.get(name), batch, own_steps, timesteps)
            if p.step_bias is not None:
                own_steps = timesteps
            tile = lambda a: to_lava(np.broadcast_to(a, (batch,) + p.shape), p.shape)  # noqa: E731
            if fx is None:
                vth, v0, dv = tile(p.threshold), tile(p.v_init), p.leak
            else:
                vth, v0, dv = tile(fx.vth), tile(fx.v_init), fx.dv
            dst = IF(shape=shape, vth=vth, v_init=v0, bias=_banked_lava(bias, p.shape),
                     bias_exp=_banked_lava(bias_exp, p.shape), dv=dv,
                     reset_zero=p.reset == "zero", reset_interval=interval,
                     reset_offset=offset, count_window=timesteps, batch=batch,
                     batch_axis=0 if len(p.shape) == 1 else 2,
                     pack_counts=pack_counts if isinstance(pack_counts, bool) else name in pack_counts,
                     bank_steps=own_steps, name=name)
            em.neurons[name] = dst
        for k, term in enumerate(p.terms):
            port = em.neurons[term.source].s_out
            procs = [o for o in term.ops if o.is_process]
            first = True
            for op in term.ops:
                if op.kind == "flatten":
                    c, h, w = op.in_shape
                    port = port.transpose([2, 1, 0]).reshape((batch, 1, c * h * w))
                    continue
                weight = op.weight
                if fx is not None and op is procs[-1]:
                    weight = fx.weights[k]
                elif fx is not None:
                    weight = np.rint(weight).astype(np.int64)
                if op.kind == "delay":
                    syn = delay_dense(op, weight, batch, fx.weight_exp if fx is not None else None)
                    port.reshape((batch * op.in_shape[0],)).connect(syn.s_in)
                    em.synapses.append(syn)
                    port = syn.a_out.reshape(lava_shape(op.out_shape, batch))
                    first = False
                    continue
                w, groups = lava_conv_weight(op, weight, batch)
                if op.kind == "dense":
                    conv = Conv(weight=w, input_shape=lava_shape(op.in_shape, batch), groups=groups,
                                num_message_bits=0 if first else 24)
                else:
                    conv = Conv(weight=w, input_shape=lava_shape(op.in_shape, batch), groups=groups,
                                padding=(op.pad[1], op.pad[0]), stride=(op.stride[1], op.stride[0]),
                                dilation=(op.dilation[1], op.dilation[0]),
                                num_message_bits=0 if first else 24)
                port.connect(conv.s_in)
                em.synapses.append(conv)
                port = conv.a_out
                first = False
            port.connect(dst.a_in)
    return em


def run_config(fixed: bool):
    """Loihi2SimCfg selecting our einsum models for every Conv."""
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.conv.process import Conv

    from .procs.fastconv import PyConvEinsumFixed, PyConvEinsumFloat

    model = PyConvEinsumFixed if fixed else PyConvEinsumFloat
    return Loihi2SimCfg(select_tag="fixed_pt" if fixed else "floating_pt",
                        exception_proc_model_map={Conv: model})


__all__ = ["OUTPUT", "Emitted", "emit", "from_lava", "lava_shape", "run_config", "to_lava"]
