"""Per-sample static shapes of every tensor of a graph, from each op's registry shape rule (the
kernel run on meta tensors: no data, no onnxruntime session)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UnsupportedModelError
from ..graph import attrs as node_attrs
from ..graph import constant_value, is_constant
from .registry import lookup


class _Constants:
    """Constant values by name: initializers converted when read and not kept (a whole copy of
    VGG-19's 550 MB of weights just for shapes), computed constants kept."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._initializers = {t.name: t for t in graph.initializer}
        self._computed: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._computed or name in self._initializers

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._computed[name] = value

    def get(self, name: str) -> np.ndarray | None:
        if name in self._computed:
            return self._computed[name]
        t = self._initializers.get(name)
        return None if t is None else numpy_helper.to_array(t)


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape without the batch axis, for the graph input and every node output."""
    consts = _Constants(model.graph)
    shapes: dict[str, tuple[int, ...]] = {}
    for inp in model.graph.input:
        if inp.name not in consts:
            dims = inp.type.tensor_type.shape.dim[1:]
            shapes[inp.name] = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    for node in model.graph.node:
        if is_constant(node):
            consts[node.output[0]] = constant_value(node)
            continue
        entry = lookup(node)
        if entry is None or not entry.has_kernel:
            raise UnsupportedModelError("no shape rule for this op", node=node.name, op=node.op_type)
        ins = [shapes.get(n) if n else None for n in node.input]
        vals = [consts.get(n) if n and n not in shapes else None for n in node.input]
        if all(s is None for s in ins):  # a constant expression: compute it
            out = entry.kernel(node_attrs(node), *[None if v is None else _tensor(v) for v in vals])
            consts[node.output[0]] = out.numpy()
            continue
        shapes[node.output[0]] = entry.shape(node_attrs(node), ins, vals)
    return shapes


def _tensor(v: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(v))
