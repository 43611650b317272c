"""The delay synapse (domain ``snnconvert``): dense weights with one integer delay per connection.

``DelayDense(x, weights [out, in], delays [out, in], bias [out])`` with attribute ``max_delay``
D (semantics in :mod:`snnconvert.ir`). Over time it is a causal temporal convolution whose
kernel [out, in, D + 1] has, per synapse, one non-zero tap: tap n carries delay D - n. The
runtime keeps the last D input steps as state and runs one ``conv1d`` per time chunk (no loop
over synapses or steps). The same convolution takes the DCLS training kernel, where each
synapse's tap is a Gaussian around a continuous position (Hammouamri et al., ICLR 2024).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import ir
from .base import OpEntry, Verdict, refuse
from .registry import register


def onehot_kernel(weights: torch.Tensor, delays: torch.Tensor, max_delay: int) -> torch.Tensor:
    """The temporal kernel [out, in, D + 1] of integer ``delays``: weight w at tap D - d."""
    taps = F.one_hot((max_delay - delays.to(weights.device)).long(), max_delay + 1).to(weights.dtype)
    return taps * weights.unsqueeze(-1)


def gaussian_kernel(weights: torch.Tensor, positions: torch.Tensor, sigma: float | torch.Tensor,
                    max_delay: int) -> torch.Tensor:
    """DCLS's Gaussian-interpolated kernel [out, in, D + 1]: synapse (j, i) spreads w_ji over
    the taps around its continuous delay p_ji (in steps), normalised to sum to w_ji;
    differentiable in weights and positions. As σ shrinks below ~0.5 it tends to the one-hot
    kernel of round(p)."""
    n = torch.arange(max_delay + 1, dtype=weights.dtype, device=weights.device)
    centre = max_delay - positions.unsqueeze(-1)
    g = torch.exp(-0.5 * ((n - centre) / sigma) ** 2)
    return weights.unsqueeze(-1) * g / (g.sum(-1, keepdim=True) + 1e-7)


def rounded_kernel(weights: torch.Tensor, positions: torch.Tensor, sigma: float | torch.Tensor,
                   max_delay: int) -> torch.Tensor:
    """The one-hot kernel of the rounded positions in the forward pass, with the Gaussian
    kernel's gradient (a straight-through estimate): training then sees the integer network
    it will deploy, while the positions still learn."""
    soft = gaussian_kernel(weights, positions, sigma, max_delay)
    hard = onehot_kernel(weights, positions.detach().clamp(0, max_delay).round().long(), max_delay)
    return hard + (soft - soft.detach())


def delayed_dense(x: torch.Tensor, history: torch.Tensor | None, kernel: torch.Tensor,
                  bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a chunk ``x`` [T, B, in] through the temporal ``kernel`` [out, in, D + 1]; ``history``
    holds the D input steps before the chunk ([D, B, in], zeros at the start of a sample).
    Returns (y [T, B, out], the history after the chunk)."""
    d = kernel.shape[-1] - 1
    if history is None:
        history = x.new_zeros((d, *x.shape[1:]))
    full = torch.cat([history, x]) if d else x
    y = F.conv1d(full.permute(1, 2, 0), kernel.to(x.dtype), None if bias is None else bias.to(x.dtype))
    return y.permute(2, 0, 1), full[full.shape[0] - d:]


def max_delay(attrs: dict) -> int:
    return int(attrs.get("max_delay", 0))


@register
class DelayDense(OpEntry):
    op_type = ir.DELAY_DENSE
    domain = ir.DOMAIN
    family = "delay"
    weighted = True
    stateful = True

    def normalize(self, attrs: dict, nd: int) -> dict:
        out = dict(attrs)
        out.setdefault("max_delay", 0)
        return out

    def verdict(self, node, attrs, graph):
        if len(node.input) != 4 or not all(graph.is_const(n) for n in node.input[1:]):
            return refuse("DelayDense needs constant weights, delays and bias.",
                          "build it with snnconvert.ir.make_delay_dense.")
        w, d = graph.const_value(node.input[1]), graph.const_value(node.input[2])
        top = max_delay(attrs)
        if w is not None and d is not None:
            if w.ndim != 2 or d.shape != w.shape:
                return refuse(f"DelayDense weights {list(w.shape)} and delays {list(d.shape)} must both "
                              "be [out, in].", "give one delay per weight.")
            if d.dtype.kind not in "iu" or d.size and (d.min() < 0 or d.max() > top):
                return refuse(f"DelayDense delays must be integers in [0, max_delay={top}].",
                              "round the delays, or raise max_delay.")
            return Verdict("synapse", f"dense {w.shape[1]}->{w.shape[0]} with per-synapse delays "
                                      f"0..{top} steps: weights feeding the next neurons")
        return Verdict("synapse", f"dense with per-synapse delays 0..{top} steps")

    def kernel(self, attrs, x, w, d=None, b=None):
        """The rate limit (the ONNX function): x @ w^T + b, delays ignored."""
        y = x @ w.t()
        return y if b is None else y + b

    def step(self, attrs, x, state, w, d, b, positions=None, sigma=None, rounded=False):
        """A chunk ``x`` [T, B, in]: the integer delays ``d``, or (training) the Gaussian kernel
        of continuous ``positions`` at width ``sigma`` (``rounded``: its straight-through
        rounded form); ``state`` is the input history."""
        top = max_delay(attrs)
        if positions is None:
            k = onehot_kernel(w, d, top)
        else:
            k = (rounded_kernel if rounded else gaussian_kernel)(w, positions, sigma, top)
        return delayed_dense(x, state, k, b)

    def events(self, attrs, inputs, consts):
        x = inputs[0]
        return x @ torch.as_tensor(np.asarray(consts[1]) != 0, dtype=x.dtype).t()
