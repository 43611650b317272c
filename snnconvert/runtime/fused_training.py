"""The IF/LIF recurrence with its surrogate gradient as one autograd op, fused on the CPU (numba).

Backpropagating through T steps of :func:`~snnconvert.runtime.neurons.if_neuron` records about
ten torch ops per step, each allocating a tensor of the layer's size and passing over memory
forward and again backward: on ResNet-20's first stage at T=16 that cost three times the
convolution before it. Here the forward runs all steps for a block of 256 neurons at a time
(as :mod:`.fused` does for inference) and keeps only each step's potential before the spike;
the backward walks the steps in reverse in one pass over the same blocks. The spikes are
:func:`~snnconvert.runtime.neurons.if_neuron`'s bit for bit (the same float32 arithmetic in
the same order); the gradients equal its autograd's to float32 rounding (sums in another order).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .fused import BLOCK, numba
from .neurons import SURROGATES

if numba is not None:
    from numba import uint64 as _u

    @numba.njit(inline="always", nogil=True, error_model="numpy")
    def _surrogate(z, kind, half_alpha, spread, alpha, width, one):  # pragma: no cover
        """d spike / d z at z = (v - θ) / θ: :class:`~snnconvert.runtime.neurons._Spike`'s
        backward for ``kind`` (0 atan, 1 rect, 2 sigmoid), in float32."""
        if kind == 0:
            w = spread * z
            return half_alpha / (one + w * w)
        if kind == 1:
            return alpha if abs(z) < width else one - one
        sg = one / (one + np.exp(-(alpha * z)))
        return alpha * sg * (one - sg)

    @numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    def _forward(current, constant, v, theta, out, before, decay, leaky, subtract,
                 batch):  # pragma: no cover
        """Flat arrays: current [steps or 1, n], v [n] (updated in place), theta [n // batch]
        (one sample's), out and before [steps, n]: the spikes (0 or θ) and each step's potential
        before its spike."""
        steps, n = out.shape
        per_sample = n // batch
        zero = np.float32(0.0)
        for b in range(batch):
            base = b * per_sample
            for i0 in range(0, per_sample, BLOCK):
                i1 = min(i0 + BLOCK, per_sample)
                for t in range(steps):
                    row = 0 if constant else t
                    for i in range(i0, i1):
                        k = _u(base + i)
                        th = theta[_u(i)]
                        u = v[k] * decay + current[_u(row), k] if leaky else v[k] + current[_u(row), k]
                        before[_u(t), k] = u
                        fired = (u - th) / th >= zero
                        s = th if fired else zero
                        out[_u(t), k] = s
                        if subtract:
                            v[k] = u - s
                        else:
                            v[k] = zero if fired else u

    @numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    def _backward(grad_out, grad_v, before, theta, grad_x, grad_theta, decay, leaky, subtract,
                  constant, kind, half_alpha, spread, alpha, width, batch):  # pragma: no cover
        """Reverse of :func:`_forward`. grad_out [steps, n]; grad_v [n]: the gradient of the
        final potential in, of the initial one out; grad_x [steps or 1, n] (written);
        grad_theta [n // batch] float64 (accumulated over samples and steps)."""
        steps, n = before.shape
        per_sample = n // batch
        zero, one = np.float32(0.0), np.float32(1.0)
        for b in range(batch):
            base = b * per_sample
            for i0 in range(0, per_sample, BLOCK):
                i1 = min(i0 + BLOCK, per_sample)
                if constant:
                    for i in range(i0, i1):
                        grad_x[0, _u(base + i)] = zero
                for t in range(steps - 1, -1, -1):
                    for i in range(i0, i1):
                        k = _u(base + i)
                        th = theta[_u(i)]
                        u = before[_u(t), k]
                        z = (u - th) / th
                        s = one if z >= zero else zero
                        gv = grad_v[k]
                        g = grad_out[_u(t), k]
                        if subtract:
                            ds = g * th - gv * th
                            du = gv
                            dth = g * s - gv * s
                        else:
                            ds = g * th - gv * u
                            du = gv * (one - s)
                            dth = g * s
                        dz = ds * _surrogate(z, kind, half_alpha, spread, alpha, width, one)
                        du = du + dz / th
                        dth = dth - dz * u / (th * th)
                        grad_theta[_u(i)] += dth
                        if constant:
                            grad_x[0, k] += du
                        else:
                            grad_x[_u(t), k] = du
                        grad_v[k] = du * decay if leaky else du


def supports(current: torch.Tensor, v: torch.Tensor, threshold: torch.Tensor, leak) -> bool:
    """Whether :func:`if_neuron_trained` can run these: float32 CPU tensors, one sample's
    thresholds for every sample, a fixed (untrained) leak, numba installed."""
    if numba is None or torch.is_tensor(leak):
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (current, v, threshold)):
        return False
    th = threshold
    if th.dim() > v.dim() or (th.dim() == v.dim() and th.shape[0] != 1):
        return False
    one_sample = v.shape[1:] if th.dim() < v.dim() else (1, *v.shape[1:])
    try:
        return torch.broadcast_shapes(th.shape, one_sample) == one_sample
    except RuntimeError:
        return False


PART_ELEMENTS = 1 << 18
"""Neuron-steps below which a thread is not worth starting: the op splits its samples over up to
``torch.get_num_threads()`` threads (the kernels release the GIL), each with at least this many."""


def _parts(batch: int, per_sample: int) -> list[tuple[int, int]]:
    """Sample ranges, one per thread: as many as torch's thread count and the work allow."""
    k = max(1, min(torch.get_num_threads(), batch, batch * per_sample // PART_ELEMENTS))
    bounds = [batch * i // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _over_parts(parts: list[tuple[int, int]], per_sample: int, kernel) -> None:
    """``kernel(part index, its neurons' columns, its samples)`` for each of ``parts``, in threads
    when there are several."""
    calls = [lambda p=p, b0=b0, b1=b1: kernel(p, slice(b0 * per_sample, b1 * per_sample), b1 - b0)
             for p, (b0, b1) in enumerate(parts)]
    if len(calls) == 1:
        calls[0]()
        return
    with ThreadPoolExecutor(len(calls)) as pool:
        for done in [pool.submit(call) for call in calls]:
            done.result()


class _IFSteps(torch.autograd.Function):
    """(current, v, θ) -> (spikes × θ [T, B, ...], final potential); see the module doc."""

    @staticmethod
    def forward(ctx, current, v, threshold, steps, decay, subtract, kind, alpha):
        constant = current.dim() == v.dim()
        shape = v.shape
        th = threshold.detach()
        per_sample = th[0] if th.dim() == v.dim() else th
        theta = torch.broadcast_to(per_sample, shape[1:]).contiguous().numpy().reshape(-1)
        cur = current.detach().contiguous().numpy().reshape(1 if constant else steps, -1)
        v_np = v.detach().clone(memory_format=torch.contiguous_format).numpy().reshape(-1)
        out = np.empty((steps, v_np.size), np.float32)
        before = np.empty_like(out)
        leaky = decay != 1.0
        per = theta.size
        _over_parts(_parts(shape[0], steps * per), per, lambda _, cols, count: _forward(
            cur[:, cols], constant, v_np[cols], theta, out[:, cols], before[:, cols], np.float32(decay),
            leaky, subtract, count))
        ctx.saved = (before, theta, constant, decay, leaky, subtract, kind, alpha, shape, threshold.shape,
                     current.shape)
        return torch.from_numpy(out).view(steps, *shape), torch.from_numpy(v_np).view(shape)

    @staticmethod
    def backward(ctx, grad_out, grad_v):
        before, theta, constant, decay, leaky, subtract, kind, alpha, shape, th_shape, cur_shape = ctx.saved
        steps, n = before.shape
        g_out = (np.zeros((steps, n), np.float32) if grad_out is None
                 else grad_out.detach().to(torch.float32).contiguous().numpy().reshape(steps, n))
        g_v = (np.zeros(n, np.float32) if grad_v is None
               else grad_v.detach().to(torch.float32).clone(memory_format=torch.contiguous_format).numpy().reshape(-1))
        g_x = np.empty((1 if constant else steps, n), np.float32)
        per = theta.size
        parts = _parts(shape[0], steps * per)
        g_th = np.zeros((len(parts), per), np.float64)
        f = np.float32
        _over_parts(parts, per, lambda p, cols, count: _backward(
            g_out[:, cols], g_v[cols], before[:, cols], theta, g_x[:, cols], g_th[p], f(decay), leaky, subtract,
            constant, kind, f(alpha / 2), f(math.pi / 2 * alpha), f(alpha), f(0.5 / alpha), count))
        grad_theta = torch.from_numpy(g_th.sum(0).astype(np.float32)).view(shape[1:])
        if len(th_shape) == len(shape):
            grad_theta = grad_theta.unsqueeze(0)
        grad_theta = grad_theta.sum_to_size(th_shape) if len(th_shape) else grad_theta.sum()
        return (torch.from_numpy(g_x).view(cur_shape), torch.from_numpy(g_v).view(shape), grad_theta,
                None, None, None, None, None)


def if_neuron_trained(current: torch.Tensor, steps: int, v: torch.Tensor, threshold: torch.Tensor,
                      reset: str = "subtract", leak: float = 0.0, surrogate: str = "atan",
                      alpha: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~snnconvert.runtime.neurons.if_neuron`'s contract (where :func:`supports`), as one
    fused autograd op: (spikes × θ [T, B, ...], final potential)."""
    return _IFSteps.apply(current, v, threshold, steps, 1.0 - float(leak), reset == "subtract",
                          SURROGATES.index(surrogate), float(alpha))
