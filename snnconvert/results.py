"""What a simulation returns, shared by the runtime and every target (no dependency on either)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass
class SimResult:
    """What a simulation returns, per number of timesteps T.

    readout      T -> [N, n_out] accumulated output-layer membrane divided by T
    firing_rate  T -> mean spikes per neuron per step over all neuron layers
    layer_rates  T -> {neuron name: mean spikes per neuron per step}
    spikes       T -> {neuron name: spikes summed over the samples and steps 1..T} (integers)
    sizes        {neuron name: neurons per sample}
    ``spikes`` and ``sizes`` let streamed and distributed evaluations sum counts exactly.
    """

    readout: dict[int, np.ndarray]
    firing_rate: dict[int, float] = field(default_factory=dict)
    layer_rates: dict[int, dict[str, float]] = field(default_factory=dict)
    spikes: dict[int, dict[str, float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def predictions(self, t: int) -> np.ndarray:
        return np.argmax(self.readout[t], axis=1)

    def add_rates(self, t: int, spikes: Mapping[str, float], sizes: Mapping[str, int],
                  samples: int) -> None:
        """Record the rates at ``t`` from total spikes per layer (over ``samples`` inputs and
        ``t`` steps) and neurons per layer: per layer, and over all layers weighted by size."""
        self.spikes[t] = {k: float(spikes[k]) for k in sizes}
        self.sizes = dict(sizes)
        self.layer_rates[t] = {k: float(spikes[k]) / (samples * sizes[k] * t) for k in sizes}
        total = sum(sizes.values())
        self.firing_rate[t] = (float(sum(spikes[k] for k in sizes)) / (samples * total * t)
                               if total else 0.0)
