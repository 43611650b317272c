"""Weighted synapses: Conv, Gemm, MatMul (constant weights feeding the next neurons)."""
from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .base import GraphView, OpEntry, Verdict, by_rank, explicit_pads, refuse, spatial_defaults, torch_pads
from .registry import register


def _weight_verdict(node: onnx.NodeProto, graph: GraphView) -> tuple[int, Verdict | None]:
    """Index of the weight operand, or a refusal when no operand is constant."""
    idx = 1
    if node.op_type == "MatMul" and graph.is_const(node.input[0]) and not graph.is_const(node.input[1]):
        idx = 0
    if not graph.is_const(node.input[idx]):
        return idx, refuse(f"{node.op_type} of two activations is a multiplicative interaction with no "
                           "spiking equivalent.", "the weight operand must be a constant.")
    return idx, None


def _conv_verdict(kind: str, w: np.ndarray | None, attrs: dict, channels: tuple[int, int] | None
                  ) -> Verdict:
    if w is None:
        return Verdict("synapse", f"{kind}convolution weights feeding the next neurons")
    kernel = "x".join(str(d) for d in w.shape[2:])
    strides = attrs.get("strides", [])
    stride = f", stride {'x'.join(map(str, strides))}" if any(v != 1 for v in strides) else ""
    return Verdict("synapse", f"{kind}{kernel} convolution, {channels[0]}->{channels[1]} channels{stride}: "
                              "weights feeding the next neurons")


class _Weighted(OpEntry):
    family = "linear"
    weighted = affine = ort_kernel = True


@register
class Conv(_Weighted):
    op_type = "Conv"
    event_driven = True

    def normalize(self, attrs: dict, nd: int) -> dict:
        out = spatial_defaults(attrs, nd)
        out.setdefault("group", 1)
        return out

    def verdict(self, node, attrs, graph):
        _, refused = _weight_verdict(node, graph)
        if refused:
            return refused
        w = graph.const_value(node.input[1])
        group = attrs.get("group", 1)
        kind = "depthwise " if group > 1 and w is not None and w.shape[1] == 1 else (
            f"grouped ({group}) " if group > 1 else "")
        return _conv_verdict(kind, w, attrs, None if w is None else (w.shape[1] * group, w.shape[0]))

    def kernel(self, attrs, x, w, b=None):
        nd = w.dim() - 2
        a = self.normalize(attrs, nd)
        pads = explicit_pads(a, list(x.shape[2:]), list(w.shape[2:]))
        if pads[:nd] == pads[nd:]:
            padding = list(pads[:nd])
        else:
            x = F.pad(x, torch_pads(pads, nd))
            padding = [0] * nd
        fn = by_rank({1: F.conv1d, 2: F.conv2d, 3: F.conv3d}, nd, "convolution")
        return fn(x, w, b, stride=a["strides"], padding=padding, dilation=a["dilations"], groups=a["group"])

    def events(self, attrs, inputs, consts):
        x = inputs[0]
        w = torch.as_tensor(consts[1] != 0, dtype=x.dtype)
        return self.kernel(attrs, x, w)


@register
class Gemm(_Weighted):
    op_type = "Gemm"
    event_driven = True

    def verdict(self, node, attrs, graph):
        return _dense_verdict(node, attrs, graph)

    def kernel(self, attrs, a, b, c=None):
        if attrs.get("transA", 0):
            a = a.t()
        if attrs.get("transB", 0):
            b = b.t()
        y = attrs.get("alpha", 1.0) * (a @ b)
        if c is not None:
            y = y + attrs.get("beta", 1.0) * c
        return y

    def events(self, attrs, inputs, consts):
        x = inputs[0]
        w = consts[1].T if attrs.get("transB", 0) else consts[1]
        return x @ torch.as_tensor(w != 0, dtype=x.dtype)


