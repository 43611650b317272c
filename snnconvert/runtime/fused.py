"""A fused CPU kernel for the IF/LIF recurrence during inference (numba).

The torch loop makes five passes over memory per step (add, compare, copy, scale, subtract);
this kernel runs all steps for a block of 256 neurons at a time, so the block's state stays in
L1 and each input and spike crosses memory once. It keeps float32 arithmetic in
the same order as :func:`~snnconvert.runtime.neurons.if_neuron_fast`, so spikes are identical.
Without numba the runtime falls back to the torch loop.
"""
from __future__ import annotations

import numpy as np
import torch

try:
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None


BLOCK = 256


if numba is not None:
    from numba import uint64 as _u

    @numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    def _if_steps(current, constant, v, theta, out, decay, leaky, subtract,
                  counts, per_step, stats, batch):  # pragma: no cover
        """Flat arrays: current [steps or 1, n], v [n], theta [n // batch] (one sample's), out
        [steps, n]. Branch-free inner loops over a block of one sample's neurons vectorize."""
        steps, n = out.shape
        per_sample = n // batch
        zero = np.float32(0.0)
        for b in range(batch):
            base = b * per_sample
            for i0 in range(0, per_sample, BLOCK):
                i1 = min(i0 + BLOCK, per_sample)
                for t in range(steps):
                    row = 0 if constant else t
                    fired_now = 0
                    for i in range(i0, i1):
                        k = _u(base + i)
                        vi = v[k] * decay if leaky else v[k]
                        vi = vi + current[_u(row), k]
                        th = theta[_u(i)]
                        fired = vi >= th
                        spike = th if fired else zero
                        out[_u(t), k] = spike
                        if subtract:
                            v[k] = vi - spike
                        else:
                            v[k] = zero if fired else vi
                        fired_now += fired
                        if stats:
                            counts[k] += fired
                    if stats:
                        per_step[t] += fired_now


def available() -> bool:
    return numba is not None


def if_neuron_fused(current: torch.Tensor, steps: int, v: torch.Tensor, threshold: torch.Tensor,
                    reset: str = "subtract", leak: float = 0.0, stats: bool = False,
                    inplace: bool = False, counts: torch.Tensor | None = None) -> tuple:
    """Same contract as ``if_neuron_fast`` for float32 CPU tensors.

    With ``stats`` it also returns the spike count of every neuron [*v.shape] and the number
    of spikes at each step [steps], counted in the same pass (a separate torch reduction over
    the spike tensor cost more than the recurrence itself). ``inplace`` updates ``v`` itself
    (contiguous float32) and ``counts`` (float32 or int32, v's shape) accumulates the spike
    counts in place: a long simulation then allocates no new state at every chunk, whose small
    long-lived blocks would otherwise fragment the heap (see :mod:`.memory`).
    """
    constant = current.dim() == v.dim()
    shape = v.shape
    if inplace and v.is_contiguous() and v.dtype == torch.float32:
        v_np = v.detach().numpy().reshape(-1)
    else:
        v_np = v.detach().contiguous().clone().numpy().reshape(-1)
    th = threshold.detach()
    if th.dim() == v.dim() and th.shape[0] == 1:
        th = th[0]
    batch = shape[0] if th.dim() < v.dim() else 1  # one sample's thresholds serve every sample
    theta = torch.broadcast_to(th, shape[1:] if batch > 1 or th.dim() < v.dim() else shape)
    theta = theta.contiguous().numpy().reshape(-1)
    cur = current.detach().contiguous().numpy().reshape(1 if constant else steps, -1)
    out = np.empty((steps, v_np.size), np.float32)
    if counts is None:
        counts = torch.zeros(shape if stats else (0,), dtype=torch.int32)
    per_step = np.zeros(steps if stats else 0, np.int64)
    _if_steps(cur, constant, v_np, theta, out, np.float32(1.0 - leak), bool(leak),
              reset == "subtract", counts.numpy().reshape(-1), per_step, stats, batch)
    result = (torch.from_numpy(out).view(steps, *shape), torch.from_numpy(v_np).view(shape))
    if stats:
        result += (counts, torch.from_numpy(per_step))
    return result
