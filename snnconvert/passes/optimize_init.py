"""Data-optimized initialization: per-channel bias correction fitted on calibration data so
that each neuron layer's mean SNN output at T steps matches the (clipped) ANN's.

Layers are corrected in order inside one simulation: layer l's correction is fitted on the
spikes of the already-corrected layers before it, then its corrected spikes flow on. The
correction is a constant current added at every step, so it is folded into the preceding
Conv/Gemm bias (or an Add of a constant where there is none). In the spirit of Li et al.
2021's bias calibration and of COS/SRP's offset fitting, with no retraining.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from .. import graph as g
from .. import ir
from ..errors import DataError
from ..runtime import SpikingNetwork
from .base import Pass, PassContext
from .calibrate import iterate_probe


def _channel_mean(x: np.ndarray | torch.Tensor, lead: int) -> np.ndarray:
    """Mean over every axis except the channel axis, which follows ``lead`` leading axes."""
    x = torch.as_tensor(x)
    dims = [d for d in range(x.dim()) if d != lead]
    return x.mean(dim=dims).cpu().numpy().astype(np.float64)


def apply_bias_correction(model: onnx.ModelProto, neuron: ir.Neuron, delta: np.ndarray) -> None:
    """Add the per-channel current ``delta`` to the neuron's input at every step."""
    graph = model.graph
    prod = g.producers(graph).get(neuron.input)
    users = g.consumers(graph).get(neuron.input, [])
    flat = delta.reshape(-1)
    if prod is not None and prod.op_type in ("Conv", "Gemm") and len(users) == 1 and (
            prod.op_type == "Conv" or not g.attr(prod, "transA", 0)):
        beta = g.attr(prod, "beta", 1.0) if prod.op_type == "Gemm" else 1.0
        if len(prod.input) > 2 and prod.input[2]:
            b = g.const_value(graph, prod.input[2]).astype(np.float64)
            new = b + np.broadcast_to(flat, b.shape) / beta if b.size == flat.size or flat.size == 1 \
                else None
        else:
            new = flat / beta
        if new is not None:
            name = g.unique_name(graph, f"{prod.name or prod.output[0]}.bias_corrected")
            g.set_initializer(graph, name, np.asarray(new, np.float32))
            if len(prod.input) > 2:
                prod.input[2] = name
            else:
                prod.input.append(name)
            return
    const = g.unique_name(graph, f"{neuron.name}.bias_correction")
    g.set_initializer(graph, const, delta.astype(np.float32))
    corrected = g.unique_name(graph, neuron.input + "_corrected")
    idx = list(graph.node).index(neuron.node)
    graph.node.insert(idx, helper.make_node("Add", [neuron.input, const], [corrected],
                                            name=f"{neuron.name}_bias_correction"))
    neuron.node.input[0] = corrected


class OptimizeInit(Pass):
    """Fit per-channel bias corrections at T = ctx.timesteps on ``samples`` calibration inputs."""

    name = "optimize-init"

    def __init__(self, samples: int = 128, iterations: int = 4) -> None:
        self.samples, self.iterations = samples, iterations

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        if ctx.calib is None or len(ctx.calib) == 0:
            raise DataError("data-optimized initialization needs calibration data",
                            hint="Pass --calib C.npz, or choose --v-init half.")
        x = np.asarray(ctx.calib[: self.samples], np.float32)
        steps = ctx.timesteps
        neurons = {n.name: n for n in ir.neurons(model)}
        targets: dict[str, np.ndarray] = {}
        outs = [n.output for n in neurons.values()]
        sums: dict[str, np.ndarray] = {}
        for batch in iterate_probe(model, outs, x, batch_size=64):
            for o, v in batch.items():
                sums[o] = sums.get(o, 0) + _channel_mean(v, 1) * len(v)
        for n in neurons.values():
            targets[n.name] = sums[n.output] / len(x)

        net = SpikingNetwork(model)
        corrections: dict[str, np.ndarray] = {}

        def hook(name: str, current: torch.Tensor, lead: int, fire) -> torch.Tensor:
            per = current.shape[lead:]
            view = [per[0]] + [1] * (len(per) - 1)
            target = torch.as_tensor(targets[name], dtype=current.dtype).reshape(view)
            theta = torch.tensor(np.array(neurons[name].threshold), dtype=current.dtype)
            bound = (torch.zeros(view, dtype=current.dtype) + theta.reshape(-1)[0]
                     if theta.numel() == 1 else theta.reshape(view))
            delta = torch.zeros(view, dtype=current.dtype)
            for _ in range(self.iterations):
                rate = torch.as_tensor(_channel_mean(fire(current + delta), 2), dtype=current.dtype)
                delta = torch.clamp(delta + target - rate.reshape(view), -bound, bound)
            corrections[name] = delta.numpy()
            return fire(current + delta)

        net.neuron_hook = hook
        with torch.no_grad():
            net(torch.from_numpy(x), steps)
        for name, delta in corrections.items():
            apply_bias_correction(model, neurons[name], delta)
        g.remove_unused_initializers(model.graph)
        mean_abs = np.mean([np.abs(d).mean() / max(float(np.max(neurons[k].threshold)), 1e-12)
                            for k, d in corrections.items()]) if corrections else 0.0
        ctx.info(self.name, f"fitted bias corrections for {len(corrections)} neuron layer(s) at "
                 f"T={steps} on {len(x)} sample(s) (mean |correction| {mean_abs:.3f}·θ)")
        return model
