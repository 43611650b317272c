"""IR pass: every dense synapse (Gemm, or MatMul with a constant right operand, on flat
activations) becomes a :data:`~snnconvert.ir.DELAY_DENSE` synapse with one integer delay per
connection in [0, D]: zero (the same network), or drawn uniformly as DCLS initialises its
positions (the delays fine-tuning then learns, or the fixed random-delay ablation keeps)."""
from __future__ import annotations

import numpy as np
import onnx

from .. import ir
from ..errors import OptionError
from ..graph import attrs as node_attrs
from ..ops import tensor_shapes
from .base import Pass, PassContext

DELAY_INITS = ("uniform", "zero")


def dense_parts(node: onnx.NodeProto, consts: dict[str, np.ndarray], in_rank: int | None
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(weights [out, in], bias [out]) of a dense node ``x @ W (+ C)`` on flat ``x``, or None
    when ``node`` is not one (activation right operand, transA, a multi-axis input)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gemm", "MatMul") or in_rank != 1:
        return None
    a = node_attrs(node)
    w = consts.get(node.input[1])
    if w is None or w.ndim != 2 or a.get("transA", 0):
        return None
    if node.op_type == "MatMul":
        return w.T.astype(np.float32), np.zeros(w.shape[1], np.float32)
    w = float(a.get("alpha", 1.0)) * (w if a.get("transB", 0) else w.T)
    c = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and c is None:
        return None
    bias = np.zeros(w.shape[0]) if c is None else np.broadcast_to(
        float(a.get("beta", 1.0)) * np.asarray(c, np.float64).reshape(-1), (w.shape[0],))
    return w.astype(np.float32), np.asarray(bias, np.float32)


def add_delays(model: onnx.ModelProto, max_delay: int, init: str = "uniform", seed: int = 0
               ) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of the IR ``model`` with its dense synapses as DelayDense (``max_delay`` D);
    returns it and the names of the rewritten nodes (existing DelayDense nodes are kept)."""
    if max_delay < 1:
        raise OptionError(f"the maximum delay must be at least 1 step, got {max_delay}")
    if init not in DELAY_INITS:
        raise OptionError(f"unknown delay initialisation '{init}'", hint=f"Use one of: {', '.join(DELAY_INITS)}.")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    shapes = tensor_shapes(out)
    rng = np.random.default_rng(seed)
    nodes, inits, done = [], [], []
    for k, node in enumerate(out.graph.node):
        shape = shapes.get(node.input[0]) if node.input else None
        parts = dense_parts(node, consts, None if shape is None else len(shape))
        if parts is None:
            kept = onnx.NodeProto()
            kept.CopyFrom(node)
            nodes.append(kept)
            continue
        w, b = parts
        delays = (np.zeros(w.shape, np.int64) if init == "zero"
                  else rng.integers(0, max_delay + 1, size=w.shape))
        name = node.name or f"{node.op_type}_{k}"
        new, new_inits = ir.make_delay_dense(name, node.input[0], node.output[0], w, delays, b,
                                             max_delay=max_delay)
        nodes.append(new)
        inits += new_inits
        done.append(name)
    if not done:
        return out, done
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    used = {i for n in out.graph.node for i in n.input}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    ir.ensure_domain(out)
    return out, done


class AddDelays(Pass):
    """Dense synapses -> DelayDense with delays in [0, ``max_delay``] (see module doc)."""

    name = "add-delays"

    def __init__(self, max_delay: int, init: str = "uniform", seed: int = 0) -> None:
        self.max_delay, self.init, self.seed = max_delay, init, seed

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        out, done = add_delays(model, self.max_delay, self.init, self.seed)
        ctx.info(self.name, f"{len(done)} dense synapse(s) with delays 0..{self.max_delay} ({self.init})")
        return out
