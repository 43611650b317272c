"""What the Lava target holds, per op type, decided from the node and static shapes before any
lowering (the lowering in :mod:`.lowering` refuses the same things by name, and a few graph
patterns only it can see: e.g. a Transpose that does not feed a Flatten and a dense layer)."""
from __future__ import annotations

import numpy as np

from ... import ir
from ...errors import TargetError
from ...ops import refuse
from ..support import constant_input, conv2d_problem, declared, holds, spatial_rank, symmetric

TRANSPOSED_HINT = "use stride 1, or the torch target."
POOL_HINT = ("convert with --maxpool-to-avgpool (it reports the ANN accuracy change) or retrain "
             "with AveragePool.")


def _neuron(node, a, g):
    steps = " with its step bias as per-step bias banks" if ir.step_bias_input(node) else ""
    return holds("IF/LIF neuron (Lava IF process, float or fixed point)" + steps)


def _conv(node, a, g):
    problem = conv2d_problem(node, a, g, "Lava Conv")
    if problem is not None:
        return problem
    flipped = " (stride 1: the flipped kernel)" if node.op_type != "Conv" else ""
    return holds("Conv synapse process" + flipped)


def _dense(node, a, g):
    if constant_input(node, g, 1) is None or a.get("transA", 0):
        return refuse("only x @ W with a constant W maps to Dense.", "use a constant weight matrix.")
    rank = spatial_rank(node, g)
    if rank is not None and rank != 0:
        return refuse("only x @ W on flat activations maps to Dense.", "flatten before the matrix product.")
    return holds("Dense synapse process")


def _delay_dense(node, a, g):
    rank = spatial_rank(node, g)
    if rank is not None and rank != 0:
        return refuse("a delay synapse on a multi-axis tensor is not supported.", "flatten its input first.")
    if node.input[0] in g.input_chain or node.input[0] in g.inputs:
        return holds("delay synapse on the graph input: a host-side delay line, per-step currents")
    top = int(a.get("max_delay", 0))
    if top > 63:
        return refuse(f"Loihi 2 delays hold 0..63 steps; this synapse's max_delay is {top}.",
                      "learn delays with --delays 63 or fewer.")
    return holds("Lava DelayDense synapse (per-synapse integer delays, float or fixed point)")


def _add(node, a, g):
    data = g.data_inputs(node)
    if node.op_type == "Sub" and len(data) == 2 or node.op_type == "Sub" and data == [node.input[1]]:
        return refuse("subtracting an activation has no Lava synapse.", "add a negated branch instead.")
    shapes = {g.shape(n) for n in data}
    if len(data) == 2 and None not in shapes and len(shapes) > 1:
        return refuse(f"adding activations of shapes {sorted(shapes)} (broadcasting) is not supported.",
                      "add tensors of one shape.")
    return holds("fan-in of synapses (summed currents) or a constant bias")


def _scale(node, a, g):
    if constant_input(node, g, 1) is None:
        return refuse(f"{node.op_type} of two activations has no Lava synapse.",
                      "scale by a constant only.")
    return holds("per-channel scale folded into the synapse weights")


def _avg_pool(node, a, g):
    rank = spatial_rank(node, g)
    if rank is not None and rank != 2:
        return refuse(f"only 2-D pooling maps to Lava ({rank}-D here).", "use the torch target.")
    if node.op_type == "GlobalAveragePool":
        return holds("average pool as a depthwise Conv synapse")
    if a.get("ceil_mode", 0):
        return refuse("ceil_mode pooling is not supported.", "pad explicitly and use ceil_mode=0.")
    pads = a.get("pads", [0, 0, 0, 0])
    if any(pads) and not a.get("count_include_pad", 0):
        return refuse("average pooling with padding excluded from the count has a position-dependent "
                      "divisor.", "use count_include_pad=1 or no padding.")
    if not symmetric(pads):
        return refuse(f"asymmetric padding {list(pads)}.", "use symmetric padding.")
    return holds("average pool as a depthwise Conv synapse")


def _transpose(node, a, g):
    perm = a.get("perm")
    if perm is not None and perm[0] != 0:
        return refuse("a Transpose that moves the batch axis.", "keep the batch axis first.")
    return holds("permutation folded into the next dense layer's columns (before a Flatten)")


def _flatten(node, a, g):
    if node.op_type == "Flatten" and a.get("axis", 1) != 1:
        return refuse("Flatten must keep the batch axis (axis=1).", "flatten from axis 1.")
    if node.op_type == "Reshape":
        target = constant_input(node, g, 1)
        shape = g.shape(node.input[0])
        n = None if shape is None else int(np.prod(shape))
        if target is None or len(target) < 2 or (n is not None and int(target[1]) not in (-1, n)) \
                or any(int(t) != 1 for t in target[2:]):
            return refuse("only a reshape to [N, features] maps to Lava.", "use Flatten.")
    return holds("port reshape")


