"""Constant folding: materialize ConstantOfShape weights with numpy, then fold the rest with onnx-graphsurgeon."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graphutil import const, replace_uses

def materialize_constant_of_shape(graph: gs.Graph) -> int:
    """Replace each ConstantOfShape with a constant shape input by a constant tensor (in place); return the count.

    numpy's ``full`` is far cheaper than evaluating these in onnxruntime, which matters for the
    "light" zoo models whose every weight is a ConstantOfShape.
    """
    done = 0
    for node in graph.nodes:
        if node.op != "ConstantOfShape" or not node.inputs or const(node.inputs[0]) is None:
            continue
        value = node.attrs.get("value")
        value = np.zeros(1, np.float32) if value is None else np.asarray(value.values).reshape(-1)
        shape = tuple(int(d) for d in const(node.inputs[0]).reshape(-1))
        out = node.outputs[0]
        node.outputs.clear()
        node.inputs.clear()
        folded = gs.Constant(out.name, np.full(shape, value[0], dtype=value.dtype))
        replace_uses(graph, out, folded)
        for i, o in enumerate(graph.outputs):
            if o is out:
                graph.outputs[i] = folded
        done += 1
    return done


def fold(model: onnx.ModelProto) -> tuple[gs.Graph, int]:
    """Import into onnx-graphsurgeon and fold ConstantOfShape, Constant nodes and static shape arithmetic.

    Returns the graph and the number of ConstantOfShape weights materialized.
    """
    graph = gs.import_onnx(model)
    n_cos = materialize_constant_of_shape(graph)
    logger = gs.logger.G_LOGGER
    saved = logger.severity
    logger.severity = logger.ERROR
    try:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        graph.fold_constants(fold_shapes=True, partitioning="basic", error_ok=True)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    finally:
        logger.severity = saved
    return graph, n_cos
