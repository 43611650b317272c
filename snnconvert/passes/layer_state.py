"""One neuron layer under layer-by-layer calibration: its input current as the fitted layers
before it actually spike, the ANN activation it should reproduce, and the parameters being fitted.

A layer step (threshold search, bias correction, potential calibration, ...) proposes candidate
parameters, measures the layer's error under each (all candidates in one pass over the current),
and keeps, per channel or per neuron, only what lowers the error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..runtime import fused
from ..runtime import neurons as nrn
from ..runtime.counting import layer_stats


@dataclass
class LayerState:
    """Parameters and data of one neuron layer during calibration at ``steps`` time steps.

    current  input current per chunk of samples: [b, ...] when constant in time (analog
             input), else [T, b, ...] (a list, or chunks spooled outside memory)
    target   the ANN activation (ReLU output) for the same samples, per chunk, [b, ...]
    theta    threshold, per channel ([C, 1, 1] / [C]), float32
    v0       initial potential, per channel or per neuron ([C, 1, 1] or [C, H, W])
    bias     current added at every step, per channel (same shape as theta); only fitted where
             ``bias_foldable`` (it folds into a Conv/Gemm bias: no extra node in the IR)
    step_bias  None, or a current added at step t on top of ``bias``, [T, *theta's shape],
             summing to zero over the steps (the neuron's step bias in the IR)
    history  (step, layer error before, after) for every step run on the layer
    """

    name: str
    current: Sequence[torch.Tensor]
    target: Sequence[torch.Tensor]
    steps: int
    theta: torch.Tensor
    v0: torch.Tensor
    bias: torch.Tensor
    reset: str = "subtract"
    leak: float = 0.0
    bias_foldable: bool = True
    step_bias: torch.Tensor | None = None
    history: list[tuple[str, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        first = self.target[0]
        self.samples = sum(len(t) for t in self.target)
        self._sample_shape = tuple(first.shape[1:])
        self._means: dict[str, torch.Tensor] = {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    def target_mean(self, by: str = "neuron") -> torch.Tensor:
        """Mean ANN activation over the samples, per neuron ([*sample_shape]) or per channel
        ([C]); summed in float64 one sample after another, so chunking does not change it."""
        if by not in self._means:
            acc = torch.zeros(self.sample_shape if by == "neuron" else self.sample_shape[:1],
                              dtype=torch.float64)
            for chunk in self.target:
                for one in chunk.to(torch.float64):
                    acc += one if by == "neuron" else one.reshape(len(acc), -1).sum(1)
            per = 1 if by == "neuron" else int(np.prod(self.sample_shape[1:]))
            self._means[by] = (acc / (self.samples * per)).to(torch.float32)
        return self._means[by]

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
            return torch.arange(per).reshape(shape), per, self.samples
        channels = shape[0]
        group = torch.arange(channels).reshape(self.channel_view()).expand(shape)
        return group, channels, self.samples * (per // channels)

    def stats(self, theta: list[torch.Tensor] | None = None, v0: list[torch.Tensor] | None = None,
              bias: list[torch.Tensor] | None = None, by: str = "channel"
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean squared error to the ANN activation, mean rate), each [K, groups], for K
        candidate parameter sets (lists of equal length; None keeps the layer's own)."""
        k = len(next(p for p in (theta, v0, bias, [None]) if p is not None))
        stack = lambda ps, own: torch.stack([torch.broadcast_to(
            own if p is None else p, self.sample_shape) for p in (ps or [None] * k)])
        group, groups, members = self._groups(by)
        v0s, thetas, biases = stack(v0, self.v0), stack(theta, self.theta), stack(bias, self.bias)
        sums = None
        for current, target in zip(self.current, self.target):
            sums = layer_stats(self.stepped(current), self.steps, v0s, thetas, biases, target, group,
                               groups, self.reset, self.leak, into=sums)
        err, total = sums
        return (err / members).to(torch.float32), (total / members).to(torch.float32)

    def constant(self, current: torch.Tensor) -> bool:
        """Whether a chunk's current is constant in time ([b, ...], analog input) or not ([T, b, ...])."""
        return current.dim() == len(self.sample_shape) + 1

    def stepped(self, current: torch.Tensor) -> torch.Tensor:
        """One chunk's current with the step bias added ([T, b, ...]; as it is without one)."""
        if self.step_bias is None:
            return current
        return (current.unsqueeze(0) if self.constant(current) else current) + self.step_bias.unsqueeze(1)

    def spikes(self, current: torch.Tensor) -> torch.Tensor:
        """Spikes scaled by θ, [T, b, ...], with the layer's parameters, for one chunk's current."""
        current = self.stepped(current)
        cur = current + self.bias if bool(torch.any(self.bias != 0)) else current
        batch = current.shape[0 if self.constant(current) else 1]
        v = torch.zeros((batch, *self.sample_shape), dtype=torch.float32) + self.v0
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