def _slice(node, a, g):
    steps = constant_input(node, g, 4)
    axes = constant_input(node, g, 3)
    if any(n and g.const_value(n) is None for n in node.input[1:]):
        return refuse("Slice with run-time bounds.", "use constant bounds.")
    if steps is not None and (steps <= 0).any() or axes is not None and (axes == 0).any():
        return refuse("only forward slices of non-batch axes map to Lava.", "slice H/W with a positive step.")
    return holds("strided selection as a 1x1 Conv synapse (folded into the next synapse)")


def _pad(node, a, g):
    if a.get("mode", "constant") != "constant":
        return refuse("only constant (zero) padding maps to Lava.", "use zero padding.")
    pads = constant_input(node, g, 1)
    if pads is None and len(node.input) > 1:
        return refuse("Pad with run-time pads.", "use constant pads.")
    value = constant_input(node, g, 2)
    if value is not None and float(value.reshape(-1)[0]) != 0.0:
        return refuse("padding with a non-zero value.", "use zero padding.")
    if pads is not None and (pads[0] or pads[len(pads) // 2]):
        return refuse("padding the batch axis.", "pad only channels and H/W.")
    return holds("zero padding as a selection synapse (channel padding of ResNet option A)")


def _concat(node, a, g):
    shape = g.shape(node.input[0])
    axis = int(a.get("axis", 1))
    rank = None if shape is None else len(shape) + 1
    if axis < 0:
        if rank is None:
            return holds("channel placement folded into the next layer's weights (split per branch)")
        axis += rank
    if axis != 1:
        return refuse(f"only channel concatenation maps to Lava (axis {a.get('axis', 1)}).",
                      "concatenate along channels.")
    return holds("channel placement folded into the next layer's weights (split per branch)")


def _passthrough(node, a, g):
    return holds("removed (no effect at inference)")


def _batch_norm(node, a, g):
    return holds("per-channel scale and shift folded into the synapses and biases")


TABLE = {
    "Relu": _neuron, "Clip": _neuron, ir.NEURON_OP: _neuron,
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _dense, "MatMul": _dense,
    ir.DELAY_DENSE: _delay_dense, "Add": _add, "Sub": _add, "Mul": _scale, "Div": _scale, "BatchNormalization": _batch_norm,
    "AveragePool": _avg_pool, "GlobalAveragePool": _avg_pool,
    "Transpose": _transpose, "Flatten": _flatten, "Reshape": _flatten,
    "Slice": _slice, "Pad": _pad, "Concat": _concat,
    "Identity": _passthrough, "Dropout": _passthrough,
}

REFUSED = {op: ("Lava has no max-pooling synapse.", POOL_HINT)
           for op in ("MaxPool", "GlobalMaxPool", ir.SPIKING_MAX_POOL)}
REFUSED["Resize"] = REFUSED["Upsample"] = (
    "Lava's Conv cannot upsample (no input dilation), so nearest-neighbour upsampling has no synapse.",
    "use the torch target, or upsample the input before the network.")

supports = declared(TABLE, "lava", REFUSED)


# ------------------------------------------------------------- how the network meets time
ENCODINGS = {
    "analog": "the input-driven current of the first layers, one bias bank per sample",
    "frames": "one input per step (spike or graded frames [N, T, ...]): a bias bank per step",
    "rate": "spike trains drawn by the torch runtime's encoder (same seed, same spikes), "
            "then as frames",
}
"""Input encodings (:class:`ir.Encoding` kinds) the Lava target runs, and how."""

READOUTS = {
    "membrane": "the read-out sink sums the output current over the T steps",
    "last": "the read-out sink keeps the output current of the last step",
    "window": "the read-out sink sums the output current over the last K steps",
    "spikes": "the output neurons' own spike counts, read back from their IF process",
}
"""Readouts (:class:`ir.Readout` kinds) the Lava target runs identically to the IR."""

REFUSED_READOUTS: dict[str, tuple[str, str]] = {}
"""Readouts the Lava target refuses: kind -> (reason, hint). None today: every readout the IR
records runs."""


def check_io(enc: ir.Encoding, out: ir.Readout) -> None:
    """Refuse (TargetError, before any calibration) an encoding or readout Lava does not run."""
    if enc.kind not in ENCODINGS:
        raise TargetError(f"the lava target has no input encoding '{enc}'",
                          hint="Convert with --encoding analog, frames or rate.")
    if out.kind in REFUSED_READOUTS or out.kind not in READOUTS:
        reason, hint = REFUSED_READOUTS.get(out.kind, (f"the lava target has no readout '{out}'",
                                                       "Convert with --readout membrane."))
        raise TargetError(f"{reason} (this network's readout is '{out}')", hint=hint)
