"""Layer step: the clipping bound (threshold) chosen for T, per channel, by measurement.

A high bound wastes resolution (the rate is quantized in steps of θ/T), a low one clips large
activations. As in Li et al. 2021's threshold search, candidate bounds s·θ_c are tried and each
channel keeps the one with the smallest error; unlike it, the error is measured on the layer's
real input current, driven by the spikes of the already calibrated layers before it, so the
choice also sees point masses (a constant background gives the same pre-activation at most
positions, which the uniform-rounding argument behind θ/2 does not cover) and upstream error.
"""
from __future__ import annotations

import numpy as np
import torch

from .layer_state import LayerState

COARSE = tuple(float(s) for s in np.round(np.geomspace(0.15, 1.6, 10), 4))
FINE = 5


class SearchThresholds:
    """Per-channel threshold scale minimizing the layer's error at T: a coarse geometric grid of
    scales of the starting θ, then a finer grid around each channel's best.

    The initial potential keeps its ratio to θ while searching (θ/2 stays θ/2).
    """

    name = "search-thresholds"

    def __init__(self, scales: tuple[float, ...] = COARSE, fine: int = FINE) -> None:
        self.scales = tuple(sorted(set(scales) | {1.0}))
        self.fine = fine

    def __call__(self, layer: LayerState) -> None:
        base = layer.per_channel(layer.theta)
        ratio = torch.where(base > 0, layer.v0 / base, torch.zeros_like(layer.v0 / base))
        step = float(np.exp(np.mean(np.diff(np.log(self.scales)))))
        rounds = [list(self.scales)]
        if self.fine > 1:
            rounds.append([float(f) for f in np.geomspace(1 / step, step, self.fine + 2)[1:-1]])
        best, best_err, before = base, None, None
        for factors in rounds:
            center = best
            cands = [center * f for f in factors]
            err, _ = layer.stats(cands, [ratio * c for c in cands])
            if before is None:
                before = err[self.scales.index(1.0)]
            pick = err.argmin(0)
            chosen = torch.stack(cands)[pick, torch.arange(len(pick))].reshape(base.shape) \
                if base.dim() else cands[int(pick)]
            low = err.min(0).values
            better = low if best_err is None else torch.minimum(low, best_err)
            if best_err is not None:
                chosen = torch.where((low < best_err).reshape(base.shape), chosen, best)
            best, best_err = chosen, better
        layer.theta = best
        layer.v0 = ratio * best
        layer.update(self.name, before, best_err)
