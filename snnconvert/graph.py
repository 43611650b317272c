"""Small helpers for reading and editing ONNX graphs in place (used by the passes)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            if i:
                out[i].append(n)
    return out


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def attrs(node: onnx.NodeProto) -> dict:
    """All attributes of ``node`` as Python values (strings decoded, tensors as numpy arrays)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def is_constant(node: onnx.NodeProto) -> bool:
    """An ONNX Constant node (its value is an attribute; the front-end folds it)."""
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


def const_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of ``name`` if it is an initializer or a Constant node's output."""
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if is_constant(n) and n.output and n.output[0] == name:
            return constant_value(n)
    return None


_CONSTANT_DTYPES = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                    "value_ints": np.int64}


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value a Constant node outputs, whichever attribute holds it (``value`` or one of the
    ``value_float(s)`` / ``value_int(s)`` forms exporters write); None for the string and sparse
    forms, which no convertible graph computes with."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in _CONSTANT_DTYPES:
            return np.asarray(helper.get_attribute_value(a), dtype=_CONSTANT_DTYPES[a.name])
    return None


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray | None]:
    """Every constant tensor of ``graph`` by name: its initializers and its Constant nodes' outputs
    (each read by :func:`constant_value`)."""
    values: dict[str, np.ndarray | None] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values.update((n.output[0], constant_value(n)) for n in graph.node if is_constant(n))
    return values


def set_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(value), name))
            return
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))


def unique_name(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {
        n.name for n in graph.node} | {i.name for i in graph.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def channel_shape(rank: int, channels: int) -> list[int]:
    """Shape that broadcasts a per-channel vector over an activation of ``rank`` (batch incl.)."""
    return [channels] + [1] * max(rank - 2, 0)


def value_rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None
