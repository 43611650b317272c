"""Make a batch-1 graph run any batch size: symbolic input batch and Reshapes that do not pin batch 1."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graphutil import const, new_const
from .validate import BATCH, graph_inputs


def free_reshape_batch(graph: gs.Graph) -> list[str]:
    """Reshape targets ``[1, ...]`` applied to a ``[1, ...]`` tensor get 0 (copy the batch) there; return names.

    0 keeps the symbolic batch visible to shape inference; with ``allowzero`` set, -1 is used instead.
    """
    changed = []
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) < 2:
            continue
        target = const(node.inputs[1])
        data_shape = node.inputs[0].shape
        if target is None or target.ndim != 1 or target.size == 0 or int(target[0]) != 1:
            continue
        if data_shape is None or len(data_shape) == 0 or data_shape[0] != 1:
            continue
        new = target.astype(np.int64).copy()
        if not int(node.attrs.get("allowzero", 0)):
            new[0] = 0
        elif -1 not in new[1:]:
            new[0] = -1
        else:
            continue
        node.inputs[1] = new_const(graph, f"{node.inputs[1].name}_batched", new)
        changed.append(node.name)
    return changed


def symbolic_batch(model: onnx.ModelProto) -> None:
    """Name dim 0 of every input, and of every output whose dim 0 is 1, as the symbolic batch (in place)."""
    for vi in graph_inputs(model) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_value in (0, 1):
            dims[0].Clear()
            dims[0].dim_param = BATCH
