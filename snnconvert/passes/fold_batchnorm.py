"""Fold BatchNormalization into the preceding Conv/Gemm; turn any other BN into an affine op.

W' = W·γ/√(σ²+ε),  b' = β + γ(b − μ)/√(σ²+ε). A BN whose input is not a Conv/Gemm used only
by it (e.g. after a residual Add) becomes Mul + Add with per-channel constants.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import graph as g
from .base import Pass, PassContext


def _bn_params(value, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    vals = [value(n) for n in bn.input[1:5]]
    if any(v is None for v in vals):
        return None
    scale, beta, mean, var = (v.astype(np.float64) for v in vals)
    eps = g.attr(bn, "epsilon", 1e-5)
    a = scale / np.sqrt(var + eps)
    return a, beta - mean * a


def _fold_into(graph: onnx.GraphProto, value, layer: onnx.NodeProto, a: np.ndarray,
               c: np.ndarray) -> bool:
    w = value(layer.input[1])
    if w is None:
        return False
    w = w.astype(np.float64)
    b = value(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else None
    if layer.op_type == "Conv":
        w = w * a.reshape(-1, *([1] * (w.ndim - 1)))
        b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    else:
        alpha, beta = g.attr(layer, "alpha", 1.0), g.attr(layer, "beta", 1.0)
        if g.attr(layer, "transA", 0):
            return False
        w = w * alpha
        w = w * a[:, None] if g.attr(layer, "transB", 0) else w * a[None, :]
        b = np.zeros(len(a)) if b is None else np.broadcast_to(b.astype(np.float64) * beta, a.shape)
        g.set_attr(layer, "alpha", 1.0)
        g.set_attr(layer, "beta", 1.0)
    b = a * b + c
    w_name = g.unique_name(graph, layer.input[1] + "_bnfold")
    b_name = g.unique_name(graph, (layer.name or layer.output[0]) + ".bias_bnfold")
    graph.initializer.extend([numpy_helper.from_array(w.astype(np.float32), w_name),
                              numpy_helper.from_array(b.astype(np.float32), b_name)])
    layer.input[1] = w_name
    if len(layer.input) > 2:
        layer.input[2] = b_name
    else:
        layer.input.append(b_name)
    return True


class FoldBatchNorm(Pass):
    """BN folding: exact, so folded and original ANNs agree to float rounding."""

    name = "fold-batchnorm"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        graph = model.graph
        folded = affine = 0
        inits = {t.name: t for t in graph.initializer}

        def value(name: str) -> np.ndarray | None:
            t = inits.get(name)
            return numpy_helper.to_array(t) if t is not None else g.const_value(graph, name)

        producers, consumers = g.producers(graph), g.consumers(graph)
        graph_outputs = {o.name for o in graph.output}
        for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
            params = _bn_params(value, bn)
            if params is None:
                continue
            a, c = params
            prod = producers.get(bn.input[0])
            users = consumers.get(bn.input[0], [])
            if (prod is not None and prod.op_type in ("Conv", "Gemm") and len(users) == 1
                    and bn.input[0] not in graph_outputs and _fold_into(graph, value, prod, a, c)):
                prod.output[0] = bn.output[0]
                producers[bn.output[0]] = prod
                graph.node.remove(bn)
                folded += 1
                continue
            rank = g.value_rank(model, bn.input[0]) or 4
            shape = g.channel_shape(rank, len(a))
            mul_c = g.unique_name(graph, f"{bn.name or bn.output[0]}.scale")
            add_c = g.unique_name(graph, f"{bn.name or bn.output[0]}.shift")
            g.set_initializer(graph, mul_c, a.reshape(shape).astype(np.float32))
            g.set_initializer(graph, add_c, c.reshape(shape).astype(np.float32))
            mid = g.unique_name(graph, bn.output[0] + "_scaled")
            idx = list(graph.node).index(bn)
            graph.node.remove(bn)
            graph.node.insert(idx, helper.make_node("Add", [mid, add_c], [bn.output[0]],
                                                    name=f"{bn.name}_shift"))
            graph.node.insert(idx, helper.make_node("Mul", [bn.input[0], mul_c], [mid],
                                                    name=f"{bn.name}_scale"))
            affine += 1
        g.remove_unused_initializers(graph)
        ctx.info(self.name, f"folded {folded} BatchNormalization node(s) into Conv/Gemm"
                 + (f", turned {affine} into per-channel affine ops" if affine else ""))
        return model
