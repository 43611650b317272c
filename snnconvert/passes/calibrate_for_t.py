"""Layer-by-layer calibration for the chosen T, label-free, driven by the ANN's activations.

The network runs at T = ctx.timesteps on a subset of the calibration data, one neuron layer
at a time over chunks of samples (:class:`~snnconvert.runtime.layerwise.LayerwiseRun`): a
layer's input current is the one the already calibrated layers before it actually produce;
the layer steps (weight refit for `refit` and `full`, threshold search, bias correction, potential
calibration) fit that layer against the ANN's activation on the same samples, and its
calibrated spikes flow on (with a weight refit, the Conv/Gemm computing the output is then
refitted to the ANN's output, where that agrees with the ANN more often). The fitted θ, v(0),
bias (folded into the preceding Conv/Gemm where possible) and weights are then written into the
IR. Memory does not grow with the samples.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import onnx
import torch

from tqdm.auto import tqdm

from .. import graph as g
from .. import ir, onnxrt
from ..datasets import head, is_empty
from ..errors import DataError
from ..ops.shapes import tensor_shapes
from ..runtime import SpikingNetwork
from ..runtime.layerwise import CHUNK_BYTES, Chunks, LayerwiseRun
from ..runtime.memory import sample_bytes, samples_within
from ..runtime.spool import BUDGET as spool_budget, Spool
from .base import Pass, PassContext, copy_model
from .calibrate_potential import CalibratePotential
from .correct_bias import CorrectBias
from .layer_state import LayerState
from . import fit_weights
from .fit_weights import WIDE, FitReadout, FitWeights, ReadoutFit, Synapse
from .optimize_init import apply_bias_correction, bias_holder, can_fold_bias, opened
from .search_thresholds import SearchThresholds
from .step_bias import FitStepBias

LayerStep = Callable[[LayerState], None]

SAMPLES = 1024
"""At most this many calibration samples per simulation (per-neuron potentials need many)."""

SAMPLE_STEPS = 8192
"""Calibration samples × T: bounds the calibration time (memory is bounded by chunks, see
:mod:`snnconvert.runtime.layerwise`)."""

SAMPLE_SQUARE = 1 << 19
"""Calibration samples × T²: where this allows more samples than :data:`SAMPLE_STEPS`, a
simulation at low T reads them (ResNet-20: 1,024 samples up to T=16, 512 at T=32, 128 at T=64 as
before). Why T²: the fitted means (bias, initial potentials, weights) are estimated from
per-sample errors of the size of the quantization step θ/T, so for the same precision a fit at
T needs samples in proportion to 1/T². Measured on ResNet-20 (1,000 test images, 1,000
calibration images; agreement with the ANN / accuracy): T=16, 512 -> 1,000 samples: 85.8 ->
86.8 % / 77.5 -> 77.9 %; T=32 on 512: 91.8 % / 80.8 %; T=64, 128 -> 256: 96.0 -> 95.8 % / 81.2 ->
81.3 % (no gain for twice the time, so T=64 keeps 128). Calibration CPU time at T=16 and 32
doubles (about 200 -> 390 s on one thread)."""

SAMPLE_WORK = 1 << 38
"""Calibration samples × T × the network's multiply-accumulates per sample (:func:`macs`): a
network smaller than ResNet-20 (37 M MACs, which :data:`SAMPLE_STEPS` bounds first) reads up to
:data:`SAMPLES` at high T for no more work than ResNet-20's. Measured (1,000 test images, T=16 /
32 / 64): resnet_2b's agreement with the ANN 93.6 / 95.8 / 97.7 -> 94.3 / 96.3 / 98.2 %
(cifar10_small's at T=16 / 32: 90.0 / 93.8 -> 89.2 / 93.5)."""


HELD_OUT = 256
MIN_HELD_OUT = 100
"""With at least this many calibration samples left over by the fit (high T, where samples × T
is bounded), up to :data:`HELD_OUT` of them check the fitted network against the network as it
came (agreement of the predictions with the ANN, and output error, at T): the calibration is
dropped only where the network as it came is better on both (few samples per neuron at high T
can overfit the per-neuron potentials)."""


READOUT_MODES = ("judged", True, False)
"""``readout`` of :class:`CalibrateForT` (see there)."""


def default_steps(potential: bool = True, weights: bool = False, step_bias: bool = False
                  ) -> list[LayerStep]:
    """(With ``weights``, the `refit` calibration: weight refit first, then) threshold search, bias
    correction, (unless ``potential`` is False, which keeps v(0) as set) potential calibration
    and (with ``step_bias``) a bias per time step."""
    return ([FitWeights()] if weights else []) + [SearchThresholds(), CorrectBias()] + (
        [CalibratePotential()] if potential else []) + ([FitStepBias()] if step_bias else [])


def sample_count(timesteps: int, samples: int = SAMPLES, sample_steps: int = SAMPLE_STEPS,
                 work: int = 0, macs: int = 0, square: int = SAMPLE_SQUARE) -> int:
    """Calibration samples one simulation at T uses: at most ``samples``, and samples × T
    bounded by ``sample_steps`` or, if one of them allows more, samples × T² by ``square`` or
    samples × T × ``macs`` by ``work``."""
    budget = max(sample_steps // timesteps, square // timesteps ** 2)
    if work and macs:
        budget = max(budget, work // (macs * timesteps))
    return max(16, min(samples, budget))


def macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one sample through the Conv/Gemm/MatMul nodes with constant
    weights (the bulk of a simulation step's work)."""
    shapes = tensor_shapes(model)
    total = 0
    for node in model.graph.node:
        w = g.const_value(model.graph, node.input[1]) if node.op_type in ("Conv", "Gemm", "MatMul") \
            and len(node.input) > 1 else None
        out = shapes.get(node.output[0])
        if w is None or out is None:
            continue
        positions = out[1:] if node.op_type == "Conv" else out[:-1] if node.op_type == "MatMul" else ()
        total += int(w.size) * int(np.prod(positions, dtype=np.int64))
    return total


def spool_ann_activations(model: onnx.ModelProto, x: np.ndarray, chunk: int, spool: Spool,
                          currents: bool = False, extra: Sequence[str] = ()) -> None:
    """Every neuron's ANN activation (ReLU output, unclipped) on ``x`` into ``spool`` under
    "ann:<neuron output>" (with ``currents``, its input too, under "ann:<neuron input>"; and
    any ``extra`` tensor under "ann:<name>"), one item per chunk of ``chunk`` samples."""
    names = [n.output for n in ir.neurons(model)]
    names += [n.input for n in ir.neurons(model) if currents and n.input not in names]
    names += [e for e in extra if e not in names]
    for i, batch in enumerate(onnxrt.iterate(model, x, names, batch_size=chunk, initializers=opened(model))):
        for name, value in batch.items():
            spool.put("ann:" + name, i, value.astype(np.float32, copy=False))


def ann_activations(model: onnx.ModelProto, x: np.ndarray) -> dict[str, torch.Tensor]:
    """Every neuron's ANN activation (ReLU output, unclipped) on ``x``, keyed by neuron name."""
    by_output = {n.output: n.name for n in ir.neurons(model)}
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in onnxrt.iterate(model, x, list(by_output), batch_size=64, initializers=opened(model)):
        for o, v in batch.items():
            chunks.setdefault(by_output[o], []).append(v)
    return {name: torch.from_numpy(np.concatenate(parts)) for name, parts in chunks.items()}


def output_agreement(snn: onnx.ModelProto, reference: onnx.ModelProto, x: np.ndarray, steps: int
                     ) -> tuple[float, float]:
    """(share of samples whose SNN prediction at T = ``steps`` equals the ANN's, mean squared
    difference of the outputs), the ANN being ``reference`` with its neurons opened."""
    per_sample = sample_bytes(snn)[1]
    ann = onnxrt.outputs(reference, x, samples_within(per_sample, 256), opened(reference))
    out = SpikingNetwork(snn).simulate(x, steps, batch_size=samples_within(per_sample, 128)).readout[steps]
    ann, out = ann.reshape(len(x), -1), out.reshape(len(x), -1)
    return float(np.mean(out.argmax(1) == ann.argmax(1))), float(np.mean((out - ann) ** 2))


def _synapse(model: onnx.ModelProto, net: SpikingNetwork, run: LayerwiseRun, spool: Spool,
             n: ir.Neuron, channels: int) -> Synapse | None:
    """The Conv/Gemm feeding neuron layer ``n`` whose weights `refit` may refit, if any: its
    output reaches only the neuron (directly or through a residual Add) and no other node reads
    its weight or bias."""
    holder = bias_holder(model.graph, n, channels)
    return None if holder is None else _refittable(model, net, run, spool, holder, n.input)


def _readout_holder(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The Conv/Gemm computing the network's (first) output from the spiking layers, if `refit`
    may refit it (constant weights no other node reads; a neuron before it)."""
    prod = g.producers(model.graph).get(model.graph.output[0].name)
    return prod if prod is not None and prod.op_type in ("Conv", "Gemm") and ir.neurons(model) \
        else None


def _refittable(model: onnx.ModelProto, net: SpikingNetwork, run: LayerwiseRun, spool: Spool,
                holder: onnx.NodeProto, ann_key: str) -> Synapse | None:
    """``holder`` as a :class:`Synapse` fitted to the ANN values spooled under "ann:<ann_key>",
    unless another node reads its weight or bias or its form is not supported."""
    users = g.consumers(model.graph)
    params = [p for p in holder.input[1:3] if p]
    if any(len(users.get(p, [])) != 1 or g.const_value(model.graph, p) is None for p in params) \
            or not Synapse.supports(holder, g.const_value(model.graph, holder.input[1])):
        return None
    source = holder.input[0]
    ann = Chunks(spool, "ann:" + ann_key, len(run.bounds))

    def rate(c: int) -> torch.Tensor:
        value = run.evaluate(source, c)
        return value.mean(0) if run.varying(source) else value

    def write(w: np.ndarray, b: np.ndarray | None) -> None:
        g.set_initializer(model.graph, holder.input[1], w)
        if b is not None:
            g.set_initializer(model.graph, holder.input[2], b)

    return Synapse(holder, net.parameter(holder.input[1]),
                   net.parameter(holder.input[2]) if len(holder.input) > 2 and holder.input[2] else None,
                   rate, lambda c: ann[c], run.refresh, write)


def _step_bias(value: np.ndarray | None, steps: int, view: list[int]) -> torch.Tensor | None:
    """A neuron's step bias from the IR as the [T, *view] current of a T-step calibration."""
    if value is None:
        return None
    return torch.stack([_per_channel(row, view) for row in ir.step_bias_at(value, 0, steps)])


def _per_channel(value: np.ndarray, view: list[int]) -> torch.Tensor:
    arr = np.asarray(value, np.float32)
    if arr.size == view[0]:
        arr = arr.reshape(view)
    return torch.from_numpy(np.broadcast_to(arr, view).copy()) if arr.size in (1, view[0]) \
        else torch.from_numpy(arr.copy())


class CalibrateForT(Pass):
    """Fit each neuron layer, in order, at T = ctx.timesteps with ``steps`` (see module doc)."""

    name = "calibrate-for-T"
    changes_input = False  # its input is the network it falls back to and checks itself against

    def __init__(self, steps: Sequence[LayerStep] | None = None, samples: int = SAMPLES,
                 sample_steps: int = SAMPLE_STEPS, chunk: int | None = None,
                 memory: int = spool_budget, held_out: int = HELD_OUT, readout: str | bool = "judged",
                 work: int = SAMPLE_WORK, square: int = SAMPLE_SQUARE, chunk_bytes: int = CHUNK_BYTES
                 ) -> None:
        """``work``, ``square``: see :data:`SAMPLE_WORK`, :data:`SAMPLE_SQUARE` (0 for both:
        samples × T bounded by ``sample_steps`` alone);
        ``chunk``: samples simulated together (default: about 1,024 samples × T, fewer where
        the largest activation over them would pass ``chunk_bytes``); ``memory``:
        bytes of layer currents and ANN activations held in memory (the rest goes to disk);
        ``held_out``: at most this many calibration samples the fit does not use check the
        result (0: no check); ``readout``: with a :class:`FitWeights` step, also refit the
        Conv/Gemm computing the output (:class:`FitReadout`, same ridge): "judged" (the default)
        keeps the refit only where, cross-validated over the fit samples, it agrees with the ANN's
        predictions significantly more often than the readout as it came; True keeps it
        regardless, False does not refit."""
        if readout not in READOUT_MODES:
            raise ValueError(f"readout must be one of {READOUT_MODES}, not {readout!r}")
        self.steps = list(default_steps() if steps is None else steps)
        self.samples, self.sample_steps, self.work, self.square = samples, sample_steps, work, square
        self.chunk, self.memory, self.held_out, self.readout = chunk, memory, held_out, readout
        self.chunk_bytes = chunk_bytes
        self.chunks = 0
        """Chunks of samples the last run simulated."""
        self.check: dict[str, tuple[float, float]] = {}
        """The last held-out check: (agreement, output error) calibrated and uncalibrated."""
        self.spilled = 0
        """Bytes the last run wrote to disk (layer currents and ANN activations past ``memory``)."""
        self.layers: dict[str, LayerState] = {}
        self.readout_fit: ReadoutFit | None = None
        """What the last readout refit did (None: none)."""

    def fit_count(self, model: onnx.ModelProto, steps: int) -> int:
        """Calibration samples the fit at ``steps`` reads (the first ones; :func:`sample_count`)."""
        return sample_count(steps, self.samples, self.sample_steps, self.work,
                            macs(model) if self.work else 0, self.square)

    def reads(self, model: onnx.ModelProto, steps: int) -> int:
        """Leading calibration samples a run at ``steps`` can read: those it fits and, after them,
        those that check the fit. Given more, it reads no more: the same network."""
        return self.fit_count(model, steps) + self.held_out

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        if is_empty(ctx.calib):
            raise DataError("calibration for T needs calibration data",
                            hint="Pass --calib C.npz, or choose --calibration none.")
        t0 = time.perf_counter()
        steps = ctx.timesteps
        x = head(ctx.calib, self.fit_count(model, steps))
        rank = len(model.graph.input[0].type.tensor_type.shape.dim)
        if rank and x.ndim != rank:
            ctx.info(self.name, f"skipped: calibration samples of shape {list(x.shape[1:])} are "
                     "time-varying (one frame per step); layer-by-layer calibration runs on "
                     "static inputs")
            return model
        original, model = model, copy_model(model)
        neurons = {n.name: n for n in ir.neurons(model)}
        self.layers, self.check, self.readout_fit = {}, {}, None
        with Spool(self.memory) as spool:
            net = SpikingNetwork(model)
            fit = next((s for s in self.steps if isinstance(s, FitWeights)), None)
            weights = fit is not None
            head_node = _readout_holder(model) if weights and self.readout else None
            output = model.graph.output[0].name
            run = LayerwiseRun(net, x, steps, spool, chunk=self.chunk, chunk_bytes=self.chunk_bytes,
                               keep=[head_node.input[0]] if head_node is not None else ())
            self.chunks = len(run.bounds)
            spool_ann_activations(model, x, run.chunk, spool, currents=weights,
                                  extra=[output] if head_node is not None else ())
            with torch.no_grad():
                for name, currents in tqdm(run.layers(), total=len(neurons), desc=f"calibrating T={steps}",
                                           unit="layer", disable=not ctx.progress, leave=False):
                    n = neurons[name]
                    targets = Chunks(spool, "ann:" + n.output, len(run.bounds))
                    first = targets[0]
                    view = [first.shape[1]] + [1] * (first.dim() - 2)
                    layer = LayerState(name, currents, targets, steps,
                                       theta=_per_channel(n.threshold, view),
                                       v0=_per_channel(n.v_init, view), bias=torch.zeros(view),
                                       reset=n.reset, leak=n.leak,
                                       bias_foldable=can_fold_bias(model, n, view[0]),
                                       step_bias=_step_bias(n.step_bias, steps, view))
                    if weights:
                        layer.synapse = _synapse(model, net, run, spool, n, view[0])
                    for step in self.steps:
                        step(layer)
                    run.fire(name, lambda cur, _: layer.spikes(cur), layer.theta)
                    spool.drop("ann:" + n.output)
                    spool.drop("ann:" + n.input)
                    layer.synapse = None
                    layer.current = layer.target = []
                    self.layers[name] = layer
                syn = None if head_node is None else _refittable(model, net, run, spool, head_node, output)
                if syn is not None and fit_weights.too_wide(syn):
                    ctx.info(self.name, f"readout {head_node.name or head_node.op_type} kept as it came: "
                             f"{len(syn.matrix())} inputs, too many to refit in memory (normal matrix "
                             f"over {fit_weights.NORMAL_BYTES >> 20} MB)")
                elif syn is not None:
                    judged = self.readout == "judged"
                    self.readout_fit = r = FitReadout(fit.ridge, judge=judged)(syn, len(run.bounds))
                    where = head_node.name or head_node.op_type
                    verdict = "" if not judged else (
                        f"; cross-validated on {len(x)} sample(s), it predicts as the ANN where the "
                        f"readout as it came does not on {r.wins}, the reverse on {r.losses}")
                    ctx.info(self.name, (f"refitted the readout {where} to the ANN's output: squared error "
                                         f"per sample {r.before:.4g} -> {r.after:.4g}" if r.kept else
                                         f"readout {where} kept as it came") + verdict)
            self.spilled = spool.spilled
        for name, layer in self.layers.items():
            n = neurons[name]
            ir.set_initializer(model, n.node.input[1], layer.theta.numpy().astype(np.float32))
            ir.set_initializer(model, n.node.input[2], layer.v0.numpy().astype(np.float32))
            if bool(torch.any(layer.bias != 0)):
                apply_bias_correction(model, n, layer.bias.numpy().astype(np.float64))
            ir.set_step_bias(model, n.node, None if layer.step_bias is None
                             else layer.step_bias.numpy().astype(np.float32))
        g.remove_unused_initializers(model.graph)
        first = sum(lay.history[0][1] for lay in self.layers.values() if lay.history)
        last = sum(lay.history[-1][2] for lay in self.layers.values() if lay.history)
        ctx.stats["calibrate-for-T"] = {name: lay.history for name, lay in self.layers.items()}
        ctx.info(self.name, f"fitted {len(self.layers)} neuron layer(s) at T={steps} on {len(x)} "
                 f"sample(s) with {', '.join(s.name for s in self.steps)}: summed layer error "
                 f"{first:.4g} -> {last:.4g} ({time.perf_counter() - t0:.1f} s)")
        wide = [name for name, lay in self.layers.items() if any(h[0] == WIDE for h in lay.history)]
        if wide:
            ctx.info(self.name, f"kept the weights feeding {', '.join(wide)}: too many inputs to refit "
                     f"in memory (normal matrix over {fit_weights.NORMAL_BYTES >> 20} MB)")
        hold = head(ctx.calib, len(x) + self.held_out)[len(x):] if self.held_out else x[:0]
        if len(hold) >= MIN_HELD_OUT:
            scores = {"calibrated": output_agreement(model, original, hold, steps),
                      "uncalibrated": output_agreement(original, original, hold, steps)}
            self.check = scores
            (agree_c, err_c), (agree_u, err_u) = scores["calibrated"], scores["uncalibrated"]
            verdict = "kept" if agree_c >= agree_u or err_c <= err_u else "dropped"
            ctx.info(self.name, f"held-out check on {len(hold)} calibration sample(s) the fit did not "
                     f"use: agreement with the ANN {100 * agree_c:.1f} % calibrated vs "
                     f"{100 * agree_u:.1f} % without, output error {err_c:.4g} vs {err_u:.4g}: "
                     f"calibration {verdict}")
            if verdict == "dropped":
                return original
        return model
