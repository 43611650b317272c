"""Activations: ReLU and Clip(0, c) become IF/LIF neurons; other non-linearities are refused
with what to retrain with."""
from __future__ import annotations

import numpy as np
import torch

from .base import OpEntry, Verdict, refuse
from .registry import register

RETRAIN_RELU = "retrain the network with ReLU (or ReLU6 / Clip(0, max))."


@register
class Relu(OpEntry):
    op_type = "Relu"
    family = "activation"

    def verdict(self, node, attrs, graph):
        return Verdict("neuron", "IF neuron (its firing rate approximates ReLU)")

    def kernel(self, attrs, x):
        return torch.relu(x)


@register
class Clip(OpEntry):
    op_type = "Clip"
    family = "activation"

    def verdict(self, node, attrs, graph):
        if len(node.input) > 1:
            lo = graph.const_value(node.input[1]) if node.input[1] else None
            hi_name = node.input[2] if len(node.input) > 2 else ""
            hi = graph.const_value(hi_name) if hi_name else None
            if hi_name and hi is None:
                return refuse("Clip max must be a constant.", "export it with a fixed max.")
        else:
            lo, hi = attrs.get("min"), attrs.get("max")
        if lo is None or float(np.asarray(lo)) != 0.0:
            shown = "unset" if lo is None else f"{float(np.asarray(lo)):g}"
            return refuse(f"Clip with min {shown} is not a ReLU-like activation (neurons cannot go "
                          "negative).", "use min 0 (ReLU6 = Clip(0, 6)).")
        top = "" if hi is None else f", saturating at {float(np.asarray(hi)):g}"
        return Verdict("neuron", f"IF neuron (clipped ReLU{top})")

    def kernel(self, attrs, x, lo=None, hi=None):
        lo_v = lo if lo is not None else attrs.get("min")
        hi_v = hi if hi is not None else attrs.get("max")
        if lo_v is not None:
            x = torch.maximum(x, torch.as_tensor(lo_v, dtype=x.dtype))
        if hi_v is not None:
            x = torch.minimum(x, torch.as_tensor(hi_v, dtype=x.dtype))
        return x


def _refused(op: str, reason: str, hint: str) -> None:
    """Register an op the converter knows and refuses, with its reason and hint."""
    def verdict(self, node, attrs, graph):
        return refuse(reason, hint)
    register(type(op, (OpEntry,), {"op_type": op, "family": "refused", "verdict": verdict}))


_SIGNED = "a negative slope needs signed neurons, which are not supported."
for _op in ("LeakyRelu", "PRelu"):
    _refused(_op, _SIGNED, "retrain with ReLU.")
for _op in ("Sigmoid", "HardSigmoid"):
    _refused(_op, "a saturating non-linearity has no integrate-and-fire equivalent.", RETRAIN_RELU)
_refused("Tanh", "a signed saturating non-linearity has no integrate-and-fire equivalent.", RETRAIN_RELU)
for _op in ("Elu", "Selu", "Celu", "Gelu", "HardSwish"):
    _refused(_op, "a signed non-linearity has no integrate-and-fire equivalent.", RETRAIN_RELU)
_refused("Softplus", "a smooth non-linearity has no integrate-and-fire equivalent.", RETRAIN_RELU)
