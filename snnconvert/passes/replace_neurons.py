"""Replace ReLU and Clip(0, c) activations by IF/LIF neuron nodes of the spiking IR, and max-pools
fed by neurons by the IR's spiking max-pool.

A ReLU gets an open threshold (+inf) for the normalization pass to fill; a Clip(0, c)
(ReLU6, or a trained clip bound as in OPI/QCFS) keeps c as its threshold.
"""
from __future__ import annotations

import numpy as np
import onnx

from .. import graph as g
from .. import ir
from ..errors import UnsupportedModelError
from .base import Pass, PassContext


def _clip_bounds(graph: onnx.GraphProto, node: onnx.NodeProto) -> tuple[float | None, float | None]:
    if len(node.input) > 1:
        lo = g.const_value(graph, node.input[1]) if node.input[1] else None
        hi = g.const_value(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return (None if lo is None else float(lo)), (None if hi is None else float(hi))
    return g.attr(node, "min"), g.attr(node, "max")


class ReplaceNeurons(Pass):
    """ReLU/Clip → IF (leak = 0) or LIF (leak > 0), reset by subtraction by default."""

    name = "replace-neurons"

    def __init__(self, reset: str = "subtract", leak: float = 0.0) -> None:
        if reset not in ir.RESET_MODES:
            raise ValueError(f"reset must be one of {ir.RESET_MODES}")
        if not 0.0 <= leak < 1.0:
            raise ValueError("leak must be in [0, 1)")
        self.reset, self.leak = reset, leak

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        graph = model.graph
        ir.ensure_domain(model)
        count = {"Relu": 0, "Clip": 0}
        new_nodes = []
        for i, node in enumerate(graph.node):
            if node.op_type not in ("Relu", "Clip") or node.domain:
                new_nodes.append(node)
                continue
            threshold = np.inf
            if node.op_type == "Clip":
                lo, hi = _clip_bounds(graph, node)
                if lo is None or lo != 0.0:
                    raise UnsupportedModelError(
                        f"Clip with lower bound {lo} cannot become a spiking neuron",
                        node=node.name, op="Clip", hint="Only Clip(0, c) (ReLU6-like) converts.")
                threshold = np.inf if hi is None else hi
            name = node.name or f"{node.op_type}_{i}"
            neuron, inits = ir.make_neuron(g.unique_name(graph, f"{name}_if"), node.input[0],
                                           node.output[0], np.float32(threshold), np.float32(0.0),
                                           reset=self.reset, leak=self.leak)
            graph.initializer.extend(inits)
            new_nodes.append(neuron)
            count[node.op_type] += 1
        del graph.node[:]
        graph.node.extend(new_nodes)
        g.remove_unused_initializers(graph)
        pools = ir.spiking_max_pools(model)
        kind = "LIF" if self.leak else "IF"
        ctx.info(self.name, f"replaced {count['Relu']} ReLU and {count['Clip']} Clip node(s) by "
                 f"{kind} neurons (reset by {'subtraction' if self.reset == 'subtract' else 'zeroing'})"
                 + (f" and {len(pools)} MaxPool node(s) by spiking max-pools" if pools else ""))
        return model
