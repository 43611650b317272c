"""What one registry entry owns, and the read-only view of a graph its coverage verdict sees.

An :class:`OpEntry` describes one ONNX (or spiking-IR) op type: its attribute normalization
(defaults filled, pads explicit), its coverage verdict with a hint, its torch kernel (dim 0 is
always the time x batch axis), its shape rule, and its synaptic-event rule (events pushed
through the op with every weight set to 1: fan-outs for synapse and SOP counts). Coverage,
the runtime, the report and the profiles read these and keep no op list of their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ..graph import attrs as node_attrs
from ..graph import constant_value, is_constant

STATUSES = ("neuron", "synapse", "pool", "structural", "absorbed", "dropped", "unsupported")


@dataclass(frozen=True)
class Verdict:
    """How one node maps (``status`` in STATUSES); ``detail`` says what it becomes or, when
    unsupported, why not followed by ``Hint: ...``."""

    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != "unsupported"


def refuse(reason: str, hint: str) -> Verdict:
    return Verdict("unsupported", f"{reason} Hint: {hint}")


class GraphView:
    """Constants, producers and consumers of a graph, tracked in one topological pass."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.values = {t.name: t for t in graph.initializer}
        self.consts = set(self.values)
        self.outputs = {o.name for o in graph.output}
        self.inputs = {vi.name for vi in graph.input} - self.consts
        self.nodes = list(graph.node)
        self.users: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in self.nodes:
            for t in node.input:
                self.users.setdefault(t, []).append(node)
            for t in node.output:
                self.producer[t] = node
        self.input_chain = set(self.inputs)  # tensors computed from the input by constant affine ops
        self.shapes: dict[str, tuple[int, ...]] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims[1:]):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in dims[1:])

    def is_const(self, name: str) -> bool:
        return name == "" or name in self.consts

    def const_value(self, name: str) -> np.ndarray | None:
        if name in self.values:
            return numpy_helper.to_array(self.values[name])
        node = self.producer.get(name)
        if node is not None and is_constant(node):
            return constant_value(node)
        return None

    def data_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [t for t in node.input if t and not self.is_const(t)]

    def shape(self, name: str) -> tuple[int, ...] | None:
        """Per-sample static shape of ``name`` (batch axis excluded), when shape inference knew it."""
        return self.shapes.get(name)


