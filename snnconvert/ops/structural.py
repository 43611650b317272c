"""Nodes with no run-time computation: constants (folded by the front-end), inference
pass-throughs, a final softmax, and layers the converter refuses outright."""
from __future__ import annotations

import torch

from .base import GraphView, OpEntry, Verdict, refuse
from .registry import lookup, register


class _Constant(OpEntry):
    family = "structural"

    def verdict(self, node, attrs, graph):
        return Verdict("structural", "constant expression; load_model folds it into an initializer")


for _op in ("Constant", "Shape", "Size"):
    register(type(_op, (_Constant,), {"op_type": _op}))


class _PassThrough(OpEntry):
    family = "structural"
    affine = passthrough = True

    def verdict(self, node, attrs, graph):
        return Verdict("dropped", "no effect at inference; load_model removes it")

    def kernel(self, attrs, x, *rest):
        return x


for _op in ("Identity", "Dropout"):
    register(type(_op, (_PassThrough,), {"op_type": _op}))


def trailing(graph: GraphView, tensor: str) -> bool:
    """Whether ``tensor`` reaches a graph output through reshapes and pass-throughs only."""
    while tensor not in graph.outputs:
        users = graph.users.get(tensor, [])
        e = lookup(users[0]) if len(users) == 1 else None
        if e is None or not (e.reshaping or e.passthrough):
            return False
        tensor = users[0].output[0]
    return not graph.users.get(tensor)


class _Softmax(OpEntry):
    family = "structural"

    def verdict(self, node, attrs, graph):
        if trailing(graph, node.output[0]):
            return Verdict("dropped", "final softmax; removed by load_model (the class argmax is unchanged)")
        return refuse("a softmax inside the network couples all neurons of a layer and has no spiking "
                      "equivalent.", "remove it; only a final softmax is allowed.")


@register
class Softmax(_Softmax):
    op_type = "Softmax"

    def kernel(self, attrs, x):
        return torch.softmax(x, dim=attrs.get("axis", -1))


@register
class LogSoftmax(_Softmax):
    op_type = "LogSoftmax"

    def kernel(self, attrs, x):
        return torch.log_softmax(x, dim=attrs.get("axis", -1))


def _refused(op: str, reason: str, hint: str) -> None:
    def verdict(self, node, attrs, graph):
        return refuse(reason, hint)
    register(type(op, (OpEntry,), {"op_type": op, "family": "refused", "verdict": verdict}))


for _op in ("LSTM", "GRU", "RNN"):
    _refused(_op, "recurrent layers cannot be converted.", "use a feed-forward network.")
for _op in ("LayerNormalization", "InstanceNormalization"):
    _refused(_op, "normalization over activations at run time has no spiking equivalent.",
             "use BatchNormalization.")
_refused("LRN", "local response normalization has no spiking equivalent.",
         "remove it and retrain, or replace it by BatchNormalization.")
