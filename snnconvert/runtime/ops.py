"""Torch implementations of the stateless ONNX ops the runtime executes at every time step.

Each function takes the node's attributes (a dict) and its input tensors, in ONNX order,
and returns one tensor. Dim 0 is always the (time x batch) axis; ops that would move it
are refused by the front-end.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError

OpFn = Callable[..., torch.Tensor]
SLICE_HINT = ("Reverse the axis in the weights instead (e.g. flip the next layer's kernel), "
              "or slice with a positive step.")


def _pads_2d(pads: list[int], nd: int) -> list[int]:
    """ONNX pads [b1..bn, e1..en] -> F.pad order (last axis first)."""
    begins, ends = pads[:nd], pads[nd:]
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return out


def _auto_pads(attrs: dict, spatial: list[int], kernel: list[int]) -> list[int]:
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


def conv(attrs: dict, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    nd = w.dim() - 2
    strides = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    pads = _auto_pads(attrs, list(x.shape[2:]), list(w.shape[2:]))
    group = attrs.get("group", 1)
    if pads[:nd] == pads[nd:]:
        padding = list(pads[:nd])
    else:
        x = F.pad(x, _pads_2d(pads, nd))
        padding = [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, stride=strides, padding=padding, dilation=dil, groups=group)


def gemm(attrs: dict, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    y = attrs.get("alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + attrs.get("beta", 1.0) * c
    return y


def matmul(attrs: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def _pool_args(attrs: dict, x: torch.Tensor) -> tuple[list[int], list[int], list[int], bool]:
    k = list(attrs["kernel_shape"])
    s = attrs.get("strides", [1] * len(k))
    return k, s, _auto_pads(attrs, list(x.shape[2:]), k), bool(attrs.get("ceil_mode", 0))


def average_pool(attrs: dict, x: torch.Tensor) -> torch.Tensor:
    nd = x.dim() - 2
    k, s, pads, ceil = _pool_args(attrs, x)
    include_pad = bool(attrs.get("count_include_pad", 0))
    sym = pads[:nd] == pads[nd:] and all(p <= kk // 2 for p, kk in zip(pads[:nd], k))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    if sym:
        return fn(x, k, s, pads[:nd], ceil_mode=ceil, count_include_pad=include_pad)
    xp = F.pad(x, _pads_2d(pads, nd))
    if include_pad or not any(pads):
        return fn(xp, k, s, 0, ceil_mode=ceil)
    ones = F.pad(torch.ones_like(x[:1, :1]), _pads_2d(pads, nd))
    return fn(xp, k, s, 0, ceil_mode=ceil) / fn(ones, k, s, 0, ceil_mode=ceil)


def max_pool(attrs: dict, x: torch.Tensor) -> torch.Tensor:
    nd = x.dim() - 2
    k, s, pads, ceil = _pool_args(attrs, x)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    if pads[:nd] == pads[nd:] and all(p <= kk // 2 for p, kk in zip(pads[:nd], k)):
        return fn(x, k, s, pads[:nd], ceil_mode=ceil)
    return fn(F.pad(x, _pads_2d(pads, nd), value=-math.inf), k, s, 0, ceil_mode=ceil)


def global_average_pool(attrs: dict, x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def global_max_pool(attrs: dict, x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def batch_norm(attrs: dict, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
               mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
    return x * inv.view(shape) + (bias - mean * inv).view(shape)


def flatten(attrs: dict, x: torch.Tensor) -> torch.Tensor:
    axis = attrs.get("axis", 1)
    if axis == 0:
        return x.reshape(1, -1)
    return x.reshape(*x.shape[:axis], -1) if axis > 1 else x.reshape(x.shape[0], -1)


def reshape(attrs: dict, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = [int(d) for d in shape.tolist()]
    out = [x.shape[0]]
    for i, d in enumerate(dims[1:], start=1):
        out.append(x.shape[i] if d == 0 and not attrs.get("allowzero", 0) else d)
    return x.reshape(out)


def _axes(attrs: dict, extra: torch.Tensor | None) -> list[int]:
    if extra is not None:
        return [int(a) for a in extra.tolist()]
    return list(attrs.get("axes", []))


def squeeze(attrs: dict, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = _axes(attrs, axes)
    if not ax:
        ax = [i for i in range(1, x.dim()) if x.shape[i] == 1]
    for a in sorted((a % x.dim() for a in ax), reverse=True):
        x = x.squeeze(a)
    return x


def unsqueeze(attrs: dict, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = _axes(attrs, axes)
    rank = x.dim() + len(ax)
    for a in sorted(a % rank for a in ax):
        x = x.unsqueeze(a)
    return x


def transpose(attrs: dict, x: torch.Tensor) -> torch.Tensor:
    perm = attrs.get("perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


def concat(attrs: dict, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=attrs["axis"])


def pad(attrs: dict, x: torch.Tensor, pads: torch.Tensor | None = None,
        value: torch.Tensor | None = None, axes: torch.Tensor | None = None) -> torch.Tensor:
    p = [int(v) for v in (pads.tolist() if pads is not None else attrs["pads"])]
    nd = len(p) // 2
    if axes is not None:
        full = [0] * (2 * x.dim())
        for i, a in enumerate(int(a) % x.dim() for a in axes.tolist()):
            full[a], full[a + x.dim()] = p[i], p[i + nd]
        p, nd = full, x.dim()
    fill = float(value.item()) if value is not None and value.numel() else attrs.get("value", 0.0)
    return F.pad(x, _pads_2d(p, nd), value=fill)


def slice_(attrs: dict, x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
           axes: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> torch.Tensor:
    st, en = starts.tolist(), ends.tolist()
    ax = axes.tolist() if axes is not None else list(range(len(st)))
    sp = steps.tolist() if steps is not None else [1] * len(st)
    index: list[slice] = [slice(None)] * x.dim()
    for s, e, a, k in zip(st, en, ax, sp):
        a = int(a) % x.dim()
        n = x.shape[a]
        if k <= 0:
            raise UnsupportedModelError(f"Slice step {k} is not supported (only forward slices).",
                                        hint=SLICE_HINT)
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[a] = slice(s, e, int(k))
    return x[tuple(index)]


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
        raise UnsupportedModelError(f"Resize coordinate_transformation_mode '{mode}' is not supported",
                                    hint="Export Resize with half_pixel, asymmetric or align_corners.")
    if rounding == "floor":
        i = torch.floor(x)
    elif rounding == "ceil":
        i = torch.ceil(x)
    elif rounding == "round_prefer_ceil":
        i = torch.floor(x + 0.5)
    else:
        i = torch.ceil(x - 0.5)
    return i.clamp(0, size_in - 1).long()


def resize(attrs: dict, x: torch.Tensor, roi: torch.Tensor | None = None,
           scales: torch.Tensor | None = None, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-neighbour Resize with ONNX coordinate conventions (spatial axes only)."""
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


