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
        torch.mul(mask, theta, out=out[t])
        if reset == "subtract":
            v.sub_(out[t])
        else:
            v.masked_fill_(mask, 0.0)
    return out, v


def spiking_max_pool(x: torch.Tensor, acc: torch.Tensor | None, attrs: dict,
                     pool_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pool gated by accumulated input: each window passes the step's input of the unit
    whose running sum is largest (Rueckauer et al. 2017), so output rates approach the max
    of the input rates instead of over-counting as a per-step max would.

    ``x`` is [T, B, C, H, W]; ``acc`` the running sums [B, C, H, W] (None at the start).
    """
    out = []
    acc = torch.zeros_like(x[0]) if acc is None else acc
    for t in range(x.shape[0]):
        acc = acc + x[t]
        _, idx = pool_fn(acc, attrs)
        flat = x[t].flatten(2)
        out.append(flat.gather(2, idx.flatten(2)).view(idx.shape))
    return torch.stack(out), acc


def max_pool_indices(acc: torch.Tensor, attrs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D max-pool of ``acc`` returning flat indices (for gating)."""
    k = attrs["kernel_shape"]
    s = attrs.get("strides", [1] * len(k))
    pads = attrs.get("pads", [0] * 2 * len(k))
    nd = len(k)
    if pads[:nd] != pads[nd:] or any(p > kk // 2 for p, kk in zip(pads[:nd], k)):
        raise ValueError("spiking max-pool needs symmetric pads of at most half the kernel")
    return F.max_pool2d(acc, k, s, pads[:nd], ceil_mode=bool(attrs.get("ceil_mode", 0)),
                        return_indices=True)