@register
class MatMul(_Weighted):
    op_type = "MatMul"
    event_driven = True
    bilinear = True

    def verdict(self, node, attrs, graph):
        return _dense_verdict(node, attrs, graph)

    def kernel(self, attrs, a, b):
        return a @ b

    def events(self, attrs, inputs, consts):
        if inputs[0] is None:  # constant @ activation
            x = inputs[1]
            return torch.as_tensor(consts[0] != 0, dtype=x.dtype) @ x
        x = inputs[0]
        return x @ torch.as_tensor(consts[1] != 0, dtype=x.dtype)


def _dense_verdict(node: onnx.NodeProto, attrs: dict, graph: GraphView) -> Verdict:
    idx, refused = _weight_verdict(node, graph)
    if refused:
        return refused
    w = graph.const_value(node.input[idx])
    if w is None or np.ndim(w) != 2:
        return Verdict("synapse", "dense weights feeding the next neurons")
    n_in, n_out = (w.shape[::-1] if attrs.get("transB", 0) else w.shape) if idx == 1 else w.shape[::-1]
    return Verdict("synapse", f"dense {n_in}->{n_out}: weights feeding the next neurons")


@register
class ConvTranspose(_Weighted):
    """Transposed convolution (a decoder's upsampling layer): every input spike stamps the kernel
    onto the output at stride spacing."""

    op_type = "ConvTranspose"

    def normalize(self, attrs: dict, nd: int) -> dict:
        out = spatial_defaults(attrs, nd)
        out.setdefault("group", 1)
        out.setdefault("output_padding", [0] * nd)
        return out

    def verdict(self, node, attrs, graph):
        _, refused = _weight_verdict(node, graph)
        if refused:
            return refused
        if attrs.get("output_shape") is not None or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return refuse("ConvTranspose with output_shape or auto_pad is not supported.",
                          "export it with explicit pads (and output_padding).")
        w = graph.const_value(node.input[1])
        group = attrs.get("group", 1)
        return _conv_verdict("transposed ", w, attrs, None if w is None else (w.shape[0], w.shape[1] * group))

    def kernel(self, attrs, x, w, b=None):
        nd = w.dim() - 2
        a = self.normalize(attrs, nd)
        pads = list(a["pads"])
        fn = by_rank({1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}, nd,
                     "transposed convolution")
        sym = pads[:nd] == pads[nd:]
        y = fn(x, w, b, stride=a["strides"], padding=pads[:nd] if sym else 0,
               output_padding=a["output_padding"], groups=a["group"], dilation=a["dilations"])
        if sym:
            return y
        index = [slice(None), slice(None)] + [slice(p0, y.shape[2 + i] - p1)
                                              for i, (p0, p1) in enumerate(zip(pads[:nd], pads[nd:]))]
        return y[tuple(index)]

    def events(self, attrs, inputs, consts):
        x = inputs[0]
        w = torch.as_tensor(consts[1] != 0, dtype=x.dtype)
        return self.kernel(attrs, x, w)

    def as_conv(self, attrs: dict, w: np.ndarray) -> tuple[dict, np.ndarray] | str:
        """The ordinary convolution computing the same thing (stride 1: a convolution with the
        kernel flipped and its channel axes swapped per group, padded k-1-p), or why there is none."""
        nd = w.ndim - 2
        a = self.normalize(attrs, nd)
        if any(s != 1 for s in a["strides"]) or any(d != 1 for d in a["dilations"]):
            return "a strided (upsampling) transposed convolution is not an ordinary convolution"
        if any(a["output_padding"]):
            return "output_padding is not supported"
        k = list(w.shape[2:])
        pads = list(a["pads"])
        if any(p > kk - 1 for p, kk in zip(pads, k + k)):
            return f"pads {pads} larger than kernel-1 crop the output"
        g = a["group"]
        cin = w.shape[0]
        flipped = np.flip(w, axis=tuple(range(2, w.ndim)))
        parts = [flipped[i * (cin // g):(i + 1) * (cin // g)].swapaxes(0, 1) for i in range(g)]
        conv_w = np.ascontiguousarray(np.concatenate(parts, axis=0))  # (Cout, Cin/g, k...)
        conv_pads = [kk - 1 - p for p, kk in zip(pads, k + k)]
        return {"pads": conv_pads, "strides": [1] * nd, "dilations": [1] * nd, "group": g}, conv_w
