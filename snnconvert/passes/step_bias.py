"""Layer step: a bias for every time step, per channel (FTBC, Wu et al. 2024), fitted forward.

A constant bias and per-neuron initial potentials fix a layer's mean rate over T steps, not when
its spikes come: with few steps, a channel that fires late (its input still building up) or in
a burst hands the next layer a current that is uneven in time, and the next layer's rounding
error grows with that unevenness. Here each channel gets a current b[t] for every step t,
chosen step by step with b[1..t-1] fixed: the membranes of all calibration samples are
advanced to step t, and b[t] is set so that the channel's spikes up to t add up to t times the
channel mean of the ANN activation (clipped at θ) — exactly, to one spike, by placing the
firing cut among the sorted membrane values. Label-free and forward-only; Wu et al. average a
per-step correction over a few batches instead.

The mean of b over the steps goes into the layer's constant bias (folded into the Conv/Gemm
bias); the rest, summing to zero, is the neuron's step bias in the IR (``ir`` module doc), so
the rate limit is unchanged. A channel keeps its step bias only where it lowers that channel's
error at T; layers whose bias cannot fold are left alone (as in bias correction).
"""
from __future__ import annotations

import numpy as np
import torch

from .layer_state import LayerState


class FitStepBias:
    """Per-channel bias for each of the T steps, matching the channel's running spike count
    to the ANN activation's channel mean, kept per channel where it lowers the layer error."""

    name = "step-bias"

    def __call__(self, layer: LayerState) -> None:
        if not layer.bias_foldable or layer.steps < 2:
            return
        view = layer.channel_view()
        fitted = self.fit(layer)
        mean = fitted.mean(0)
        old_bias, old_step = layer.bias, layer.step_bias
        before = layer.stats()[0][0]
        base = torch.zeros_like(fitted) if old_step is None else old_step
        layer.bias, layer.step_bias = old_bias + mean, base + fitted - mean
        after = layer.stats()[0][0]
        better = after < before
        keep = better.reshape(view)
        layer.bias = torch.where(keep, layer.bias, old_bias)
        step = torch.where(keep.unsqueeze(0), layer.step_bias, base)
        layer.step_bias = step if bool(torch.any(step != 0)) else None
        layer.update(self.name, before, torch.where(better, after, before))

    @staticmethod
    def fit(layer: LayerState) -> torch.Tensor:
        """The current per step and channel, [T, *channel view], added to the layer's own
        (bias and step bias), that brings every channel's running spike count to t times the
        channel mean of min(ANN activation, θ) at every step t (within [-θ, θ] per step)."""
        shape, view = layer.sample_shape, layer.channel_view()
        channels = view[0]
        theta = layer.per_channel(layer.theta)
        per_channel = lambda t: t.transpose(0, 1).reshape(channels, -1)  # noqa: E731
        goal = torch.zeros(channels, dtype=torch.float64)
        for target in layer.target:
            goal += per_channel(torch.minimum(target, theta)).sum(1, dtype=torch.float64)
        members = layer.samples * int(np.prod(shape[1:]))
        wanted = goal / members / theta.reshape(channels).double()  # spikes per neuron per step
        v = [torch.zeros((c.shape[0 if layer.constant(c) else 1], *shape)) + layer.v0 for c in layer.current]
        spikes = torch.zeros(channels, dtype=torch.float64)
        th = theta.reshape(channels)
        out = torch.zeros((layer.steps, *view))
        for t in range(layer.steps):
            u = []
            for c, current in enumerate(layer.current):
                x = current if layer.constant(current) else current[t]
                if layer.step_bias is not None:
                    x = x + layer.step_bias[t]
                u.append((v[c] * (1.0 - layer.leak) if layer.leak else v[c]) + x + layer.bias)
            ranked = torch.sort(torch.cat([per_channel(a) for a in u], 1), 1, descending=True).values
            size = ranked.shape[1]
            need = torch.clamp(torch.round((t + 1) * wanted * members - spikes), 0, size).long()
            above = ranked.gather(1, torch.clamp(need - 1, 0, size - 1)[:, None])[:, 0]
            below = ranked.gather(1, torch.clamp(need, 0, size - 1)[:, None])[:, 0]
            cut = torch.where(need <= 0, ranked[:, 0] + 1e-3 * th,
                              torch.where(need >= size, ranked[:, -1], (above + below) / 2))
            b = torch.clamp(th - cut, -th, th)
            out[t] = b.reshape(view)
            for c, a in enumerate(u):
                a = a + b.reshape(view)
                s = (a >= theta).to(a.dtype)
                spikes += per_channel(s).sum(1, dtype=torch.float64)
                v[c] = a - s * theta if layer.reset == "subtract" else a * (1 - s)
        return out
