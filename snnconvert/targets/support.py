"""What a target can hold, asked before any compile: each target declares ``supports(node, graph)
-> Verdict`` (in its ``support.py``, a table keyed by op type); this module runs that
declaration over a graph, for ``inspect --target`` and for ``convert --target`` to refuse up
front with the same one-line reasons."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from ..errors import TargetError
from ..graph import attrs as node_attrs
from ..ops import GraphView, Verdict, lookup, refuse

Check = Callable[[onnx.NodeProto, dict, GraphView], Verdict]
SKIPPED = ("absorbed", "dropped")


def holds(detail: str) -> Verdict:
    return Verdict("supported", detail)


def approximates(detail: str) -> Verdict:
    return Verdict("approximated", detail)


def declared(table: dict[str, Check], target: str, refused: dict[str, tuple[str, str]] | None = None
             ) -> Callable[[onnx.NodeProto, GraphView], Verdict]:
    """``supports(node, graph)`` of a target whose op table is ``table`` (op type -> check);
    ``refused``: op type -> (reason, hint) for ops it knows it cannot hold."""
    def supports(node: onnx.NodeProto, graph: GraphView) -> Verdict:
        check = table.get(node.op_type)
        if node.op_type in (refused or {}):
            return refuse(*refused[node.op_type])
        if check is None:
            return refuse(f"the {target} target cannot hold {node.op_type}.",
                          f"rewrite the layer with ops the {target} target holds ('snnconvert "
                          f"inspect MODEL --target {target}' lists them per node), or use the torch target.")
        return check(node, node_attrs(node), graph)
    return supports


@dataclass
class NodeSupport:
    """One node's verdict on one target."""

    name: str
    op_type: str
    verdict: Verdict


Supports = Callable[[onnx.NodeProto, GraphView], Verdict]


def target_support(model: onnx.ModelProto, supports: Supports,
                   statuses: dict[str, str] | None = None) -> list[NodeSupport]:
    """The target's verdict on every node of ``model`` (an ANN after load_model, or an IR).

    ``statuses``: node -> coverage status; nodes the conversion removes (absorbed, dropped,
    constant) are not asked."""
    graph = GraphView(model)
    out = []
    for k, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{k}"
        status = (statuses or {}).get(name)
        if status in SKIPPED or not graph.data_inputs(node):
            continue
        out.append(NodeSupport(name, node.op_type, supports(node, graph)))
    return out


def refuse_unsupported(model: onnx.ModelProto, supports: Supports, target: str,
                       statuses: dict[str, str] | None = None) -> list[NodeSupport]:
    """Raise a TargetError naming every node the target cannot hold; return the verdicts."""
    found = target_support(model, supports, statuses)
    bad = [s for s in found if not s.verdict.ok]
    if len(bad) == 1:
        reason, _, hint = bad[0].verdict.detail.partition(" Hint: ")
        raise TargetError(reason, node=bad[0].name, op=bad[0].op_type,
                          hint=hint[:1].upper() + hint[1:] if hint else None)
    if bad:
        raise TargetError(f"{len(bad)} node(s) the {target} target cannot hold: " + " | ".join(
            f"node '{s.name}' ({s.op_type}): {s.verdict.detail}" for s in bad))
    return found


# ------------------------------------------------------------- checks shared by declarations

def constant_input(node: onnx.NodeProto, graph: GraphView, index: int) -> np.ndarray | None:
    return graph.const_value(node.input[index]) if len(node.input) > index and node.input[index] else None


def symmetric(pads: list[int]) -> bool:
    half = len(pads) // 2
    return list(pads[:half]) == list(pads[half:])


def conv2d_problem(node: onnx.NodeProto, a: dict, graph: GraphView, layer: str
                   ) -> Verdict | None:
    """Why a Conv or ConvTranspose node cannot become one 2-D convolution layer with symmetric
    padding (``layer`` names it: "Lava Conv", "NIR Conv2d"), or None when it can. A stride-1
    ConvTranspose is the registry entry's equivalent convolution."""
    w = constant_input(node, graph, 1)
    entry = lookup(node)
    kind = "transposed convolutions" if hasattr(entry, "as_conv") else "convolutions"
    if w is None or w.ndim != 4:
        return refuse(f"only 2-D {kind} with constant weights map to {layer}.",
                      "use 2-D layers, or the torch target.")
    if hasattr(entry, "as_conv"):
        equivalent = entry.as_conv(a, w)
        if isinstance(equivalent, str):
            return refuse(f"{equivalent}; {layer} cannot upsample.", "use stride 1, or the torch target.")
        a = equivalent[0]
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return refuse(f"auto_pad={a['auto_pad']} is not supported.", "export with explicit pads.")
    if not symmetric(a.get("pads", [0, 0, 0, 0])):
        return refuse(f"asymmetric padding {list(a['pads'])} is not expressible in {layer}.",
                      "use symmetric padding (e.g. padding=k//2 with stride 1).")
    return None


def spatial_rank(node: onnx.NodeProto, graph: GraphView) -> int | None:
    shape = graph.shape(node.input[0])
    return None if shape is None else len(shape) - 1
