"""Spiking dynamics: the IF/LIF neuron with surrogate gradients.

It runs over a whole chunk of time steps at once (input shaped [T, B, ...]) so that the
synaptic ops around it can process all T steps in one batched call. (The spiking max-pool is
the registry entry :class:`snnconvert.ops.spiking.SpikingMaxPool`.)
"""
from __future__ import annotations

import math

import torch

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
              reset: str = "subtract", leak: float | torch.Tensor = 0.0, surrogate: str = "atan",
              alpha: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``steps`` steps. ``current`` is [T, B, ...] or time-invariant [B, ...].

    Returns (spikes scaled by the threshold, [T, B, ...]; final membrane potential).
    """
    constant = current.dim() == v.dim()
    out = []
    decay = 1.0 - leak
    leaky = torch.is_tensor(leak) or leak != 0  # a tensor leak is trained: keep it in the graph
    for t in range(steps):
        x = current if constant else current[t]
        v = v * decay + x if leaky else v + x
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
