"""What the NIR target holds, per op type (the export in :mod:`.export` maps each of these to NIR
nodes; what it can only approximate is marked so, and named again as a warning at compile)."""
from __future__ import annotations

import numpy as np

from ... import ir
from ...ops import refuse
from ..support import approximates, constant_input, conv2d_problem, declared, holds, spatial_rank, symmetric

NEURON_NOTE = ("NIR IF/LIF (reset to zero, starting at 0: reset by subtraction and the θ/2 start "
               "are approximated unless converted with --reset zero --v-init zero)")


def _neuron(node, a, g):
    if node.op_type != ir.NEURON_OP:
        return holds(NEURON_NOTE)
    theta = g.const_value(node.input[1])
    if theta is not None and np.any(theta <= 0):
        return refuse("thresholds must be positive to map to NIR.", "recalibrate the thresholds.")
    if ir.step_bias_input(node) is not None:
        return refuse("its step bias (a current per time step, from calibration for T) has no "
                      "NIR equivalent: NIR biases are constant in time.",
                      "convert with --calibration refit (no step bias), or use the torch or lava target.")
    v0 = g.const_value(node.input[2])
    lossy = a.get("reset", "subtract") == "subtract" or (v0 is not None and np.any(v0 != 0))
    return approximates(NEURON_NOTE) if lossy else holds("NIR IF/LIF")


def _conv(node, a, g):
    problem = conv2d_problem(node, a, g, "NIR Conv2d")
    if problem is not None:
        return problem
    return holds("NIR Conv2d" + (" (stride 1: the flipped kernel)" if node.op_type != "Conv" else ""))


def _dense(node, a, g):
    w = constant_input(node, g, 1)
    if w is None or w.ndim != 2 or a.get("transA", 0):
        return refuse(f"{node.op_type} needs a constant 2-D weight (x @ W).", "use a constant weight matrix.")
    rank = spatial_rank(node, g)
    if rank is not None and rank != 0:
        return refuse("a dense layer on a multi-axis tensor is not supported.", "flatten its input first.")
    return holds("NIR Affine/Linear")


def _delay_dense(node, a, g):
    rank = spatial_rank(node, g)
    if rank is not None and rank != 0:
        return refuse("a delay synapse on a multi-axis tensor is not supported.", "flatten its input first.")
    return holds("NIR Linear (one copy of each input per delay it uses) -> Delay -> Affine")


def _add(node, a, g):
    data = g.data_inputs(node)
    if len(data) == 2:
        shapes = {g.shape(n) for n in data}
        if None not in shapes and len(shapes) > 1:
            return refuse("broadcasting Add cannot be expressed as NIR fan-in.", "add tensors of one shape.")
        return holds("fan-in (edges into one node)")
    return holds("bias of the preceding dense/conv layer")


def _scale(node, a, g):
    c = constant_input(node, g, 1)
    if c is None:
        return refuse(f"{node.op_type} of two signals cannot be expressed in NIR.", "scale by a constant.")
    if np.any(c == 0):
        return refuse("multiplying by zero cannot be folded.", "remove the zeroed channels.")
    return holds("scale folded into the neighbouring weights or thresholds")


def _avg_pool(node, a, g):
    rank = spatial_rank(node, g)
    if rank is not None and rank != 2:
        return refuse(f"only 2-D pooling maps to NIR ({rank}-D here).", "use the torch target.")
    if node.op_type == "GlobalAveragePool":
        return holds("NIR SumPool2d/AvgPool2d")
    if a.get("ceil_mode", 0):
        return refuse("ceil_mode pooling is not supported.", "pad explicitly and use ceil_mode=0.")
    pads = a.get("pads", [0, 0, 0, 0])
    if not symmetric(pads):
        return refuse(f"asymmetric pool padding {list(pads)} cannot be expressed in NIR.",
                      "use symmetric padding.")
    if any(pads) and not a.get("count_include_pad", 0):
        return approximates("NIR pool; padded borders divided by the full kernel size")
    return holds("NIR SumPool2d/AvgPool2d")


def _max_pool(node, a, g):
    return approximates("MaxPool has no NIR node: approximated by average pooling")


def _flatten(node, a, g):
    if node.op_type == "Flatten" and a.get("axis", 1) != 1:
        return refuse("Flatten must keep the batch axis (axis=1).", "flatten from axis 1.")
    return holds("NIR Flatten")


def _passthrough(node, a, g):
    return holds("removed (no effect at inference)")


TABLE = {
    "Relu": _neuron, "Clip": _neuron, ir.NEURON_OP: _neuron,
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _dense, "MatMul": _dense,
    ir.DELAY_DENSE: _delay_dense, "Add": _add, "Mul": _scale, "Div": _scale,
    "AveragePool": _avg_pool, "GlobalAveragePool": _avg_pool,
    "MaxPool": _max_pool, ir.SPIKING_MAX_POOL: _max_pool,
    "Flatten": _flatten, "Reshape": _flatten, "Identity": _passthrough, "Dropout": _passthrough,
}

REFUSED = {op: ("NIR has no upsampling node (nearest-neighbour Resize).",
                "use the torch target, or upsample the input before the network.")
           for op in ("Resize", "Upsample")}

supports = declared(TABLE, "nir", REFUSED)
