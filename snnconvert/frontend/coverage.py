"""Which ONNX nodes map to spiking neurons, synapses, pools or structure, and which cannot be converted."""
from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from ..errors import UnsupportedModelError
from ..graph import attrs as graph_attrs
from ..ops import STATUSES, GraphView, OpEntry, Verdict, lookup
from .loader import read_model

__all__ = ["STATUSES", "NodeMapping", "check_supported", "coverage"]


@dataclass
class NodeMapping:
    """How one ONNX node maps onto the spiking network (``status`` is one of STATUSES)."""

    name: str
    op_type: str
    status: str
    detail: str

    @property
    def node(self) -> str:
        """Alias of ``name`` (the node's name in the normalized graph)."""
        return self.name


def coverage(model: onnx.ModelProto | str | os.PathLike) -> list[NodeMapping]:
    """Classify every node of ``model`` (raw or returned by load_model), in graph order."""
    if not isinstance(model, onnx.ModelProto):
        model = read_model(model)
    return _Classifier(model).run()


def check_supported(model: onnx.ModelProto | str | os.PathLike) -> list[NodeMapping]:
    """Return the coverage, or raise UnsupportedModelError naming every unsupported node and a hint."""
    if not isinstance(model, onnx.ModelProto):
        model = read_model(model)
    mapping = coverage(model)
    problems = [(m.name, m.op_type, m.detail) for m in mapping if m.status == "unsupported"]
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1:
        problems.insert(0, ("<graph>", "Input",
                            f"the graph has {len(inputs)} inputs ({', '.join(inputs) or 'none'}); exactly "
                            "one is supported. Hint: merge the inputs or export a single-input model."))
    if len(problems) == 1:
        name, op, reason = problems[0]
        if name == "<graph>":
            raise UnsupportedModelError(reason, problems=problems)
        raise UnsupportedModelError(reason, node=name, op=op, problems=problems)
    if problems:
        lines = [f"node '{n}' ({op}): {reason}" for n, op, reason in problems]
        raise UnsupportedModelError(
            f"{len(problems)} unsupported node(s) in the model: " + " | ".join(lines), problems=problems)
    return mapping


class _Classifier(GraphView):
    """One pass over a topologically sorted graph, asking each node's registry entry."""

    def run(self) -> list[NodeMapping]:
        result = []
        for k, node in enumerate(self.nodes):
            name = node.name or f"{node.op_type}_{k}"
            verdict = self.classify(node)
            if verdict.status == "structural" and verdict.detail.startswith("constant"):
                self.consts.update(node.output)
            result.append(NodeMapping(name, node.op_type, verdict.status, verdict.detail))
        return result

    def classify(self, node: onnx.NodeProto) -> Verdict:
        entry = lookup(node)
        if not self.data_inputs(node):
            return Verdict("structural", "constant expression; load_model folds it into an initializer")
        if entry is None:
            return OpEntry().verdict(node, {}, self)
        return entry.verdict(node, graph_attrs(node), self)
