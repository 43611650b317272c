"""Data-optimized initialization at the chosen T: per-channel threshold scales and bias
corrections fitted on calibration data, layer by layer inside one simulation.

Layer l is fitted on the spikes of the already-fitted layers before it, then its corrected
spikes flow on. The correction is a constant current added at every step, so it is folded into
the preceding Conv/Gemm bias (or an Add of a constant where there is none). In the spirit of
Li et al. 2021's bias calibration and of COS/SRP's offset fitting, with no retraining.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .. import graph as g
from .. import ir, onnxrt
from ..datasets import head, is_empty
from ..errors import DataError
from .base import Pass, PassContext


def bias_holder(graph: onnx.GraphProto, neuron: ir.Neuron, channels: int) -> onnx.NodeProto | None:
    """The Conv/Gemm whose bias can carry a per-channel current added to the neuron's input:
    the producer of that input, or, through a residual Add/Sum (or the first input of a Sub),
    a Conv/Gemm feeding it; only where no other node reads the changed values."""
    producers, consumers = g.producers(graph), g.consumers(graph)
    prod = producers.get(neuron.input)
    if prod is None or len(consumers.get(neuron.input, [])) != 1:
        return None
    if _channels(graph, prod) == channels:
        return prod
    if prod.op_type in ("Add", "Sum", "Sub"):
        for name in prod.input[:1] if prod.op_type == "Sub" else prod.input:
            feed = producers.get(name)
            if feed is not None and len(consumers.get(name, [])) == 1 and \
                    _channels(graph, feed) == channels:
                return feed
    return None


def _channels(graph: onnx.GraphProto, node: onnx.NodeProto) -> int | None:
    """Output channels of a Conv/Gemm with a constant weight (None for anything else)."""
    if node.op_type not in ("Conv", "Gemm") or (node.op_type == "Gemm" and g.attr(node, "transA", 0)):
        return None
    w = g.const_value(graph, node.input[1])
    if w is None or w.ndim < 2:
        return None
    if len(node.input) > 2 and node.input[2] and g.const_value(graph, node.input[2]) is None:
        return None
    return int(w.shape[0] if node.op_type == "Conv" or g.attr(node, "transB", 0) else w.shape[1])


def can_fold_bias(model: onnx.ModelProto, neuron: ir.Neuron, channels: int) -> bool:
    """Whether a per-channel current for ``neuron`` folds into a Conv/Gemm bias."""
    return bias_holder(model.graph, neuron, channels) is not None


def apply_bias_correction(model: onnx.ModelProto, neuron: ir.Neuron, delta: np.ndarray) -> None:
    """Add the per-channel current ``delta`` to the neuron's input at every step: folded into
    a Conv/Gemm bias where :func:`can_fold_bias`, else an Add of a constant before the neuron."""
    graph = model.graph
    flat = delta.reshape(-1)
    holder = bias_holder(graph, neuron, flat.size)
    if holder is not None:
        beta = g.attr(holder, "beta", 1.0) if holder.op_type == "Gemm" else 1.0
        if len(holder.input) > 2 and holder.input[2]:
            b = g.const_value(graph, holder.input[2]).astype(np.float64)
            new = b + np.broadcast_to(flat, b.shape) / beta
        else:
            new = flat / beta
        name = g.unique_name(graph, f"{holder.name or holder.output[0]}.bias_corrected")
        g.set_initializer(graph, name, np.asarray(new, np.float32))
        if len(holder.input) > 2:
            holder.input[2] = name
        else:
            holder.input.append(name)
        return
    prod = g.producers(graph).get(neuron.input)
    if prod is not None and prod.name.startswith(f"{neuron.name}_bias_correction"):
        # a correction added earlier (another calibration pass): fold into its constant
        old = g.const_value(graph, prod.input[1])
        g.set_initializer(graph, prod.input[1], (old + delta).astype(np.float32))
        return
    const = g.unique_name(graph, f"{neuron.name}.bias_correction")
    g.set_initializer(graph, const, delta.astype(np.float32))
    corrected = g.unique_name(graph, neuron.input + "_corrected")
    idx = list(graph.node).index(neuron.node)
    graph.node.insert(idx, helper.make_node("Add", [neuron.input, const], [corrected],
                                            name=g.unique_name(graph, f"{neuron.name}_bias_correction")))
    neuron.node.input[0] = corrected


def open_thresholds(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose neurons never clip: onnxruntime then runs it as the original ANN."""
    return with_thresholds(model, opened(model))


