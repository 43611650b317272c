"""Layer step: bias correction (Li et al. 2021's light calibration), per channel.

The SNN's mean output per channel drifts from the ANN's (rounding of point masses, upstream
error, spikes that a later inhibitory input would have cancelled); that drift reaches the next
layer coherently over every position. A constant current δ_c added at every step brings the
channel mean of the rate to the mean of the ANN activation clipped at θ. A channel keeps its δ
only where it lowers the channel's measured error. Layers whose input does not come from a
Conv/Gemm (directly or through a residual Add) are left alone: their correction would need an
Add node that hardware targets cannot hold; potential calibration still corrects their drift.
"""
from __future__ import annotations

import torch

from .layer_state import LayerState


class CorrectBias:
    """Per-channel constant current matching the channel mean of the ANN activation."""

    name = "correct-bias"

    def __init__(self, iterations: int = 3) -> None:
        self.iterations = iterations

    def __call__(self, layer: LayerState) -> None:
        if not layer.bias_foldable:
            return
        view = layer.channel_view()
        theta = layer.per_channel(layer.theta)
        goal = layer.target_mean(by="channel")
        best = layer.per_channel(layer.bias)
        err, rate = layer.stats(bias=[best])
        before, best_err = err[0], err[0]
        delta = best
        for _ in range(self.iterations):
            delta = torch.clamp(delta + (goal - rate[0]).reshape(view), -theta, theta)
            err, rate = layer.stats(bias=[delta])
            better = (err[0] < best_err)
            best = torch.where(better.reshape(view), delta, best)
            best_err = torch.minimum(err[0], best_err)
        layer.bias = best
        layer.update(self.name, before, best_err)
