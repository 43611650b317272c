"""Spiking dynamics: the IF/LIF neuron with surrogate gradients, and the spiking max-pool.

Both run over a whole chunk of time steps at once (input shaped [T, B, ...]) so that the
synaptic ops around them can process all T steps in one batched call.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SURROGATES = ("atan", "rect", "sigmoid")


class _Spike(torch.autograd.Function):
    """Heaviside forward (x >= 0); surrogate derivative backward. x is (v - θ) / θ."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: int, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.kind, ctx.alpha = kind, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        if ctx.kind == 0:
            d = (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)
        elif ctx.kind == 1:
            d = (x.abs() < 0.5 / a).to(x.dtype) * a
        else:
            sg = torch.sigmoid(a * x)
            d = a * sg * (1 - sg)
        return grad * d, None, None


def spike(x: torch.Tensor, surrogate: str = "atan", alpha: float = 2.0) -> torch.Tensor:
    return _Spike.apply(x, SURROGATES.index(surrogate), alpha)


def if_neuron(current: torch.Tensor, steps: int, v: torch.Tensor, threshold: torch.Tensor,
              reset: str = "subtract", leak: float = 0.0, surrogate: str = "atan",
              alpha: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``steps`` steps. ``current`` is [T, B, ...] or time-invariant [B, ...].

    Returns (spikes scaled by the threshold, [T, B, ...]; final membrane potential).
    """
    constant = current.dim() == v.dim()
    out = []
    decay = 1.0 - leak
    for t in range(steps):
        x = current if constant else current[t]
        v = v * decay + x if leak else v + x
        s = spike((v - threshold) / threshold, surrogate, alpha)
        v = v - threshold * s if reset == "subtract" else v * (1 - s)
        out.append(s * threshold)
    return torch.stack(out), v


@torch.no_grad()
def if_neuron_fast(current: torch.Tensor, steps: int, v: torch.Tensor, threshold: torch.Tensor,
                   reset: str = "subtract", leak: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-only :func:`if_neuron`: in-place updates, no autograd bookkeeping."""
    constant = current.dim() == v.dim()
    v = v.clone()
    out = torch.empty((steps, *v.shape), dtype=v.dtype, device=v.device)
    theta = threshold.expand_as(v) if threshold.dim() else threshold
    mask = torch.empty(v.shape, dtype=torch.bool, device=v.device)
    for t in range(steps):
        if leak:
            v.mul_(1.0 - leak)
        v.add_(current if constant else current[t])
        torch.ge(v, theta, out=mask)
        out[t].copy_(mask)
        out[t].mul_(theta)
        if reset == "subtract":
            v.sub_(out[t])
        else:
            v.masked_fill_(mask, 0.0)
    return out, v


def spiking_max_pool(x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, attrs: dict,
                     pool_fn) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Max-pool gated by accumulated input (Rueckauer et al. 2017), exact in the total.

    Each window emits, at every step, the increase of the largest running input sum among its
    units: while one unit leads this is that unit's input (the classic gate); when another
    overtakes, only the excess passes. The output sum over t steps is therefore exactly the
    max of the accumulated inputs, so output rates equal the max of the input rates for any
    T, instead of losing a spike at every change of leader as a plain gate does. Spike inputs
    of one channel share their threshold, so the output stays in {0, θ}.

    ``x`` is [T, B, C, H, W]; ``state`` the running sums and their pooled max (None at start).
    """
    if state is None:
        acc = torch.zeros_like(x[0])
        prev = pool_fn(acc, attrs)[0]
    else:
        acc, prev = state
    out = []
    for t in range(x.shape[0]):
        acc = acc + x[t]
        top = pool_fn(acc, attrs)[0]
        out.append(top - prev)
        prev = top
    return torch.stack(out), (acc, prev)


def max_pool_indices(acc: torch.Tensor, attrs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D max-pool of ``acc`` with ONNX pads (asymmetric allowed, padding never wins) and ceil_mode;
    returns (max values, flat indices into ``acc``'s spatial plane)."""
    k = list(attrs["kernel_shape"])
    nd = len(k)
    s = list(attrs.get("strides", [1] * nd))
    pads = list(attrs.get("pads", [0] * 2 * nd))
    ceil = bool(attrs.get("ceil_mode", 0))
    if pads[:nd] == pads[nd:] and all(p <= kk // 2 for p, kk in zip(pads[:nd], k)):
        return F.max_pool2d(acc, k, s, pads[:nd], ceil_mode=ceil, return_indices=True)
    top, left, bottom, right = pads
    padded = F.pad(acc, [left, right, top, bottom], value=-math.inf)
    values, idx = F.max_pool2d(padded, k, s, 0, ceil_mode=ceil, return_indices=True)
    width = padded.shape[-1]
    rows, cols = idx // width - top, idx % width - left
    return values, rows * acc.shape[-1] + cols
