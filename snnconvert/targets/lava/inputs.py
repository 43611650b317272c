"""What enters a Lava layer graph at each step: the IR's input encoding applied on the host, and
the input-driven current of every population the graph input feeds.

Analog input is one current per sample ([N, *shape]); frames, spike trains and rate codes give
one current per step ([N, T, *shape]). The emitted neurons take these currents as bias banks
(:class:`.procs.if_neuron.IF`: one bank per reset window, or one per step of each window), so
the input-side synapses of the first layer run on the host in float64, exactly as the zero-delay
reference and the torch runtime compute them. Rate codes come from the torch runtime's encoder
(:mod:`snnconvert.runtime.encoding`), so Lava's first layer sees the very spike trains torch
generates for the same seed. A delay synapse on the input runs across the steps on the host
(analog input is then given per step, the same x at every step). Any lowering that feeds populations from the graph input uses
:func:`step_input` then :func:`input_currents`.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch

from ... import ir
from ...errors import TargetError
from .lowering import LayerGraph, apply_chain, apply_chain_in_time


def step_input(model: onnx.ModelProto, x: np.ndarray, timesteps: int) -> np.ndarray:
    """The graph input of a ``timesteps``-step run, float64: ``x`` [N, *input] for analog input,
    else one input per step [N, T, *input] (frames cut to T, rate codes drawn by the runtime's
    encoder). Refuses (DataError) data that does not fit the IR's encoding or is too short."""
    x = np.asarray(x)
    data_t = ir.data_steps(model, x.shape)
    if data_t is not None:
        ir.check_steps(timesteps, data_t, "the input")
        return np.ascontiguousarray(x[:, :timesteps], np.float64)
    enc = ir.encoding(model)
    if enc.kind != "rate":
        if delays_on_input(model):  # its current changes over the first steps: one per step
            return np.ascontiguousarray(np.broadcast_to(np.asarray(x, np.float64)[:, None],
                                                        (x.shape[0], timesteps, *x.shape[1:])))
        return np.asarray(x, np.float64)
    from ...runtime.encoding import encode  # not at import: Lava's compiler executes this module

    # the torch runtime encodes float32 input; encode the same values (exact in float64)
    xt = torch.as_tensor(np.asarray(x, np.float32)).double()
    return encode(enc, xt, timesteps, time_varying=False).numpy()


def delays_on_input(model: onnx.ModelProto) -> bool:
    """Whether a delay synapse takes the graph input (through non-neuron ops)."""
    inits = {t.name for t in model.graph.initializer}
    reached = {i.name for i in model.graph.input if i.name not in inits}
    for node in model.graph.node:
        if ir.is_neuron(node) or not any(i in reached for i in node.input):
            continue
        if ir.is_delay_dense(node):
            return True
        reached.update(node.output)
    return False


def per_step(lg: LayerGraph, x: np.ndarray) -> bool:
    """Whether ``x`` holds one input per step ([N, T, *input]) for ``lg``."""
    return np.ndim(x) == len(lg.input_shape) + 2


def input_currents(lg: LayerGraph, x: np.ndarray) -> dict[str, np.ndarray]:
    """The input-driven current of every population fed by the graph input: [N, *shape] for a
    constant input, [N, T, *shape] for one input per step (``x`` from :func:`step_input`)."""
    steps = per_step(lg, x)
    xt = torch.as_tensor(np.asarray(x, np.float64))
    out = {}
    for name, p in lg.populations.items():
        if not p.input_ops:
            continue
        if steps:  # delay synapses run across the steps, every other op on each step
            out[name] = sum(apply_chain_in_time(ops, xt).numpy() for ops in p.input_ops)
        elif any(o.kind == "delay" for ops in p.input_ops for o in ops):
            raise TargetError("a delay synapse on a constant input has a current that changes "
                              "over the first steps; pass the input per step")
        else:
            out[name] = sum(apply_chain(ops, xt).numpy() for ops in p.input_ops)
    return out


def output_current_mean(current: np.ndarray | None, steps: bool, first: int, count: int
                        ) -> np.ndarray | float:
    """The mean over the read-out steps of the input-driven current of the read-out itself
    (``steps``: ``current`` is [N, T, F], one per step; else [N, F])."""
    if current is None:
        return 0.0
    return current[:, first:first + count].mean(axis=1) if steps else current