class OpEntry:
    """One op type. Subclasses set ``op_type`` (and ``domain`` for IR ops) and override what
    applies; the defaults describe an op the converter does not know how to run."""

    op_type: str = ""
    domain: str = ""
    family: str = ""
    affine: bool = False
    """Linear in its (single) activation input given constant other inputs: commutes with the
    mean over time, so the runtime may run it once on time-averaged values after the last neurons."""
    bilinear: bool = False
    """Affine only while every operand but one is constant (Mul, Div, MatMul)."""
    weighted: bool = False
    """Carries weights (its connections are the ANN's MACs)."""
    ort_kernel: bool = False
    """onnxruntime runs it faster than torch on CPUs during inference."""
    stateful: bool = False
    """Keeps state across time steps (its kernel is ``step``, not ``kernel``)."""
    passthrough: bool = False
    """Forwards its first input unchanged at inference."""
    reshaping: bool = False
    """Only reshapes (the values and their order stay)."""
    event_driven: bool = False
    """On spiking input with constant weights, the runtime can run it event by event (scatter the
    weights of the inputs that fired: :mod:`snnconvert.runtime.event_kernels`)."""

    def normalize(self, attrs: dict, nd: int) -> dict:
        """Attributes with ONNX defaults filled in for ``nd`` spatial axes."""
        return dict(attrs)

    def attrs(self, node: onnx.NodeProto, nd: int = 0) -> dict:
        return self.normalize(node_attrs(node), nd)

    def verdict(self, node: onnx.NodeProto, attrs: dict, graph: GraphView) -> Verdict:
        return refuse(f"operator {node.op_type} has no spiking mapping in snnconvert.",
                      "remove it or replace it by supported operators (Conv, Gemm, ReLU, pooling, "
                      "Add, Concat).")

    def kernel(self, attrs: dict, *inputs: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{self.op_type} has no torch kernel")

    def events(self, attrs: dict, inputs: list[torch.Tensor | None], consts: list[np.ndarray | None]
               ) -> torch.Tensor:
        """Events at the output given events at the activation inputs (weights counted as 1)."""
        return self.kernel(attrs, *[x if x is not None else (None if c is None else torch.as_tensor(c))
                                    for x, c in zip(inputs, consts)])

    def shape(self, attrs: dict, shapes: list[tuple[int, ...] | None],
              consts: list[np.ndarray | None]) -> tuple[int, ...]:
        """Per-sample output shape, by running the kernel on one zero sample (a kernel's shape
        logic is the op's shape rule; entries override this where that is not enough)."""
        args = []
        for s, c in zip(shapes, consts):
            if c is not None:
                args.append(torch.as_tensor(np.array(c)))
            elif s is not None:
                args.append(torch.zeros((1, *s)))
            else:
                args.append(None)
        with torch.no_grad():
            out = self.kernel(attrs, *args)
        return tuple(out.shape[1:])

    @property
    def has_kernel(self) -> bool:
        return type(self).kernel is not OpEntry.kernel or type(self).step is not OpEntry.step

    def step(self, attrs: dict, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Stateful ops: outputs for a chunk ``x`` [T, B, ...] and the state after it."""
        raise NotImplementedError


# ------------------------------------------------------------------ shared attribute helpers

def spatial_defaults(attrs: dict, nd: int, kernel: list[int] | None = None) -> dict:
    """Conv/pool attributes with strides, dilations and pads filled for ``nd`` spatial axes."""
    out = dict(attrs)
    out.setdefault("strides", [1] * nd)
    out.setdefault("dilations", [1] * nd)
    if out.get("auto_pad", "NOTSET") in ("NOTSET", "", "VALID"):
        out["pads"] = list(out.get("pads", [0] * 2 * nd)) if out.get("auto_pad", "NOTSET") != "VALID" \
            else [0] * 2 * nd
        out["auto_pad"] = "NOTSET"
    if kernel is not None:
        out.setdefault("kernel_shape", list(kernel))
    return out


def torch_pads(pads: list[int], nd: int) -> list[int]:
    """ONNX pads [b1..bn, e1..en] -> F.pad order (last axis first)."""
    begins, ends = pads[:nd], pads[nd:]
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [int(b), int(e)]
    return out


def explicit_pads(attrs: dict, spatial: list[int], kernel: list[int]) -> list[int]:
    """Explicit ONNX pads for ``attrs`` (resolving auto_pad SAME_UPPER/SAME_LOWER/VALID)."""
    nd = len(kernel)
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * 2 * nd))
    if mode == "VALID":
        return [0] * 2 * nd
    strides = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    begin, end = [], []
    for size, k, st, d in zip(spatial, kernel, strides, dil):
        total = max(0, (math.ceil(size / st) - 1) * st + (k - 1) * d + 1 - size)
        small = total // 2
        begin.append(total - small if mode == "SAME_LOWER" else small)
        end.append(total - begin[-1])
    return begin + end


def by_rank(fns: dict[int, Callable], nd: int, what: str) -> Callable:
    if nd not in fns:
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError(f"{what} over {nd} spatial axes is not supported",
                                    hint="Use 1-D, 2-D or 3-D data.")
    return fns[nd]


def window_sum(x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int],
               ceil_mode: bool = False) -> torch.Tensor:
    """Sum over each pooling window (padding contributes 0), for 1-3 spatial axes."""
    nd = len(kernel)
    if nd == 1:  # as 2-D with a unit axis (avg_pool1d has no divisor_override)
        y = window_sum(x.unsqueeze(-1), [kernel[0], 1], [strides[0], 1],
                       [pads[0], 0, pads[1], 0], ceil_mode)
        return y.squeeze(-1)
    fn = by_rank({2: F.avg_pool2d, 3: F.avg_pool3d}, nd, "pooling")
    x = F.pad(x, torch_pads(pads, nd)) if any(pads) else x
    return fn(x, list(kernel), list(strides), 0, ceil_mode=ceil_mode, divisor_override=1)
