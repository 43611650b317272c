"""Optional pass: swap MaxPool for AveragePool (same window), for targets without a spiking max-pool.

The swap changes the ANN itself, so the pass measures what it costs on the calibration data
(accuracy change when ``ctx.options["calib_labels"]`` holds labels, else the agreement of the
ANN's predictions before and after) and says so in a warning. Insert it before the neurons::

    pipe = default_pipeline(); pipe.insert_before("replace-neurons", MaxPoolToAvgPool())
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx

from ..datasets import head_labelled, is_empty
from ..onnxrt import outputs
from .base import Pass, PassContext

_KEPT = ("kernel_shape", "strides", "pads", "ceil_mode", "auto_pad")


class MaxPoolAccuracyWarning(UserWarning):
    """The MaxPool -> AveragePool swap changed the ANN; the message says by how much."""


def swap_max_pools(model: onnx.ModelProto) -> list[str]:
    """In place: MaxPool -> AveragePool (count_include_pad=0), GlobalMaxPool -> GlobalAveragePool."""
    swapped = []
    for node in model.graph.node:
        if node.domain or node.op_type not in ("MaxPool", "GlobalMaxPool"):
            continue
        if node.op_type == "GlobalMaxPool":
            node.op_type = "GlobalAveragePool"
        else:
            kept = [a for a in node.attribute if a.name in _KEPT]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.op_type = "AveragePool"
        del node.output[1:]
        swapped.append(node.name or node.output[0])
    return swapped


class MaxPoolToAvgPool(Pass):
    """Replace every max-pool by an average pool over the same window and warn with the ANN's accuracy effect."""

    name = "maxpool-to-avgpool"

    def __init__(self, samples: int = 1000) -> None:
        self.samples = samples

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        before = onnx.ModelProto()
        before.CopyFrom(model)
        swapped = swap_max_pools(model)
        if not swapped:
            ctx.info(self.name, "no MaxPool to replace")
            return model
        message = (f"replaced {len(swapped)} MaxPool node(s) ({', '.join(swapped)}) by AveragePool: "
                   + self._effect(before, model, ctx))
        ctx.info(self.name, message)
        warnings.warn(message, MaxPoolAccuracyWarning, stacklevel=2)
        return model

    def _effect(self, before: onnx.ModelProto, after: onnx.ModelProto, ctx: PassContext) -> str:
        if is_empty(ctx.calib):
            return "the ANN changes (average instead of max); its accuracy effect is unmeasured (no calibration data)"
        x, labels = head_labelled(ctx.calib, self.samples)
        old = outputs(before, x).reshape(len(x), -1).argmax(1)
        new = outputs(after, x).reshape(len(x), -1).argmax(1)
        labels = ctx.options.get("calib_labels", labels)
        if labels is not None and len(labels) >= len(x):
            y = np.asarray(labels)[:len(x)]
            a, b = 100 * float(np.mean(old == y)), 100 * float(np.mean(new == y))
            return (f"ANN accuracy changes by {b - a:+.1f} pt on {len(x)} calibration samples "
                    f"({a:.1f}% -> {b:.1f}%)")
        agree = 100 * float(np.mean(old == new))
        return (f"the ANN's predictions change on {100 - agree:.1f}% of {len(x)} calibration samples "
                f"(agreement {agree:.1f}%; no labels to measure accuracy)")
