"""What the torch target holds: every op the registry gives a torch kernel (the runtime runs the
registry's kernels), under the registry's own verdict."""
from __future__ import annotations

import onnx

from ...ops import GraphView, Verdict, lookup, refuse
from ...graph import attrs as node_attrs
from ..support import holds


def supports(node: onnx.NodeProto, graph: GraphView) -> Verdict:
    entry = lookup(node)
    if entry is None or not entry.has_kernel:
        return refuse(f"the torch target has no kernel for {node.op_type}.",
                      "run 'snnconvert inspect' for what converts.")
    verdict = entry.verdict(node, node_attrs(node), graph)
    return verdict if not verdict.ok else holds(verdict.detail)
