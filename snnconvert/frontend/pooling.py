"""Rewrite GlobalMaxPool as a MaxPool over the whole (static) plane, so the runtime's spiking max-pool
gates it by accumulated input like any other max-pool."""
from __future__ import annotations

import onnx_graphsurgeon as gs


def global_max_pool_to_max_pool(graph: gs.Graph) -> list[str]:
    """GlobalMaxPool on a 4-D tensor of static H, W -> MaxPool(kernel_shape=[H, W]); return rewritten names."""
    done = []
    for node in graph.nodes:
        if node.op != "GlobalMaxPool":
            continue
        shape = node.inputs[0].shape
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            continue
        node.op = "MaxPool"
        node.attrs = {"kernel_shape": [int(d) for d in shape[2:]]}
        done.append(node.name)
    return done
