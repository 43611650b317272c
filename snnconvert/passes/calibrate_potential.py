"""Layer step: potential calibration (Li et al. 2021's advanced calibration), per neuron.

Each neuron starts at v(0) + T·(mean ANN activation − mean SNN rate) over the calibration
samples: one extra spike costs θ of potential, so a rate short by Δ needs T·Δ more. This fixes
what a per-channel bias cannot: position-dependent drift (borders, the background of one
image region). A neuron keeps its new v(0) only where it lowers that neuron's error.
"""
from __future__ import annotations

import torch

from .layer_state import LayerState


class CalibratePotential:
    """Per-neuron initial potential matching the ANN activation's mean over the samples."""

    name = "calibrate-potential"

    def __init__(self, iterations: int = 2) -> None:
        self.iterations = iterations

    def __call__(self, layer: LayerState) -> None:
        shape = layer.sample_shape
        theta = torch.broadcast_to(layer.theta, shape)
        goal = layer.target_mean().reshape(-1)
        best = torch.broadcast_to(layer.v0, shape).clone()
        err, rate = layer.stats(v0=[best], by="neuron")
        before, best_err = err[0], err[0]
        v = best
        for _ in range(self.iterations):
            v = torch.clamp(v + layer.steps * (goal - rate[0]).reshape(shape), -theta, theta)
            err, rate = layer.stats(v0=[v], by="neuron")
            better = err[0] < best_err
            best = torch.where(better.reshape(shape), v, best)
            best_err = torch.minimum(err[0], best_err)
        layer.v0 = best
        layer.update(self.name, before, best_err)
