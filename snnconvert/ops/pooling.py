"""Pooling: average pools (linear in the input currents) and max pools."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import OpEntry, Verdict, by_rank, explicit_pads, refuse, spatial_defaults, torch_pads, window_sum
from .registry import register


def pool_args(attrs: dict, x: torch.Tensor) -> tuple[list[int], list[int], list[int], bool]:
    """(kernel, strides, explicit pads, ceil_mode) of a pooling node applied to ``x``."""
    k = list(attrs["kernel_shape"])
    s = list(attrs.get("strides", [1] * len(k)))
    return k, s, explicit_pads(attrs, list(x.shape[2:]), k), bool(attrs.get("ceil_mode", 0))


class _Pool(OpEntry):
    family = "pooling"

    def normalize(self, attrs: dict, nd: int) -> dict:
        out = spatial_defaults(attrs, nd)
        out.setdefault("ceil_mode", 0)
        return out

    def events(self, attrs, inputs, consts):
        x = inputs[0]
        k, s, pads, ceil = pool_args(attrs, x)
        return window_sum(x, k, s, pads, ceil)


@register
class AveragePool(_Pool):
    op_type = "AveragePool"
    affine = ort_kernel = True

    def verdict(self, node, attrs, graph):
        return Verdict("pool", "average pooling of input currents (linear)")

    def kernel(self, attrs, x):
        nd = x.dim() - 2
        k, s, pads, ceil = pool_args(attrs, x)
        include_pad = bool(attrs.get("count_include_pad", 0))
        sym = pads[:nd] == pads[nd:] and all(p <= kk // 2 for p, kk in zip(pads[:nd], k))
        fn = by_rank({1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}, nd, "pooling")
        if sym:
            return fn(x, k, s, pads[:nd], ceil_mode=ceil, count_include_pad=include_pad)
        xp = F.pad(x, torch_pads(pads, nd))
        if include_pad or not any(pads):
            return fn(xp, k, s, 0, ceil_mode=ceil)
        ones = F.pad(torch.ones_like(x[:1, :1]), torch_pads(pads, nd))
        return fn(xp, k, s, 0, ceil_mode=ceil) / fn(ones, k, s, 0, ceil_mode=ceil)


@register
class GlobalAveragePool(OpEntry):
    op_type = "GlobalAveragePool"
    family = "pooling"
    affine = ort_kernel = True

    def verdict(self, node, attrs, graph):
        return Verdict("pool", "average pooling of input currents (linear)")

    def kernel(self, attrs, x):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)

    def events(self, attrs, inputs, consts):
        x = inputs[0]
        return x.sum(dim=tuple(range(2, x.dim())), keepdim=True)


def max_pool(attrs: dict, x: torch.Tensor) -> torch.Tensor:
    """ONNX MaxPool (1-3 spatial axes; padding never wins, asymmetric pads allowed)."""
    nd = x.dim() - 2
    k, s, pads, ceil = pool_args(attrs, x)
    dil = list(attrs.get("dilations", [1] * nd))
    fn = by_rank({1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}, nd, "pooling")
    if pads[:nd] == pads[nd:] and all(p <= kk // 2 for p, kk in zip(pads[:nd], k)):
        return fn(x, k, s, pads[:nd], dilation=dil, ceil_mode=ceil)
    return fn(F.pad(x, torch_pads(pads, nd), value=-math.inf), k, s, 0, dilation=dil, ceil_mode=ceil)


def max_pool_verdict(node, attrs, graph) -> Verdict:
    if attrs.get("ceil_mode", 0):
        return refuse("MaxPool with ceil_mode=1 is not supported.",
                      "pad the input explicitly and use ceil_mode=0.")
    if any(d != 1 for d in attrs.get("dilations", [])):
        return refuse("dilated MaxPool is not supported.", "use dilations of 1.")
    if len(node.output) > 1 and node.output[1] and graph.users.get(node.output[1]):
        return refuse("MaxPool indices output is not supported.", "use only the pooled values.")
    k = "x".join(str(v) for v in attrs.get("kernel_shape", [])) or "global"
    return Verdict("pool", f"{k} max pooling of spikes, gated by accumulated input (exact in the "
                           "rate); MaxPoolToAvgPool can swap it for an average pool")


@register
class MaxPool(_Pool):
    op_type = "MaxPool"

    def verdict(self, node, attrs, graph):
        return max_pool_verdict(node, attrs, graph)

    def kernel(self, attrs, x):
        return max_pool(attrs, x)


@register
class GlobalMaxPool(OpEntry):
    op_type = "GlobalMaxPool"
    family = "pooling"

    def verdict(self, node, attrs, graph):
        return max_pool_verdict(node, attrs, graph)

    def kernel(self, attrs, x):
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)

    def events(self, attrs, inputs, consts):
        x = inputs[0]
        return x.sum(dim=tuple(range(2, x.dim())), keepdim=True)
