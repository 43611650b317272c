"""DCLS (Hammouamri, Khalfaoui-Hassani, Masquelier, ICLR 2024): learnable synaptic delays.

Each delay synapse (:data:`snnconvert.ir.DELAY_DENSE`) gets a continuous position per
connection; during training its temporal kernel is the Gaussian around that position
(:func:`snnconvert.ops.delays.gaussian_kernel`), whose width σ falls geometrically from D/2 to
:data:`SIGMA_END` (≈ one tap, DCLS's 0.23 + 0.27) over the first quarter of training and stays
there. Positions are clamped to [0, D] after every step, train at 100x the weights' learning
rate (Adam, no weight decay) and are rounded to integer delays at the end (and whenever the
network is validated or exported, so every figure is that of the integer network).

The kernel construction is ours, not the ``dcls`` package's: the runtime runs the delay synapse
as one ``conv1d`` over a history of input steps and needs only the [out, in, D + 1] kernel,
which is three lines; ``dcls`` 0.1.1 builds it inside its own ``Dcls1d`` convolution module
(kernel_count taps, centred positions, σ + 0.27), so using it would mean a second convolution
path that the runtime, the IR and the targets do not share.
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
