"""Elementwise arithmetic on currents: sums of activations, scaling and shifting by constants,
and BatchNormalization (a per-channel scale and shift)."""
from __future__ import annotations

import torch

from .base import GraphView, OpEntry, Verdict, refuse
from .registry import register


def _first(inputs):
    return next(v for v in inputs if v is not None)


class _Elementwise(OpEntry):
    family = "arithmetic"
    affine = True

    def verdict(self, node, attrs, graph: GraphView):
        op = node.op_type
        data = graph.data_inputs(node)
        if len(data) == 2:
            if op in ("Add", "Sub"):
                return Verdict("synapse", "sum of input currents")
            return refuse(f"{op} of two activations is a multiplicative interaction with no spiking "
                          "equivalent.", "one operand must be a constant.")
        if op == "Div" and data[0] != node.input[0]:
            return refuse("dividing a constant by an activation has no spiking equivalent.",
                          "divide by a constant only.")
        if data[0] in graph.input_chain:
            graph.input_chain.update(node.output)
            return Verdict("absorbed", "input normalization: load_model folds it into the first "
                                       "Conv/Gemm when exact; otherwise it is computed once (time-invariant)")
        if op in ("Mul", "Div"):
            return Verdict("synapse", "scaling of the input current by a constant")
        return Verdict("synapse", "constant current added to the input current")

    def events(self, attrs, inputs, consts):
        return _first(inputs)


@register
class Add(_Elementwise):
    op_type = "Add"

    def kernel(self, attrs, a, b):
        return a + b

    def events(self, attrs, inputs, consts):
        return _sum([v for v in inputs if v is not None])


@register
class Sub(_Elementwise):
    op_type = "Sub"

    def kernel(self, attrs, a, b):
        return a - b

    def events(self, attrs, inputs, consts):
        return _sum([v for v in inputs if v is not None])


@register
class Mul(_Elementwise):
    op_type = "Mul"
    bilinear = True

    def kernel(self, attrs, a, b):
        return a * b


@register
class Div(_Elementwise):
    op_type = "Div"
    bilinear = True

    def kernel(self, attrs, a, b):
        return a / b


def _sum(xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


@register
class Sum(OpEntry):
    op_type = "Sum"
    family = "arithmetic"
    affine = True

    def verdict(self, node, attrs, graph):
        return Verdict("synapse", "sum of input currents")

    def kernel(self, attrs, *xs):
        return _sum(xs)

    def events(self, attrs, inputs, consts):
        return _sum([v for v in inputs if v is not None])


@register
class BatchNormalization(OpEntry):
    op_type = "BatchNormalization"
    family = "arithmetic"
    affine = True

    def verdict(self, node, attrs, graph: GraphView):
        src = graph.producer.get(node.input[0])
        if src is not None and src.op_type in ("Conv", "Gemm") and len(graph.users[node.input[0]]) == 1:
            return Verdict("absorbed", f"folded into the preceding {src.op_type} '{src.name}'")
        return Verdict("synapse", "per-channel scale and bias applied to the input current")

    def kernel(self, attrs, x, scale, bias, mean, var):
        shape = [1, -1] + [1] * (x.dim() - 2)
        inv = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
        return x * inv.view(shape) + (bias - mean * inv).view(shape)

    def events(self, attrs, inputs, consts):
        return inputs[0]