def upsample(attrs: dict, x: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    sc = scales if scales is not None else torch.tensor(attrs["scales"])
    return resize({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, x, None, sc)


def clip(attrs: dict, x: torch.Tensor, lo: torch.Tensor | None = None,
         hi: torch.Tensor | None = None) -> torch.Tensor:
    lo_v = lo if lo is not None else attrs.get("min")
    hi_v = hi if hi is not None else attrs.get("max")
    if lo_v is not None:
        x = torch.maximum(x, torch.as_tensor(lo_v, dtype=x.dtype))
    if hi_v is not None:
        x = torch.minimum(x, torch.as_tensor(hi_v, dtype=x.dtype))
    return x


def _sum(attrs: dict, *xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


STATELESS: dict[str, OpFn] = {
    "Conv": conv,
    "Gemm": gemm,
    "MatMul": matmul,
    "AveragePool": average_pool,
    "MaxPool": max_pool,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "BatchNormalization": batch_norm,
    "Flatten": flatten,
    "Reshape": reshape,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Transpose": transpose,
    "Concat": concat,
    "Pad": pad,
    "Slice": slice_,
    "Resize": resize,
    "Upsample": upsample,
    "Clip": clip,
    "Relu": lambda attrs, x: torch.relu(x),
    "Add": lambda attrs, a, b: a + b,
    "Sub": lambda attrs, a, b: a - b,
    "Mul": lambda attrs, a, b: a * b,
    "Div": lambda attrs, a, b: a / b,
    "Sum": _sum,
    "Identity": lambda attrs, x: x,
    "Dropout": lambda attrs, x, *rest: x,
    "Softmax": lambda attrs, x: torch.softmax(x, dim=attrs.get("axis", -1)),
    "LogSoftmax": lambda attrs, x: torch.log_softmax(x, dim=attrs.get("axis", -1)),
}
