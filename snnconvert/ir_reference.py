"""The spiking IR's meaning, executed: a small float64 numpy reference, one step at a time.

Everything the IR adds to ONNX is written here once, plainly, with no speed tricks (no time
chunks, no fused kernels, no onnxruntime, no readout shortcut): the IF/LIF neuron (both
resets, leak, per-channel or per-neuron θ, initial potential v0, step bias), the spiking max-pool, the
delay synapse (a list of past inputs, each synapse reading its own step), the
input encodings (analog, frames, rate) and the readouts (membrane, last, window, spikes).
The synaptic ops between neurons are the op registry's kernels, run in float64 on each step.
Every target is tested against this (``tests/test_conformance.py``): spike counts equal.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from . import ir
from .errors import UnsupportedModelError
from .graph import attrs as node_attrs
from .graph import constants
from .ops import lookup


@dataclass
class Reference:
    readout: np.ndarray                 # [N, n_out]: the IR's readout of the graph output
    counts: dict[str, np.ndarray]       # neuron -> [N, *shape] spikes over T steps


def if_step(v: np.ndarray, current: np.ndarray, theta: np.ndarray, reset: str, leak: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """One IF/LIF step: returns (spikes in {0, 1}, the membrane potential after the reset)."""
    v = (1.0 - leak) * v + current
    s = v >= theta
    v = v - theta * s if reset == "subtract" else np.where(s, 0.0, v)
    return s, v


class Encoder:
    """The graph input at each step under an :class:`ir.Encoding` (see :mod:`snnconvert.ir`)."""

    def __init__(self, enc: ir.Encoding, x: np.ndarray, time_varying: bool) -> None:
        self.enc, self.x, self.time_varying = enc, x, time_varying
        self.acc = np.full_like(x, 0.5)
        self.p = np.clip(x, 0.0, 1.0)
        self.u: np.ndarray | None = None

    def step(self, t: int, timesteps: int) -> np.ndarray:
        if self.time_varying:
            return self.x[:, t]
        if self.enc.kind != "rate":
            return self.x
        if self.enc.mode == "deterministic":
            self.acc = self.acc + self.p
            s = self.acc >= 1.0
            self.acc = self.acc - s
            return s.astype(np.float64)
        if self.u is None:
            self.u = ir.rate_uniforms(self.x.shape[1:], timesteps, self.enc.seed)
        return (self.u[t] < self.p).astype(np.float64)


def read_out(spec: ir.Readout, outputs: list[np.ndarray], counts: np.ndarray | None) -> np.ndarray:
    """The readout of the per-step outputs y_1..y_T (``counts``: the output neurons' spikes)."""
    if spec.kind == "spikes":
        return counts.reshape(len(counts), -1).astype(np.float64)
    first, count = spec.span(len(outputs))
    return np.mean(outputs[first:first + count], axis=0)


def simulate(model: onnx.ModelProto, x: np.ndarray, timesteps: int) -> Reference:
    """Run ``x`` through the IR ``model`` for ``timesteps`` steps in float64: ``x`` is
    [N, *input] (encoded as the IR says) or [N, T, *input] (one input per step)."""
    graph = model.graph
    consts = constants(graph)
    (inp,) = [i.name for i in graph.input if i.name not in consts]
    out_name = graph.output[0].name
    x = np.asarray(x, np.float64)
    data_t = ir.data_steps(model, x.shape)
    ir.check_steps(timesteps, data_t, "the input")
    encoder = Encoder(ir.encoding(model), x, data_t is not None)
    spec = ir.readout(model)
    out_neuron = ir.output_neuron(model)
    state: dict[str, object] = {}
    counts: dict[str, np.ndarray] = {}
    outputs = []
    for t in range(timesteps):
        env: dict[str, np.ndarray] = {inp: encoder.step(t, timesteps)}
        for node in graph.node:
            if node.output[0] in consts:
                continue
            args = [env[n] if n in env else consts.get(n) if n else None for n in node.input]
            attrs = node_attrs(node)
            if ir.is_neuron(node):
                theta = np.asarray(args[1], np.float64)
                v = state.get(node.name)
                if v is None:
                    v = np.broadcast_to(np.asarray(args[2], np.float64), args[0].shape).copy()
                x_t = args[0]
                if len(args) > 3 and args[3] is not None:
                    x_t = x_t + np.asarray(ir.step_bias_at(args[3], t, 1)[0], np.float64)
                s, state[node.name] = if_step(v, x_t, theta, attrs.get("reset", "subtract"),
                                              float(attrs.get("leak", 0.0)))
                counts[node.name] = counts.get(node.name, 0) + s.astype(np.int64)
                y = theta * s
            elif ir.is_spiking_max_pool(node):
                y = _spiking_max_pool(lookup(node), attrs, args[0], state, node.name)
            elif ir.is_delay_dense(node):
                y = _delay_dense(args, state, node.name)
            else:
                entry = lookup(node)
                if entry is None or not entry.has_kernel:
                    raise UnsupportedModelError("the IR reference has no meaning for this op",
                                                node=node.name, op=node.op_type)
                y = _kernel(entry, attrs, args)
            env[node.output[0]] = y
        outputs.append(env[out_name])
    out_counts = counts.get(out_neuron.name) if out_neuron is not None else None
    return Reference(read_out(spec, outputs, out_counts),
                     {k: np.asarray(v) for k, v in counts.items()})


def _kernel(entry, attrs: dict, args: list) -> np.ndarray:
    tensors = [None if a is None else torch.from_numpy(np.asarray(
        a, np.float64 if np.asarray(a).dtype.kind == "f" else np.asarray(a).dtype)) for a in args]
    with torch.no_grad():
        return entry.kernel(attrs, *tensors).numpy()


def _spiking_max_pool(entry, attrs: dict, x: np.ndarray, state: dict, name: str) -> np.ndarray:
    """Each window emits the increase of the max of its accumulated inputs (see ir)."""
    acc, prev = state.get(name, (np.zeros_like(x), None))
    if prev is None:
        prev = _kernel(entry, attrs, [acc])
    acc = acc + x
    top = _kernel(entry, attrs, [acc])
    state[name] = (acc, top)
    return top - prev


def _delay_dense(args: list, state: dict, name: str) -> np.ndarray:
    """y_t[n, j] = bias[j] + sum_i w[j, i] * x_{t - d[j, i]}[n, i], x_t = 0 before the first step."""
    x, w, d, b = (np.asarray(a) for a in args)
    past = [x] + state.get(name, [])             # past[k] = x_{t-k}
    state[name] = past[:int(d.max(initial=0))]
    zero = np.zeros_like(x)
    y = np.tile(np.asarray(b, np.float64), (x.shape[0], 1))
    for j in range(w.shape[0]):
        for i in range(w.shape[1]):
            k = int(d[j, i])
            y[:, j] += float(w[j, i]) * (past[k] if k < len(past) else zero)[:, i]
    return y
