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

    @numba.njit(inline="always", nogil=True, error_model="numpy")
    def _neuron(v, current, theta, decay, leaky, subtract, zero):  # pragma: no cover
        """One IF/LIF step of one neuron: (new potential, spike value, fired). The one copy of
        the arithmetic both kernels inline, in the order ``if_neuron_fast`` uses."""
        vi = v * decay if leaky else v
        vi = vi + current
        fired = vi >= theta
        spike = theta if fired else zero
        if subtract:
            return vi - spike, spike, fired
        return (zero if fired else vi), spike, fired

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
                        v[k], spike, fired = _neuron(v[k], current[_u(row), k], theta[_u(i)],
                                                     decay, leaky, subtract, zero)
                        out[_u(t), k] = spike
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


if numba is not None:
    @numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    def _if_pool_steps(current, constant, v, theta, out, decay, leaky, subtract, counts, per_step,
                       stats, batch, channels, height, width, k, zero, plane):  # pragma: no cover
        """IF/LIF steps of one channel plane at a time, then its k x k, stride-k average pool.

        Flat arrays: current [steps or 1, n] (n = batch*channels*height*width), v [n], theta
        [n // batch] (one sample's), out [steps, batch*channels*(height//k)*(width//k)], plane
        scratch [height*width]. The neuron arithmetic is :func:`_neuron`; each window is
        summed in row-major order from zero and divided by k*k, as torch's pooling kernel does."""
        steps = out.shape[0]
        oh, ow = height // k, width // k
        hw = height * width
        per_sample = channels * hw
        div = zero + k * k
        for b in range(batch):
            for c in range(channels):
                base = b * per_sample + c * hw
                tbase = c * hw
                obase = (b * channels + c) * oh * ow
                for t in range(steps):
                    row = 0 if constant else t
                    fired_now = 0
                    for i in range(hw):
                        kk = _u(base + i)
                        v[kk], spike, fired = _neuron(v[kk], current[_u(row), kk],
                                                      theta[_u(tbase + i)], decay, leaky,
                                                      subtract, zero)
                        plane[i] = spike
                        fired_now += fired
                        if stats:
                            counts[kk] += fired
                    if stats:
                        per_step[t] += fired_now
                    if k == 2:  # the common case, written out so that it vectorizes
                        for y in range(oh):
                            r0 = 2 * y * width
                            r1 = r0 + width
                            o = obase + y * ow
                            for x in range(ow):
                                out[_u(t), _u(o + x)] = ((((zero + plane[_u(r0 + 2 * x)])
                                                           + plane[_u(r0 + 2 * x + 1)])
                                                          + plane[_u(r1 + 2 * x)])
                                                         + plane[_u(r1 + 2 * x + 1)]) / div
                        continue
                    for y in range(oh):
                        for x in range(ow):
                            s = zero
                            for dy in range(k):
                                r = (y * k + dy) * width + x * k
                                for dx in range(k):
                                    s += plane[_u(r + dx)]
                            out[_u(t), _u(obase + y * ow + x)] = s / div


def if_neuron_pool_fused(current: torch.Tensor, steps: int, v: torch.Tensor, threshold: torch.Tensor,
                         kernel: int, reset: str = "subtract", leak: float = 0.0,
                         counts: torch.Tensor | None = None) -> tuple | None:
    """IF/LIF neurons [B, C, H, W] followed by a k x k, stride-k, unpadded average pool, without
    the spike tensor in between: (pooled spikes [steps, B, C, H//k, W//k], v at the end, spike
    counts per neuron, spikes per step). The neuron state ``v`` is updated in place and ``counts``
    (v's shape) accumulates. Same numbers as :func:`if_neuron_fused` then the pool, bit for bit;
    float32 or float64. None where the thresholds differ between samples (not fused then)."""
    th = threshold.detach()
    if th.dim() == v.dim():
        if th.shape[0] != 1:
            return None
        th = th[0]
    dtype = v.dtype
    b, c, h, w = v.shape
    theta = torch.broadcast_to(th.to(dtype), v.shape[1:]).contiguous().numpy().reshape(-1)
    constant = current.dim() == v.dim()
    cur = current.detach().to(dtype).contiguous().numpy().reshape(1 if constant else steps, -1)
    if not (v.is_contiguous() and v.dtype in (torch.float32, torch.float64)):
        raise ValueError("v must be a contiguous float32 or float64 tensor")
    v_np = v.detach().numpy().reshape(-1)
    np_dtype = v_np.dtype.type
    out = np.empty((steps, b * c * (h // kernel) * (w // kernel)), v_np.dtype)
    if counts is None:
        counts = torch.zeros(v.shape, dtype=torch.float32)
    per_step = np.zeros(steps, np.int64)
    _if_pool_steps(cur, constant, v_np, theta, out, np_dtype(1.0 - leak), bool(leak),
                   reset == "subtract", counts.numpy().reshape(-1), per_step, True, b, c, h, w,
                   kernel, np_dtype(0.0), np.empty(h * w, v_np.dtype))
    return (torch.from_numpy(out).view(steps, b, c, h // kernel, w // kernel), v, counts,
            torch.from_numpy(per_step))
