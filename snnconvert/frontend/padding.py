"""Resolve auto_pad (SAME_UPPER/SAME_LOWER/VALID) into explicit pads, so every runtime sees one convention."""
from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from .graphutil import const

_WINDOWED = ("Conv", "MaxPool", "AveragePool", "LpPool")


def resolve_auto_pad(graph: gs.Graph) -> list[str]:
    """Rewrite auto_pad into ``pads`` on Conv and pooling nodes with static input shapes; return their names."""
    done = []
    for node in graph.nodes:
        if node.op not in _WINDOWED:
            continue
        mode = node.attrs.get("auto_pad", "NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode == "NOTSET":
            continue
        spatial = _spatial_shape(node)
        kernel = _kernel(node)
        if spatial is None or kernel is None:
            continue
        n = len(kernel)
        strides = list(node.attrs.get("strides", [1] * n))
        dilations = list(node.attrs.get("dilations", [1] * n))
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            if mode == "VALID":
                total = 0
            else:
                out = math.ceil(size / s)
                total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begin.append(small if mode != "SAME_LOWER" else large)
            end.append(total - begin[-1])
        node.attrs["pads"] = begin + end
        del node.attrs["auto_pad"]
        done.append(node.name)
    return done


def _spatial_shape(node: gs.Node) -> list[int] | None:
    shape = node.inputs[0].shape
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return list(shape[2:])


def _kernel(node: gs.Node) -> list[int] | None:
    if "kernel_shape" in node.attrs:
        return list(node.attrs["kernel_shape"])
    weight = const(node.inputs[1]) if node.op == "Conv" and len(node.inputs) > 1 else None
    return list(weight.shape[2:]) if weight is not None else None
