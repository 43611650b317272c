"""Forward passes used for training: BPTT through the SNN, the SNN2ANN rate-substituted ANN
branch (Tang et al.) and the pipe-S sharpened ANN twin (Lin et al.).

All three run the same :class:`SpikingNetwork` and share its parameters; the ANN variants
replace every neuron through ``neuron_hook`` and run one step (T = 1), where the readout
is the plain graph output, on the rate-limit input (the mean frame of time-varying input).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import ir
from ..runtime import SpikingNetwork, param_key


@dataclass(frozen=True)
class NeuronParams:
    """Parameter keys of one neuron node in ``net.params``."""

    name: str
    threshold: str
    v_init: str


def neuron_table(net: SpikingNetwork) -> dict[str, NeuronParams]:
    out = {}
    for node in net._model.graph.node:
        if ir.is_neuron(node):
            out[node.name] = NeuronParams(node.name, param_key(node.input[1]), param_key(node.input[2]))
    return out


Forward = Callable[[torch.Tensor, int], torch.Tensor]
"""net(x, timesteps) or its DistributedDataParallel wrapper (which syncs gradients)."""


def bptt_logits(net: SpikingNetwork | Forward, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """The SNN readout after ``timesteps`` steps, differentiable through the surrogate."""
    return net(x, timesteps)


def _clip(current: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The rate-limit activation of an IF neuron, clip(x, 0, θ)."""
    return torch.minimum(torch.relu(current), theta)


def snn2ann_logits(net: SpikingNetwork, x: torch.Tensor, timesteps: int, chunk: int,
                   table: dict[str, NeuronParams], forward: Forward | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SNN2ANN forward: spike counts from a no-grad SNN run, then one ANN pass whose
    activations carry the SNN rates θ·count/T forward and clip(x, 0, θ)'s gradient backward.

    The no-grad run is simulated ``chunk`` steps at a time, so memory does not grow with T.
    ``forward`` runs the gradient pass (the DistributedDataParallel wrapper of ``net``).
    Returns (logits, per-neuron fraction of noisy spikes, spikes where the ANN activation is 0,
    as 0-d tensors on the device: no host round trip).
    """
    previous = (net.record, net.time_chunk)
    net.record, net.time_chunk = True, min(chunk, timesteps)
    try:
        with torch.no_grad():
            net(x, timesteps)
        counts = dict(net.spike_counts)
    finally:
        net.record, net.time_chunk = previous
    noisy: dict[str, torch.Tensor] = {}
    x = net.mean_input(x, timesteps)

    def hook(name, current, lead, fire):
        theta = net.params[table[name].threshold]
        act = _clip(current, theta)
        count = counts[name].reshape(act.shape)
        rate = theta.detach() * count / timesteps
        with torch.no_grad():
            noisy[name] = ((act <= 0) & (count > 0)).float().mean()
        return act + (rate - act).detach()

    net.neuron_hook = hook
    try:
        logits = (forward or net)(x, 1)
    finally:
        net.neuron_hook = None
    return logits, noisy


def sharpen_logits(net: SpikingNetwork, x: torch.Tensor, sharpness: float,
                   table: dict[str, NeuronParams], forward: Forward | None = None) -> torch.Tensor:
    """pipe-S ANN twin: every neuron becomes θ·ramp(x/θ) with ramp 0 below s, 1 above 1-s and
    linear between (s = 0 is the IR's clip(x, 0, θ)); backward is clip's gradient, the
    rectangular surrogate 1[0 < x/θ < 1] of pipe-S."""
    lo, hi = min(sharpness, 0.49), 1.0 - min(sharpness, 0.49)
    steps = net.data_steps(x.shape)
    x = net.mean_input(x, steps) if steps is not None else x

    def hook(name, current, lead, fire):
        theta = net.params[table[name].threshold]
        u = current / theta
        soft = torch.clamp(u, 0.0, 1.0)
        sharp = torch.clamp((u - lo) / (hi - lo), 0.0, 1.0)
        return theta * (soft + (sharp - soft).detach())

    net.neuron_hook = hook
    try:
        return (forward or net)(x, 1)
    finally:
        net.neuron_hook = None


@torch.no_grad()
def adjust_thresholds(net: SpikingNetwork, noisy: dict[str, torch.Tensor | float],
                      table: dict[str, NeuronParams], tolerance: float, step: float) -> None:
    """SNN2ANN's adaptive threshold adjustment: raise θ (and v_init with it, keeping v_init/θ)
    by the relative ``step`` in every layer whose noisy-spike fraction exceeds ``tolerance``
    (decided on the device, without a host round trip)."""
    for name, fraction in noisy.items():
        p = table[name]
        theta = net.params[p.threshold]
        factor = torch.where(torch.as_tensor(fraction, device=theta.device) > tolerance,
                             1.0 + step, 1.0).to(theta.dtype)
        theta.mul_(factor)
        net.params[p.v_init].mul_(factor)
