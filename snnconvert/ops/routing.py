"""Routing: ops that move, copy, select or pad values without computing (shape ops, Concat,
Pad, Slice, nearest-neighbour Resize). Dim 0 is the (time x batch) axis and never moves."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError
from .base import OpEntry, Verdict, refuse, torch_pads
from .registry import register

SLICE_HINT = ("reverse the axis in the weights instead (e.g. flip the next layer's kernel), "
              "or slice with a positive step.")


class _Routing(OpEntry):
    family = "routing"
    affine = True
    detail = "routing"

    def verdict(self, node, attrs, graph):
        return Verdict("structural", self.detail)


@register
class Flatten(_Routing):
    op_type = "Flatten"
    detail = "reshape (routing)"
    reshaping = True

    def kernel(self, attrs, x):
        axis = attrs.get("axis", 1)
        if axis == 0:
            return x.reshape(1, -1)
        return x.reshape(*x.shape[:axis], -1) if axis > 1 else x.reshape(x.shape[0], -1)


@register
class Reshape(_Routing):
    op_type = "Reshape"
    detail = "reshape (routing)"
    reshaping = True

    def kernel(self, attrs, x, shape):
        dims = [int(d) for d in shape.tolist()]
        out = [x.shape[0]]
        for i, d in enumerate(dims[1:], start=1):
            out.append(x.shape[i] if d == 0 and not attrs.get("allowzero", 0) else d)
        return x.reshape(out)


def _axes(attrs: dict, extra: torch.Tensor | None) -> list[int]:
    if extra is not None:
        return [int(a) for a in extra.tolist()]
    return list(attrs.get("axes", []))


@register
class Squeeze(_Routing):
    op_type = "Squeeze"
    detail = "reshape (routing)"
    reshaping = True

    def kernel(self, attrs, x, axes=None):
        ax = _axes(attrs, axes)
        if not ax:
            ax = [i for i in range(1, x.dim()) if x.shape[i] == 1]
        for a in sorted((a % x.dim() for a in ax), reverse=True):
            x = x.squeeze(a)
        return x


@register
class Unsqueeze(_Routing):
    op_type = "Unsqueeze"
    detail = "reshape (routing)"
    reshaping = True

    def kernel(self, attrs, x, axes=None):
        ax = _axes(attrs, axes)
        rank = x.dim() + len(ax)
        for a in sorted(a % rank for a in ax):
            x = x.unsqueeze(a)
        return x


@register
class Transpose(_Routing):
    op_type = "Transpose"
    detail = "permutation (routing)"

    def kernel(self, attrs, x):
        perm = attrs.get("perm", list(reversed(range(x.dim()))))
        return x.permute(*perm)


@register
class Concat(_Routing):
    op_type = "Concat"
    detail = "concatenation (routing, no computation)"

    def kernel(self, attrs, *xs):
        return torch.cat(xs, dim=attrs["axis"])

    def events(self, attrs, inputs, consts):
        return torch.cat([v for v in inputs if v is not None], dim=int(attrs["axis"]))


@register
class Pad(_Routing):
    op_type = "Pad"

    def verdict(self, node, attrs, graph):
        mode = attrs.get("mode", "constant")
        if mode != "constant":
            return refuse(f"Pad mode '{mode}' is not supported.",
                          "use zero padding (mode 'constant', value 0).")
        if len(node.input) > 1 and not graph.is_const(node.input[1]):
            return refuse("Pad with run-time pads is not supported.", "use constant pads.")
        value = attrs.get("value", 0.0)
        if len(node.input) > 2 and node.input[2]:
            v = graph.const_value(node.input[2])
            value = np.nan if v is None else float(np.asarray(v).reshape(-1)[0])
        if value != 0.0:
            return refuse(f"Pad with value {value:g} is not supported (a constant input current).",
                          "use zero padding.")
        return Verdict("structural", "zero padding (routing)")

    def kernel(self, attrs, x, pads=None, value=None, axes=None):
        p = [int(v) for v in (pads.tolist() if pads is not None else attrs["pads"])]
        nd = len(p) // 2
        if axes is not None:
            full = [0] * (2 * x.dim())
            for i, a in enumerate(int(a) % x.dim() for a in axes.tolist()):
                full[a], full[a + x.dim()] = p[i], p[i + nd]
            p, nd = full, x.dim()
        fill = float(value.item()) if value is not None and value.numel() else attrs.get("value", 0.0)
        return F.pad(x, torch_pads(p, nd), value=fill)


@register
class Slice(_Routing):
    op_type = "Slice"
    detail = "slice (routing)"

    def verdict(self, node, attrs, graph):
        if any(name and not graph.is_const(name) for name in node.input[1:]):
            return refuse("Slice with run-time starts/ends/axes/steps is not supported.",
                          "export the slice with constant bounds.")
        steps = graph.const_value(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if steps is not None and np.any(np.asarray(steps) <= 0):
            return refuse(f"Slice steps {np.asarray(steps).tolist()} reverse an axis, which is not "
                          "supported (only forward slices).", SLICE_HINT)
        return Verdict("structural", self.detail)

    def kernel(self, attrs, x, starts, ends, axes=None, steps=None):
        st, en = starts.tolist(), ends.tolist()
        ax = axes.tolist() if axes is not None else list(range(len(st)))
        sp = steps.tolist() if steps is not None else [1] * len(st)
        index: list[slice] = [slice(None)] * x.dim()
        for s, e, a, k in zip(st, en, ax, sp):
            a = int(a) % x.dim()
            n = x.shape[a]
            if k <= 0:
                raise UnsupportedModelError(f"Slice step {k} is not supported (only forward slices).",
                                            hint=SLICE_HINT[0].upper() + SLICE_HINT[1:])
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            index[a] = slice(s, e, int(k))
        return x[tuple(index)]


COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners",
                    "tf_half_pixel_for_nn")


def _nearest_index(size_in: int, size_out: int, scale: float, mode: str, rounding: str) -> torch.Tensor:
    """Source index of every output position along one axis (ONNX Resize, mode nearest)."""
    o = torch.arange(size_out, dtype=torch.float64)
    if mode == "align_corners":
        x = o * (size_in - 1) / (size_out - 1) if size_out > 1 else torch.zeros_like(o)
    elif mode == "asymmetric":
        x = o / scale
    elif mode == "tf_half_pixel_for_nn":
        x = (o + 0.5) / scale
    elif mode == "pytorch_half_pixel" and size_out == 1:
        x = torch.zeros_like(o)
    elif mode in ("half_pixel", "pytorch_half_pixel"):
        x = (o + 0.5) / scale - 0.5
    else:
        raise UnsupportedModelError(f"Resize coordinate_transformation_mode '{mode}' is not supported.",
                                    hint=f"Export Resize with one of {', '.join(COORDINATE_MODES)}.")
    if rounding == "floor":
        i = torch.floor(x)
    elif rounding == "ceil":
        i = torch.ceil(x)
    elif rounding == "round_prefer_ceil":
        i = torch.floor(x + 0.5)
    else:
        i = torch.ceil(x - 0.5)
    return i.clamp(0, size_in - 1).long()


def resize_nearest(attrs: dict, x: torch.Tensor, scales: torch.Tensor | None,
                   sizes: torch.Tensor | None) -> torch.Tensor:
    mode = attrs.get("coordinate_transformation_mode", "half_pixel")
    rounding = attrs.get("nearest_mode", "round_prefer_floor")
    if sizes is not None and sizes.numel():
        outs = [int(v) for v in sizes.tolist()]
        factors = [o / i for o, i in zip(outs, x.shape)]
    else:
        factors = [float(v) for v in scales.tolist()]
        outs = [int(math.floor(i * f)) for i, f in zip(x.shape, factors)]
    for axis in range(1, x.dim()):
        if outs[axis] == x.shape[axis] and factors[axis] == 1.0:
            continue
        index = _nearest_index(x.shape[axis], outs[axis], factors[axis], mode, rounding).to(x.device)
        x = x.index_select(axis, index)
    return x


def _resize_verdict(attrs: dict) -> Verdict:
    mode = attrs.get("mode", "nearest")
    if mode != "nearest":
        return refuse(f"Resize mode '{mode}' interpolates between neurons.",
                      "use mode 'nearest' (e.g. nn.Upsample(mode='nearest')).")
    coord = attrs.get("coordinate_transformation_mode", "half_pixel")
    if coord not in COORDINATE_MODES:
        return refuse(f"Resize coordinate_transformation_mode '{coord}' is not supported.",
                      f"export Resize with one of {', '.join(COORDINATE_MODES)}.")
    return Verdict("structural", "nearest-neighbour upsampling (routing)")


@register
class Resize(_Routing):
    op_type = "Resize"

    def verdict(self, node, attrs, graph):
        return _resize_verdict(attrs)

    def kernel(self, attrs, x, roi=None, scales=None, sizes=None):
        return resize_nearest(attrs, x, scales, sizes)


@register
class Upsample(_Routing):
    op_type = "Upsample"

    def verdict(self, node, attrs, graph):
        return _resize_verdict({"mode": attrs.get("mode", "nearest"),
                                "coordinate_transformation_mode": "asymmetric"})

    def kernel(self, attrs, x, scales=None):
        sc = scales if scales is not None else torch.tensor(attrs["scales"])
        return resize_nearest({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
                              x, sc, None)
