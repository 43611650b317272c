"""Absorb in-graph input normalization (x*a + b by constants) into the first Conv/Gemm, when exact."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .graphutil import const, new_const, sole_consumer

_AFFINE = ("Mul", "Div", "Add", "Sub")


@dataclass
class _Step:
    node: gs.Node
    op: str
    value: np.ndarray


def absorb_input_normalization(graph: gs.Graph) -> list[str]:
    """Fold the longest exactly-absorbable tail of each input's Mul/Div/Add/Sub chain; return absorbed names."""
    absorbed: list[str] = []
    for inp in list(graph.inputs):
        if inp.shape is None or any(not isinstance(d, int) for d in inp.shape):
            continue
        chain, layer = _chain(graph, inp)
        if layer is None or not chain:
            continue
        shape = tuple(inp.shape)
        for start in range(len(chain)):
            tail = chain[start:]
            a, b = _compose(tail, shape)
            if a is None or not _absorb(graph, layer, a, b, shape):
                continue
            layer.inputs[0] = _operand(tail[0])
            for step in tail:
                step.node.outputs.clear()
                absorbed.append(step.node.name)
            break
    return absorbed


def _operand(step: _Step) -> gs.Tensor:
    """The non-constant input of an affine step."""
    return step.node.inputs[0] if const(step.node.inputs[0]) is None else step.node.inputs[1]


def _chain(graph: gs.Graph, inp: gs.Tensor) -> tuple[list[_Step], gs.Node | None]:
    """Walk single-consumer affine-by-constant ops from ``inp`` to the first Conv/Gemm."""
    chain: list[_Step] = []
    tensor = inp
    while True:
        node = sole_consumer(graph, tensor)
        if node is None:
            return chain, None
        if node.op in ("Conv", "Gemm"):
            return chain, node if node.inputs[0] is tensor else None
        if node.op not in _AFFINE or len(node.inputs) != 2:
            return chain, None
        x_first = node.inputs[0] is tensor
        value = const(node.inputs[1] if x_first else node.inputs[0])
        if value is None or (node.op in ("Sub", "Div") and not x_first):
            return chain, None
        if value.dtype.kind != "f":
            return chain, None
        chain.append(_Step(node, node.op, value.astype(np.float64)))
        tensor = node.outputs[0]


def _compose(chain: list[_Step], shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """y = a * x + b over the whole chain, a and b broadcast to ``shape``; None if a constant would grow x."""
    a = np.ones(shape)
    b = np.zeros(shape)
    for step in chain:
        try:
            if np.broadcast_shapes(shape, step.value.shape) != shape:
                return None, None
        except ValueError:
            return None, None
        if step.op == "Mul":
            a, b = a * step.value, b * step.value
        elif step.op == "Div":
            a, b = a / step.value, b / step.value
        elif step.op == "Add":
            b = b + step.value
        else:
            b = b - step.value
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None, None
    return a, b


def _absorb(graph: gs.Graph, layer: gs.Node, a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> bool:
    if layer.op == "Conv":
        return _absorb_conv(graph, layer, a, b, shape)
    return _absorb_gemm(graph, layer, a, b, shape)


def _channel_vector(v: np.ndarray) -> np.ndarray | None:
    """[1, C, ...] -> [C] when ``v`` is constant over every spatial position, else None."""
    flat = v.reshape(v.shape[0], v.shape[1], -1)
    if not np.all(flat == flat[:, :, :1]):
        return None
    return flat[0, :, 0]


def _absorb_conv(graph: gs.Graph, conv: gs.Node, a: np.ndarray, b: np.ndarray, shape) -> bool:
    weight = const(conv.inputs[1])
    if weight is None or len(shape) < 3 or shape[0] != 1:
        return False
    a_c, b_c = _channel_vector(a), _channel_vector(b)
    if a_c is None or b_c is None:
        return False
    has_shift = bool(np.any(b_c != 0))
    if has_shift and not _conv_unpadded(conv):
        return False
    groups = int(conv.attrs.get("group", 1))
    out_ch, in_per_group = weight.shape[0], weight.shape[1]
    group_of_out = np.arange(out_ch) // (out_ch // groups)
    in_index = group_of_out[:, None] * in_per_group + np.arange(in_per_group)[None, :]
    expand = (slice(None), slice(None)) + (None,) * (weight.ndim - 2)
    new_w = weight.astype(np.float64) * a_c[in_index][expand]
    has_bias = len(conv.inputs) > 2 and conv.inputs[2].name != ""
    bias = const(conv.inputs[2]) if has_bias else np.zeros(out_ch, weight.dtype)
    if bias is None:
        return False
    new_b = bias.astype(np.float64)
    if has_shift:
        new_b = new_b + (weight.astype(np.float64) * b_c[in_index][expand]).reshape(out_ch, -1).sum(axis=1)
    conv.inputs[1] = new_const(graph, f"{conv.inputs[1].name}_absorbed", new_w.astype(weight.dtype))
    b_t = new_const(graph, f"{conv.name or 'conv'}_bias_absorbed", new_b.astype(weight.dtype))
    if len(conv.inputs) > 2:
        conv.inputs[2] = b_t
    else:
        conv.inputs.append(b_t)
    return True


def _conv_unpadded(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return False
    return all(int(p) == 0 for p in conv.attrs.get("pads", []))


def _absorb_gemm(graph: gs.Graph, gemm: gs.Node, a: np.ndarray, b: np.ndarray, shape) -> bool:
    weight = const(gemm.inputs[1])
    if weight is None or len(shape) != 2 or shape[0] != 1 or int(gemm.attrs.get("transA", 0)):
        return False
    trans_b = int(gemm.attrs.get("transB", 0))
    alpha = float(gemm.attrs.get("alpha", 1.0))
    beta = float(gemm.attrs.get("beta", 1.0))
    w_in_out = weight.T.astype(np.float64) if trans_b else weight.astype(np.float64)
    a_f, b_f = a[0], b[0]
    new_w = w_in_out * a_f[:, None]
    shift = alpha * (b_f @ w_in_out)
    has_c = len(gemm.inputs) > 2 and gemm.inputs[2].name != ""
    old_c = const(gemm.inputs[2]) if has_c else None
    if has_c and old_c is None:
        return False
    new_c = shift if old_c is None else beta * old_c.astype(np.float64) + shift
    gemm.inputs[1] = new_const(graph, f"{gemm.inputs[1].name}_absorbed",
                               (new_w.T if trans_b else new_w).astype(weight.dtype))
    c_t = new_const(graph, f"{gemm.name or 'gemm'}_bias_absorbed", np.asarray(new_c, weight.dtype))
    if len(gemm.inputs) > 2:
        gemm.inputs[2] = c_t
    else:
        gemm.inputs.append(c_t)
    gemm.attrs["beta"] = 1.0
    return True
