"""DCLS (Hammouamri, Khalfaoui-Hassani, Masquelier, ICLR 2024): learnable synaptic delays.

Each delay synapse (:data:`snnconvert.ir.DELAY_DENSE`) gets a continuous position per
connection; during training its temporal kernel is the Gaussian around that position
(:func:`snnconvert.ops.delays.gaussian_kernel`), whose width σ falls geometrically from D/2 to
:data:`SIGMA_END` over the first quarter of training and stays there. 0.25 is one-hot to
within e^-8 at the neighbouring taps; DCLS stops at 0.23 + 0.27 = 0.5, where a position between
two taps still spreads its weight over both, so rounding at the end would change the network
that was trained. Positions are clamped to [0, D] after every step, train at 100x the weights' learning
rate (Adam, no weight decay) and are rounded to integer delays at the end (and whenever the
network is validated or exported, so every figure is that of the integer network).

The kernel construction is ours, not the ``dcls`` package's. ``dcls`` 0.1.1 installs (a
pure-Python wheel) and its ``ConstructKernel1d(version="gauss")`` gives the same kernel (checked:
largest difference 1e-16, with its σ = SIG + 0.27 and its centred position P = D - d - (D+1)//2);
we keep these three lines because that kernel is laid out for its ``Dcls1d`` convolution
(kernel_count taps, centred positions, the 0.27 offset), which would need translating both ways
for the IR's integer delays, and it caches its index tensors on the device of its first call.
"""
from __future__ import annotations

import math

import torch

from .. import graph, ir
from ..runtime import SpikingNetwork, param_key

SIGMA_END = 0.25
ANNEAL_FRACTION = 0.25


def sigma_at(progress: float, max_delay: int) -> float:
    """σ after the fraction ``progress`` of training: D/2 at 0, SIGMA_END from 1/4 on."""
    start = max(max_delay / 2.0, SIGMA_END)
    f = min(max(progress / ANNEAL_FRACTION, 0.0), 1.0)
    return start * math.exp(f * math.log(SIGMA_END / start))


def max_delays(net: SpikingNetwork) -> dict[str, int]:
    """D of every delay synapse, by its key in ``net.delay_positions``."""
    return {param_key(n.name): int(graph.attrs(n).get("max_delay", 0))
            for n in net._model.graph.node if ir.is_delay_dense(n)}


@torch.no_grad()
def clamp_positions(net: SpikingNetwork, tops: dict[str, int]) -> None:
    for key, p in net.delay_positions.items():
        p.clamp_(0.0, float(tops[key]))


def learnable(net: SpikingNetwork) -> list[torch.nn.Parameter]:
    return [p for p in net.delay_positions.values() if p.requires_grad]
