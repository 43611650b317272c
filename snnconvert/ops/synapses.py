"""Per-layer neurons, synapses and synaptic events of an IR graph, by path counting.

Each neuron layer (and the readout) owns the linear ops between it and the previous neuron
layers or the graph input, as a chip would merge them (pool + conv = one synaptic layer).
Pushing ``E`` (events per source neuron) through those ops with all weights set to 1 gives
Σ_i E_i × fan-out_i at the layer's input: with ``E = 1`` the number of synapses (= the ANN's
MACs), with ``E = spike counts`` the synaptic operations of one inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from .. import ir
from ..errors import UnsupportedModelError
from ..graph import constants
from .registry import lookup
from .shapes import tensor_shapes  # noqa: F401 (the report and profiles take shapes from here)

READOUT = "readout"


@dataclass
class Layer:
    """One neuron layer (or the readout) of the IR graph."""

    name: str
    shape: tuple[int, ...]      # per sample
    input: str                  # tensor feeding the layer
    analog: bool                # reached from the graph input (MACs on analog values)

    @property
    def neurons(self) -> int:
        return int(np.prod(self.shape))


class EventCounter:
    """Propagate per-neuron event counts through an IR graph's linear ops (weights -> 1)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.consts = constants(model.graph)
        inits = set(self.consts)
        self.input = next(i.name for i in model.graph.input if i.name not in inits)
        self.output = model.graph.output[0].name

    def run(self, x_events: torch.Tensor, spikes: dict[str, torch.Tensor]
            ) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
        """Event tensors for every tensor name, and whether each derives from the input."""
        env = {self.input: x_events}
        analog = {self.input: True}
        for node in self.model.graph.node:
            if node.output[0] in self.consts:
                continue
            ins = [env.get(n) for n in node.input]
            if ir.is_neuron(node):
                env[node.output[0]] = spikes[node.name]
                analog[node.output[0]] = False
                continue
            env[node.output[0]] = self._op(node, ins)
            analog[node.output[0]] = any(analog.get(n, False) for n in node.input)
        return env, analog

    def _op(self, node: onnx.NodeProto, ins: list) -> torch.Tensor:
        """Events at the output of ``node``: its registry entry's event rule (weights -> 1)."""
        entry = lookup(node)
        if entry is None or not entry.has_kernel:
            raise UnsupportedModelError(f"cannot count synapses through {node.op_type}",
                                        node=node.name, op=node.op_type)
        ins = list(ins) + [None] * (len(node.input) - len(ins))
        x = next(v for v in ins if v is not None)
        nd = max(x.dim() - 2, 0)
        consts = [self.consts.get(n) if n and v is None else None for n, v in zip(node.input, ins)]
        return entry.events(entry.attrs(node, nd), ins, consts)


def layers(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[Layer]:
    """Neuron layers in graph order, then the readout; ``shapes`` are per-sample tensor shapes."""
    out = []
    counter = EventCounter(model)
    ones = torch.ones((1, *shapes[counter.input]))
    spikes = {n.name: torch.zeros((1, *shapes[n.output])) for n in ir.neurons(model)}
    _, analog = counter.run(ones, spikes)
    for n in ir.neurons(model):
        out.append(Layer(n.name, tuple(shapes[n.input]), n.input, analog.get(n.input, False)))
    out.append(Layer(READOUT, tuple(shapes[counter.output]), counter.output,
                     analog.get(counter.output, False)))
    return out


def synapses(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Fan-in weight count of every layer (number of connections = the ANN's MACs)."""
    counter = EventCounter(model)
    ones = torch.ones((1, *shapes[counter.input]), dtype=torch.float64)
    spikes = {n.name: torch.ones((1, *shapes[n.output]), dtype=torch.float64)
              for n in ir.neurons(model)}
    env, _ = counter.run(ones, spikes)
    return {lay.name: int(round(float(env[lay.input].sum()))) for lay in layers(model, shapes)}


def synaptic_events(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                    spike_counts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean synaptic events per inference arriving at each layer, given total spike counts per
    neuron ([B, ...]); the graph input counts one event per element (its MACs, done once)."""
    counter = EventCounter(model)
    b = next(iter(spike_counts.values())).shape[0] if spike_counts else 1
    ones = torch.ones((b, *shapes[counter.input]), dtype=torch.float64)
    spikes = {k: v.to(torch.float64) for k, v in spike_counts.items()}
    env, _ = counter.run(ones, spikes)
    return {lay.name: float(env[lay.input].sum()) / b for lay in layers(model, shapes)}


def ann_macs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """The ANN's multiply-accumulates per layer: Conv/Gemm/MatMul connections on the path into
    each layer (pooling and adds are not MACs)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    counter = EventCounter(model)
    out = {}
    for lay in layers(model, shapes):
        total, stack, seen = 0, [lay.input], set()
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or ir.is_neuron(node) or name in seen:
                continue
            seen.add(name)
            entry = lookup(node)
            if entry is not None and entry.weighted:
                x = torch.ones((1, *shapes[node.input[0]]), dtype=torch.float64)
                total += int(round(float(counter._op(node, [x]).sum())))
            stack.extend(i for i in node.input if i in producer)
        out[lay.name] = total
    return out
