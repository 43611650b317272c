"""One neuron layer under layer-by-layer calibration: its input current as the fitted layers
before it actually spike, the ANN activation it should reproduce, and the parameters being fitted.

A layer step (threshold search, bias correction, potential calibration, ...) proposes candidate
parameters, measures the layer's error under each (all candidates in one pass over the current),
and keeps, per channel or per neuron, only what lowers the error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..runtime import fused
from ..runtime import neurons as nrn
from ..runtime.counting import layer_stats


@dataclass
class LayerState:
    """Parameters and data of one neuron layer during calibration at ``steps`` time steps.

    current  input current: [B, ...] when constant in time (analog input), else [T, B, ...]
    target   the ANN activation (ReLU output) for the same B samples, [B, ...]
    theta    threshold, per channel ([C, 1, 1] / [C]), float32
    v0       initial potential, per channel or per neuron ([C, 1, 1] or [C, H, W])
    bias     current added at every step, per channel (same shape as theta); only fitted where
             ``bias_foldable`` (it folds into a Conv/Gemm bias: no extra node in the IR)
    history  (step, layer error before, after) for every step run on the layer
    """

    name: str
    current: torch.Tensor
    target: torch.Tensor
    steps: int
    theta: torch.Tensor
    v0: torch.Tensor
    bias: torch.Tensor
    reset: str = "subtract"
    leak: float = 0.0
    bias_foldable: bool = True
    history: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.target.shape[1:])

    def channel_view(self) -> list[int]:
        """Shape of a per-channel tensor that broadcasts over one sample."""
        shape = self.sample_shape
        return [shape[0]] + [1] * (len(shape) - 1)

    def per_channel(self, value: torch.Tensor) -> torch.Tensor:
        return torch.broadcast_to(value, self.channel_view()).clone()

    def _groups(self, by: str) -> tuple[torch.Tensor, int, int]:
        """(group of each neuron of a sample, number of groups, samples per group member)."""
        shape = self.sample_shape
        per = int(np.prod(shape))
        if by == "neuron":
            return torch.arange(per).reshape(shape), per, self.target.shape[0]
        channels = shape[0]
        group = torch.arange(channels).reshape(self.channel_view()).expand(shape)
        return group, channels, self.target.shape[0] * (per // channels)

    def stats(self, theta: list[torch.Tensor] | None = None, v0: list[torch.Tensor] | None = None,
              bias: list[torch.Tensor] | None = None, by: str = "channel"
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean squared error to the ANN activation, mean rate), each [K, groups], for K
        candidate parameter sets (lists of equal length; None keeps the layer's own)."""
        k = len(next(p for p in (theta, v0, bias, [None]) if p is not None))
        stack = lambda ps, own: torch.stack([torch.broadcast_to(
            own if p is None else p, self.sample_shape) for p in (ps or [None] * k)])
        group, groups, members = self._groups(by)
        err, total = layer_stats(self.current, self.steps, stack(v0, self.v0), stack(theta, self.theta),
                                 stack(bias, self.bias), self.target, group, groups,
                                 self.reset, self.leak)
        return (err / members).to(torch.float32), (total / members).to(torch.float32)

    def spikes(self) -> torch.Tensor:
        """Spikes scaled by θ, [T, B, ...], with the layer's parameters."""
        cur = self.current + self.bias if bool(torch.any(self.bias != 0)) else self.current
        v = torch.zeros((self.target.shape[0], *self.sample_shape), dtype=torch.float32) + self.v0
        if fused.available():
            return fused.if_neuron_fused(cur.contiguous(), self.steps, v, self.theta, self.reset,
                                         self.leak)[0]
        return nrn.if_neuron_fast(cur, self.steps, v, self.theta, self.reset, self.leak)[0]

    def error(self) -> float:
        """The layer's mean squared error to the ANN activation with its parameters."""
        return float(self.stats([self.theta])[0].mean())

    def update(self, step: str, before: torch.Tensor, after: torch.Tensor) -> None:
        """Record a step's effect from its per-group errors before and after (equal-size groups)."""
        self.history.append((step, float(before.mean()), float(after.mean())))


def channel_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the channel axis (1) of a [B, C, ...] tensor: [C]."""
    return t.transpose(0, 1).reshape(t.shape[1], -1).mean(1)
