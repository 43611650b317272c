"""Remove nodes that do not change inference results: Dropout, Identity and a trailing Softmax."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .graphutil import bypass

_PASS_THROUGH = ("Dropout", "Identity")
_TRAILING = ("Softmax", "LogSoftmax")
_RESHAPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def drop_pass_through(graph: gs.Graph) -> list[str]:
    """Bypass Dropout (when its mask is unused) and Identity nodes; return their names."""
    dropped = []
    for node in list(graph.nodes):
        if node.op not in _PASS_THROUGH or not node.outputs:
            continue
        if any(len(t.outputs) or any(o is t for o in graph.outputs) for t in node.outputs[1:]):
            continue
        while len(node.outputs) > 1:
            node.outputs.pop()
        dropped.append(node.name)
        bypass(graph, node)
    return dropped


def drop_trailing_softmax(graph: gs.Graph) -> list[str]:
    """Bypass a Softmax/LogSoftmax that feeds only a graph output, possibly through reshapes.

    The class argmax is unchanged; the network then outputs logits.
    """
    dropped = []
    for node in list(graph.nodes):
        if node.op in _TRAILING and node.outputs and is_trailing(graph, node.outputs[0]):
            dropped.append(node.name)
            bypass(graph, node)
    return dropped


def is_trailing(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True if ``tensor`` reaches a graph output through single-consumer reshaping ops only."""
    while True:
        if any(o is tensor for o in graph.outputs):
            return len(tensor.outputs) == 0
        if len(tensor.outputs) != 1 or tensor.outputs[0].op not in _RESHAPING:
            return False
        tensor = tensor.outputs[0].outputs[0]
