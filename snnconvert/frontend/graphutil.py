"""Small onnx-graphsurgeon helpers shared by the front-end rewrites."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def const(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor, or None for a variable."""
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) else None


def sole_consumer(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The only node reading ``tensor``, if exactly one does and it is not a graph output."""
    if len(tensor.outputs) != 1 or any(out is tensor for out in graph.outputs):
        return None
    return tensor.outputs[0]


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor, skip: gs.Node | None = None) -> None:
    """Make every reader of ``old`` (except ``skip``) read ``new`` instead."""
    for node in list(old.outputs):
        if node is skip:
            continue
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new


def bypass(graph: gs.Graph, node: gs.Node) -> None:
    """Remove a one-input pass-through node, keeping graph output names stable."""
    inp, out = node.inputs[0], node.outputs[0]
    is_graph_out = any(o is out for o in graph.outputs)
    src = producer(inp)
    if (is_graph_out and src is not None and not isinstance(inp, gs.Constant)
            and not any(o is inp for o in graph.outputs)):
        replace_uses(graph, inp, out, skip=node)
        node.inputs.clear()
        node.outputs.clear()
        src.outputs[[i for i, t in enumerate(src.outputs) if t is inp][0]] = out
        return
    replace_uses(graph, out, inp)
    for i, o in enumerate(graph.outputs):
        if o is out:
            graph.outputs[i] = inp
    node.inputs.clear()
    node.outputs.clear()


def new_const(graph: gs.Graph, base: str, values: np.ndarray) -> gs.Constant:
    """A constant with a name not used in ``graph``."""
    names = graph.tensors().keys()
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}_{k}"
    return gs.Constant(name, np.ascontiguousarray(values))


def name_nodes(graph: gs.Graph) -> None:
    """Give every unnamed node a unique name (``<op>_<k>``) so that reports can point at it."""
    used = {n.name for n in graph.nodes if n.name}
    for k, node in enumerate(graph.nodes):
        if node.name:
            continue
        name = f"{node.op}_{k}"
        while name in used:
            name += "_"
        node.name = name
        used.add(name)
