"""Zero-delay reference simulators of a layer graph: float, and integer with Lava's fixed_pt semantics.

Both are layer-synchronous (every population sees the spikes of the same step), which is what
the pipelined Lava run reproduces. The integer one mirrors :class:`PyIFFixed`, the einsum
Conv fixed model (24-bit wrap of every synapse output) and :class:`WindowSum` bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .fixed import V_LIMIT, FixedLayer
from .inputs import input_currents, output_current_mean, per_step
from .lowering import LayerGraph, Op, apply_op


@dataclass
class RefResult:
    readout: np.ndarray               # [N, n_out]
    counts: dict[str, np.ndarray]     # population -> [N, *shape] spikes over T steps


def _wrap24(x: torch.Tensor) -> torch.Tensor:
    base = 1 << 24
    return torch.remainder(x + base // 2, base) - base // 2


def _apply_int(op: Op, weight: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    q = Op(**{**vars(op), "weight": np.asarray(weight, np.float64)})
    return _wrap24(torch.round(apply_op(q, x.double())).long())


def delayed(op: Op, weight: np.ndarray, x: torch.Tensor, lines: dict, key) -> torch.Tensor:
    """One step of a delay synapse: sum_i w[j, i] * x_{t - d[j, i]}[i], with the past inputs of
    ``key`` kept in ``lines`` (zeros before the first step); exact on integers."""
    past = [x] + lines.get(key, [])
    lines[key] = past[:op.max_delay]
    hist = torch.stack(past + [torch.zeros_like(x)] * (op.max_delay + 1 - len(past)))
    w = torch.as_tensor(np.asarray(weight), dtype=x.dtype)
    taps = torch.nn.functional.one_hot(torch.as_tensor(np.array(op.delays)), op.max_delay + 1).to(x.dtype)
    return torch.einsum("jik,kni->nj", taps * w.unsqueeze(-1), hist)


def simulate(lg: LayerGraph, x: np.ndarray, timesteps: int,
             fixed: dict[str, FixedLayer] | None = None,
             readout_steps: tuple[int, int] | None = None, count_readout: str | None = None
             ) -> RefResult:
    """Run ``x`` for ``timesteps`` steps; float, or integer when ``fixed`` is given.

    ``x``: [N, *input], a constant input, or [N, T, *input], one input per step (see
    :func:`.inputs.step_input`). ``readout_steps`` (first step, count): the steps whose output
    the read-out averages (all T by default); ``count_readout``: the population whose spike
    counts are the read-out instead (the ``spikes`` readout)."""
    n = x.shape[0]
    steps = per_step(lg, x)
    dyn = input_currents(lg, x)
    first, count = readout_steps or (0, timesteps)
    spikes: dict[str, torch.Tensor] = {}
    v: dict[str, torch.Tensor] = {}
    counts = {p.name: torch.zeros((n,) + p.shape, dtype=torch.int64) for p in lg.neurons}

    rows = {name: p.step_rows(timesteps) for name, p in lg.populations.items()}

    def bias_at(name: str, p, step: int) -> torch.Tensor:
        """The bias current of ``p`` at ``step`` (the constant bias plus the input current, plus
        the step bias)."""
        d = dyn.get(name)
        b = np.broadcast_to(p.bias, (n,) + p.shape) + (0.0 if d is None else d[:, step] if steps else d)
        if rows[name] is not None:
            b = b + rows[name][step]
        if fixed is None:
            return torch.as_tensor(np.array(b, np.float64))
        mant, exp = fixed[name].quantize_bias(b)
        return torch.as_tensor(mant << exp)

    bias = {name: bias_at(name, p, 0) for name, p in lg.populations.items() if not p.is_output}
    for name, p in lg.populations.items():
        if not p.is_output:
            start = p.v_init if fixed is None else fixed[name].v_init
            v[name] = torch.as_tensor(np.broadcast_to(start, (n,) + p.shape).copy())
    acc = None
    lines: dict = {}
    for step in range(timesteps):
        for name, p in lg.populations.items():
            cur = None
            for k, t in enumerate(p.terms):
                s = spikes[t.source]
                if fixed is None:
                    a = s.double()
                    for op in t.ops:
                        a = delayed(op, op.weight, a, lines, (name, k)) if op.kind == "delay" \
                            else apply_op(op, a)
                else:
                    procs = [o for o in t.ops if o.is_process]
                    a = s.long()
                    for op in t.ops:
                        if op.kind == "flatten":
                            a = a.reshape(n, -1)
                        elif op.kind == "delay":  # DelayDense sums integers without wrapping
                            w = fixed[name].weights[k] if op is procs[-1] else np.rint(op.weight)
                            a = delayed(op, w, a, lines, (name, k))
                        else:
                            w = fixed[name].weights[k] if op is procs[-1] else np.rint(op.weight)
                            a = _apply_int(op, w, a)
                cur = a if cur is None else cur + a
            if cur is None:
                cur = torch.zeros((n,) + p.shape, dtype=torch.float64 if fixed is None else torch.int64)
            if p.is_output:
                if first <= step < first + count:
                    acc = cur if acc is None else acc + cur
                continue
            if step and (steps and name in dyn or rows[name] is not None):
                bias[name] = bias_at(name, p, step)
            spikes[name], v[name] = _step(p, fixed.get(name) if fixed else None, v[name], cur, bias[name])
            counts[name] += spikes[name]
    gain = 1.0 if fixed is None else fixed[lg.output.name].gain
    readout = acc.numpy() / (count * gain) + lg.output.bias
    readout = readout + output_current_mean(dyn.get(lg.output.name), steps, first, count)
    if count_readout is not None:
        readout = counts[count_readout].numpy().astype(np.float64)
    return RefResult(readout, {k: c.numpy() for k, c in counts.items()})


def _step(p, fx: FixedLayer | None, v: torch.Tensor, cur: torch.Tensor, bias: torch.Tensor):
    zero = p.reset == "zero"
    if fx is None:
        thr = torch.as_tensor(p.threshold)
        if p.leak:
            v = v * (1.0 - p.leak)
        v = v + cur + bias
        s = v >= thr
        v = torch.where(s, torch.zeros_like(v), v) if zero else v - thr * s
        return s.long(), v
    if fx.dv:
        d = v * (4096 - fx.dv)
        v = torch.sign(d) * (torch.abs(d) >> 12)
    v = torch.clamp(v + (cur << 6) + bias, -V_LIMIT, V_LIMIT)
    thr = torch.as_tensor(fx.vth) << 6
    s = v >= thr
    v = torch.where(s, torch.zeros_like(v), v) if zero else v - thr * s
    return s.long(), v
