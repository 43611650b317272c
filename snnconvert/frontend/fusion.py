"""Fuse MatMul(+Add) into Gemm and a Conv's separate bias Add into the Conv, for a clean IR."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graphutil import const, new_const, sole_consumer


def _other_const(node: gs.Node, tensor: gs.Tensor) -> np.ndarray | None:
    """For a binary node reading ``tensor``, the constant value of its other operand."""
    if len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is tensor else node.inputs[0]
    return None if other is tensor else const(other)


def fuse_matmul_to_gemm(graph: gs.Graph) -> list[str]:
    """MatMul(A[rows, k], W const [k, n]) [+ Add(bias broadcasting to [n])] -> Gemm; return fused names."""
    fused = []
    for node in list(graph.nodes):
        if node.op != "MatMul" or len(node.outputs) != 1:
            continue
        a, w_t = node.inputs
        weight = const(w_t)
        if weight is None or weight.ndim != 2 or const(a) is not None:
            continue
        if a.shape is None or len(a.shape) != 2:
            continue
        out = node.outputs[0]
        inputs = [a, w_t]
        add = sole_consumer(graph, out)
        bias = _other_const(add, out) if add is not None and add.op == "Add" else None
        n_out = weight.shape[1]
        if bias is not None and bias.size == n_out and bias.ndim <= 2 and bias.shape[-1] == n_out:
            inputs.append(new_const(graph, f"{node.name or out.name}_bias",
                                    bias.reshape(n_out).astype(weight.dtype)))
            out = add.outputs[0]
            add.outputs.clear()
        gemm = gs.Node("Gemm", name=node.name or out.name, inputs=inputs, outputs=[out])
        node.outputs.clear()
        graph.nodes.append(gemm)
        fused.append(gemm.name)
    return fused


def fuse_conv_bias_add(graph: gs.Graph) -> list[str]:
    """Conv followed by Add(constant per output channel) -> Conv with that bias; return fused names."""
    fused = []
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if node.op != "Conv" or len(node.inputs) < 2 or const(node.inputs[1]) is None:
                continue
            out = node.outputs[0]
            add = sole_consumer(graph, out)
            if add is None or add.op != "Add":
                continue
            c = _other_const(add, out)
            weight = const(node.inputs[1])
            per_channel = _per_channel(c, weight.ndim, weight.shape[0]) if c is not None else None
            if per_channel is None:
                continue
            has_bias = len(node.inputs) > 2 and node.inputs[2].name != ""
            old = const(node.inputs[2]) if has_bias else np.zeros(weight.shape[0], weight.dtype)
            if old is None:
                continue
            bias = (old + per_channel).astype(weight.dtype)
            b_t = new_const(graph, f"{node.name or out.name}_bias", bias)
            if len(node.inputs) > 2:
                node.inputs[2] = b_t
            else:
                node.inputs.append(b_t)
            node.outputs[0] = add.outputs[0]
            add.outputs.clear()
            add.inputs.clear()
            fused.append(node.name)
            changed = True
    return fused


def _per_channel(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``c`` as a [channels] vector if it broadcasts against an [N, C, ...] tensor along C only."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).copy()
