"""The training core shared by fine-tuning (:mod:`snnconvert.finetune`) and the label-free
distillation pass (:mod:`snnconvert.passes.distill`): per-parameter learning rates and the
threshold floor. It lives in the runtime so that both can use it, each importing downward."""
from __future__ import annotations

import torch
from torch import nn

from .. import ir
from .network import SpikingNetwork, param_key

LR_REFERENCE_RMS = 0.05


def scale_for(param: torch.Tensor) -> float:
    """Learning-rate factor min(1, rms(param) / 0.05): Adam steps are ~lr in absolute size, so
    small weights (e.g. a bias-free net fed raw x/255) need proportionally smaller steps."""
    rms = float(param.detach().pow(2).mean().sqrt())
    return min(1.0, max(rms, 1e-8) / LR_REFERENCE_RMS)


def threshold_keys(net: SpikingNetwork) -> set[str]:
    """Parameter keys (in ``net.params``) of every neuron's threshold."""
    return {param_key(node.input[1]) for node in net._model.graph.node if ir.is_neuron(node)}


def threshold_floors(net: SpikingNetwork, keys: set[str]) -> dict[str, torch.Tensor]:
    """Per threshold parameter, the floor training keeps it above: 1e-3 of its mean magnitude."""
    return {k: 1e-3 * net.params[k].detach().abs().mean().clamp(min=1e-8) for k in keys}


@torch.no_grad()
def keep_thresholds_positive(net: SpikingNetwork, floors: dict[str, torch.Tensor]) -> None:
    for key, floor in floors.items():
        param: nn.Parameter = net.params[key]
        param.copy_(torch.maximum(param, floor))