def opened(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The threshold initializers of :func:`open_thresholds`, by name: given to an onnxruntime
    session in place of the model's, they run it as the ANN without a copy of the weights."""
    return {name: np.full_like(value, np.inf) for name, value in thresholds(model).items()}


def thresholds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The neurons' threshold initializers by name: with :func:`with_thresholds`, what tells a
    network from its :func:`open_thresholds` copy (kept instead of a second copy of the weights)."""
    return {n.node.input[1]: n.threshold for n in ir.neurons(model)}


def with_thresholds(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with these threshold initializers."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, value in values.items():
        ir.set_initializer(out, name, value)
    return out


class OptimizeInit(Pass):
    """Fit, layer by layer at T = ctx.timesteps, a per-channel threshold scale and bias correction.

    For each neuron layer, in order, on ``samples`` calibration inputs and the spikes of the
    already-fitted layers before it:
    1. threshold scale α per channel from ``scales``, minimizing the mean squared error between the
       layer's SNN rate and the ANN's activation (IF is homogeneous: a threshold αθ on current c
       spikes exactly as α times θ on c/α, so every α is tried on the same currents);
    2. a per-channel bias correction δ so the layer's mean SNN output equals the mean of the ANN
       activation clipped at αθ.
    θ and v(0) are scaled by α; α·δ is folded into the preceding Conv/Gemm bias.
    """

    name = "optimize-init"

    def __init__(self, samples: int = 128, iterations: int = 4,
                 scales: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15)) -> None:
        self.samples, self.iterations, self.scales = samples, iterations, tuple(scales)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        import torch

        from ..runtime import SpikingNetwork

        if is_empty(ctx.calib):
            raise DataError("data-optimized initialization needs calibration data",
                            hint="Pass --calib C.npz, or choose --v-init half.")
        steps = ctx.timesteps
        # The fit sees all T steps at once: keep samples × T (hence memory) bounded.
        x = head(ctx.calib, max(16, min(self.samples, self.samples * 32 // steps)))
        neurons = {n.name: n for n in ir.neurons(model)}
        by_output = {n.output: n.name for n in neurons.values()}
        ann: dict = {}
        chunks: dict[str, list[np.ndarray]] = {}
        for batch in onnxrt.iterate(model, x, list(by_output), batch_size=64, initializers=opened(model)):
            for o, v in batch.items():
                chunks.setdefault(by_output[o], []).append(v)
        for name, parts in chunks.items():
            ann[name] = torch.from_numpy(np.concatenate(parts))

        net = SpikingNetwork(model, time_chunk=None)
        fitted: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def channel_mean(t, lead: int):
            return t.mean(dim=[d for d in range(t.dim()) if d != lead])

        def hook(name: str, current, lead: int, fire):
            per = current.shape[lead:]
            view = [per[0]] + [1] * (len(per) - 1)
            target = ann[name].to(current.dtype)
            theta = torch.tensor(np.broadcast_to(neurons[name].threshold, view).copy(),
                                 dtype=current.dtype)
            errors = []
            for a in self.scales:
                rate = fire(current / a).mean(0) * a
                errors.append(channel_mean((rate - target) ** 2, 1))
            alpha = torch.tensor(self.scales, dtype=current.dtype)[
                torch.stack(errors).argmin(0)].reshape(view)
            goal = channel_mean(torch.minimum(target, alpha * theta), 1).reshape(view)
            delta = torch.zeros(view, dtype=current.dtype)
            for _ in range(self.iterations):
                rate = channel_mean(fire(current / alpha + delta), 2).reshape(view) * alpha
                delta = torch.clamp(delta + (goal - rate) / alpha, -theta, theta)
            fitted[name] = (alpha.numpy(), (alpha * delta).numpy())
            return fire(current / alpha + delta) * alpha

        net.neuron_hook = hook
        with torch.no_grad():
            net(torch.from_numpy(x), steps)
        for name, (alpha, bias) in fitted.items():
            n = neurons[name]
            for index, value in ((1, n.threshold), (2, n.v_init)):
                ir.set_initializer(model, n.node.input[index],
                                   (np.broadcast_to(value, alpha.shape) * alpha).astype(np.float32))
            apply_bias_correction(model, n, bias)
        g.remove_unused_initializers(model.graph)
        alphas = np.concatenate([a.reshape(-1) for a, _ in fitted.values()]) if fitted else np.ones(1)
        ctx.info(self.name, f"fitted threshold scales (mean α {alphas.mean():.2f}) and bias "
                 f"corrections for {len(fitted)} neuron layer(s) at T={steps} on {len(x)} sample(s)")
        return model
