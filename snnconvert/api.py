"""The Python API: convert an ANN to the spiking IR and evaluate it on a target."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from pathlib import Path

from . import evaluation, frontend, ir, onnxrt
from . import report as _report
from .data import input_shape, run_timesteps
from .datasets import Data, count, head, is_empty, open_data
from .errors import OptionError, TargetError
from .profiles import Profile, fit, load_profile
from .report import Report
from .passes import PassContext, Pipeline, default_pipeline
from .passes.calibrate_for_t import sample_count
from .passes.maxpool_to_avgpool import swap_max_pools
from .passes.pipeline import (CALIBRATION_MODES, DEFAULT_CALIBRATION, DEFAULT_DISTILL, DISTILL_METHODS,
                              DISTILLING, V_INIT_MODES)
from .runtime.device import torch_device
from .targets import get_target
from .targets.support import NodeSupport, refuse_unsupported
from .targets.support import target_support as _target_support


AUTO_TIMESTEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""The T that ``timesteps="auto"`` tries, smallest first."""


def convert(source: str | os.PathLike | onnx.ModelProto, calib: Data | None = None, *,
            timesteps: int | str = 32, norm: str = "percentile:99.99", per_channel: bool = True,
            v_init: str | float = "half", reset: str = "subtract", leak: float = 0.0,
            maxpool_to_avgpool: bool = False, calibration: str = DEFAULT_CALIBRATION, distill: str | None = None,
            agreement: float = 0.99,
            pipeline: Pipeline | None = None, progress: bool = False,
            log: list[tuple[str, str]] | None = None, calib_labels: np.ndarray | None = None,
            target: str | None = None, encoding: str = "analog", readout: str = "membrane",
            device: str = "cpu") -> onnx.ModelProto:
    """Load an ANN, check that it converts (and, with ``target``, that the target can hold every
    node, before any calibration), and run the conversion pipeline on it.

    ``calib``: inputs, or any data stream (see :mod:`snnconvert.datasets`); calibration
    statistics stream over it (sharded and reduced exactly under torch.distributed), passes that
    simulate read its first samples. ``calibration``: "tuned" (default) is "refit", then at T ≤ 16
    a brief label-free distillation (two epochs of "full"'s; 1.1-2.5x "refit"'s calibration time,
    +2 to +4 pt on ResNet-20 at T=4-16 over 3,000 test images); "refit" fits every neuron layer for
    ``timesteps``: a ridge least-squares refit of its Conv/Gemm weights on its actual spiking
    input, then threshold search, bias and potential calibration; "fast" skips the weight refit
    (about 2-3x cheaper, less accurate at low T on deep nets); "temporal" adds, after "refit",
    a per-channel bias for each time step (the neurons' step bias, :mod:`snnconvert.passes.step_bias`;
    a target that holds none, NIR, gets "refit"); "full" adds, after "refit", a
    label-free distillation of the whole network at T (surrogate-gradient training to the
    ANN's output on the calibration samples, kept only where held-out samples say it helps,
    else the network is "refit"'s;
    see :mod:`snnconvert.passes.distill`; ``distill``, for "tuned" and "full": its gradient
    backpropagated through the T steps, "bptt" (the default, None), or straight through the rates,
    "rates": 3-6x faster, less faithful);
    "none" keeps the percentile thresholds and ``v_init``. ``timesteps="auto"`` picks the smallest T whose
    agreement with the ANN on held-out calibration samples reaches ``agreement`` (see
    :func:`choose_timesteps`). Returns the spiking IR (an ONNX model). ``log`` receives
    (step, message) pairs. ``encoding`` and ``readout`` are recorded in the IR (see
    :class:`ir.Encoding`, :class:`ir.Readout`); time-varying calibration data [N, T, ...] is
    calibrated over all of its steps. ``device``: the torch device the distillation trains on
    ("cuda": seconds where the CPU takes minutes); the rest of the calibration runs on the CPU.
    """
    torch_device(device)
    if isinstance(v_init, str) and v_init not in V_INIT_MODES:
        raise OptionError(f"unknown initial potential '{v_init}'",
                          hint=f"Use one of {', '.join(V_INIT_MODES)} or a fraction of θ.")
    if calibration not in CALIBRATION_MODES:
        raise OptionError(f"unknown calibration '{calibration}'",
                          hint=f"Use one of {', '.join(CALIBRATION_MODES)}.")
    if distill is not None and distill not in DISTILL_METHODS:
        raise OptionError(f"unknown distillation method '{distill}'",
                          hint=f"Use one of {', '.join(DISTILL_METHODS)}.")
    if distill is not None and calibration not in DISTILLING:
        raise OptionError(f"distillation method '{distill}' given, but calibration '{calibration}' "
                          "does not distil",
                          hint="Add --calibration full (or tuned), or drop --distill.")
    if timesteps == "auto":
        options = dict(norm=norm, per_channel=per_channel, v_init=v_init, reset=reset, leak=leak,
                       maxpool_to_avgpool=maxpool_to_avgpool, calibration=calibration,
                       distill=distill, pipeline=pipeline, progress=progress, calib_labels=calib_labels, target=target,
                       encoding=encoding, readout=readout, device=device)
        return choose_timesteps(source, calib, agreement=agreement, log=log, **options)[0]
    if not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise OptionError(f"timesteps must be a positive integer or 'auto', got {timesteps!r}")
    try:
        enc, out = ir.Encoding.parse(encoding), ir.Readout.parse(readout)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    if target is not None and target != "torch":  # torch runs every encoding and readout
        backend = get_target(target)
        if hasattr(backend, "check_io"):  # the target declares what it runs (its support.py)
            backend.check_io(enc, out)
        else:
            ir.check_io(enc, out, target, getattr(backend, "TIME_VARYING_INPUT", False))
    entries: list[tuple[str, str]] = []
    model = frontend.load_model(source, log=entries)
    mapping = frontend.check_supported(model)
    if target is not None:
        check_target(model, target, maxpool_to_avgpool=maxpool_to_avgpool, mapping=mapping)
    if enc.time_varying and calibration != "none" and pipeline is None:
        # the layer-by-layer fit simulates the analog input; with frames or rate coding the
        # first layer sees other currents, so the fit would be for the wrong network
        entries.append(("calibrate-for-T", f"skipped: input encoding '{enc}' is time-varying "
                                           "(calibration for T fits analog input)"))
        calibration = "none"
    if calibration == "temporal" and target is not None and not getattr(get_target(target), "STEP_BIAS", True):
        entries.append(("calibrate-for-T", f"no step bias: the {target} target holds none "
                                           "(calibration 'refit' instead of 'temporal')"))
        calibration = "refit"
    pipe = pipeline or default_pipeline(norm, per_channel, v_init, reset, leak,
                                        maxpool_to_avgpool=maxpool_to_avgpool,
                                        calibration=calibration,
                                        distill=DEFAULT_DISTILL if distill is None else distill)
    ctx = PassContext(calib=calib, timesteps=timesteps, progress=progress, device=device,
                      options={} if calib_labels is None else {"calib_labels": calib_labels})
    handed = [model]
    del model  # the pipeline gets the only reference: its passes change it in place, not copies
    snn = pipe(handed.pop(), ctx, owned=True)
    ir.ensure_domain(snn)
    ir.set_meta(snn, "timesteps", str(timesteps))
    ir.set_meta(snn, "passes", [name for name in pipe.names()])
    ir.set_meta(snn, "encoding", str(enc))
    ir.set_meta(snn, "readout", str(out))
    if out.kind == "spikes" and ir.output_neuron(snn) is None:
        raise OptionError(f"readout 'spikes' needs a neuron at the network's output; "
                          f"'{snn.graph.output[0].name}' is not one",
                          hint="Use --readout membrane, last or window:K.")
    entries.extend(ctx.log)
    if log is not None:
        log.extend(entries)
    return snn


@dataclass
class TimestepChoice:
    """What ``timesteps="auto"`` tried: agreement with the ANN per T, on ``samples`` held-out
    calibration samples, and the T it picked."""

    timesteps: int
    target: float
    samples: int
    agreement: dict[int, float] = field(default_factory=dict)
    held_out: bool = True

    def reason(self) -> str:
        tried = ", ".join(f"T={t}: {100 * a:.1f} %" for t, a in self.agreement.items())
        where = "held-out calibration samples" if self.held_out else \
            "calibration samples (none left to hold out: pass more calibration data)"
        got = self.agreement[self.timesteps]
        verdict = (f"T={self.timesteps} is the smallest T whose agreement with the ANN reaches "
                   f"{100 * self.target:g} %") if got >= self.target else (
            f"no T up to {self.timesteps} reaches {100 * self.target:g} %: T={self.timesteps} agrees best")
        return f"{verdict} (on {self.samples} {where}; {tried})"


def choose_timesteps(source: str | os.PathLike | onnx.ModelProto, calib: Data, *,
                     agreement: float = 0.99, candidates: tuple[int, ...] = AUTO_TIMESTEPS,
                     held_out: int = 500, log: list[tuple[str, str]] | None = None,
                     **convert_options) -> tuple[onnx.ModelProto, TimestepChoice]:
    """Convert for each T in ``candidates`` (smallest first) until the SNN's prediction agrees
    with the ANN's on ``agreement`` of calibration samples that calibration did not fit on: the
    ``held_out`` samples after the first :data:`~snnconvert.passes.calibrate_for_t.SAMPLES`, or,
    with fewer samples than that, the last fifth (at most ``held_out``), kept out of calibration.

    Returns the network for the chosen T and what was measured; ``log`` gets the reason.
    """
    if not 0 < agreement <= 1:
        raise OptionError(f"agreement must be in (0, 1], got {agreement}",
                          hint="e.g. 0.99 for 99 %.")
    if is_empty(calib):
        raise OptionError("-T auto needs calibration data to measure agreement",
                          hint="Pass --calib C.npz, or choose -T.")
    ann = frontend.load_model(source)
    total = count(calib) if not isinstance(calib, np.ndarray) else len(calib)
    if total is not None and total <= max(sample_count(t) for t in candidates) + held_out:
        # too few to spare the held-out samples beyond the ones calibration reads: keep the
        # last fifth (at most ``held_out``) aside and calibrate on the rest
        x = head(calib, total)
        spare = min(held_out, total // 5)
        calib, hold = x[:total - spare], x[total - spare:]
    else:
        used = max(sample_count(t) for t in candidates)
        hold = head(calib, used + held_out)[used:]
    choice = TimestepChoice(0, agreement, len(hold), held_out=len(hold) > 0)
    if not len(hold):
        hold = head(calib, held_out)
        choice.samples = len(hold)
    best: tuple[float, int, onnx.ModelProto] | None = None
    entries: list[tuple[str, str]] = []
    for t in sorted(candidates):
        trial: list[tuple[str, str]] = []
        snn = convert(ann, calib, timesteps=t, log=trial, **convert_options)
        score = _evaluate(snn, hold, None, [t], target="torch", ann=ann).rows[0].agreement
        choice.agreement[t] = score
        if best is None or score > best[0]:
            best = (score, t, snn)
            entries = trial
        if score >= agreement:
            best = (score, t, snn)
            entries = trial
            break
    choice.timesteps = best[1]
    entries.append(("choose-T", choice.reason()))
    if log is not None:
        log.extend(entries)
    return best[2], choice


def check_target(model: onnx.ModelProto, target: str, *, maxpool_to_avgpool: bool = False,
                 mapping: list | None = None) -> list[NodeSupport]:
    """The target's verdict on every node of a loaded ANN (as the conversion will present it);
    raises TargetError naming every node it cannot hold."""
    backend = get_target(target)
    mapping = mapping if mapping is not None else frontend.coverage(model)
    if maxpool_to_avgpool:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        swap_max_pools(model)
    return refuse_unsupported(model, backend.supports, target, {m.name: m.status for m in mapping})


def target_support(model: onnx.ModelProto, target: str, mapping: list | None = None
                   ) -> list[NodeSupport]:
    """The target's verdict on every node of a loaded ANN, without raising."""
    mapping = mapping if mapping is not None else frontend.coverage(model)
    return _target_support(model, get_target(target).supports, {m.name: m.status for m in mapping})


def build_report(model: onnx.ModelProto, x: Data, y: np.ndarray | None = None,
                 timesteps: int = 32, profile: str | Profile = "generic-float",
                 out_dir: str | os.PathLike | None = None, batch_size: int = 128,
                 name: str = "model") -> Report:
    """Resource, energy and diagnostics report of ``model`` on ``x`` for a hardware profile."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    return _report.build_report(model, x, y, timesteps, prof, fit(model, prof), out_dir,
                                batch_size, name)


def run_report(model_path: str | os.PathLike, data_path: str | os.PathLike, timesteps: int | None = None,
               profile: str = "generic-float", json_path: str | os.PathLike | None = None,
               out_dir: str | os.PathLike | None = None, preprocess: str | None = None,
               workers: int | None = None, limit: int | None = None) -> Report:
    """The ``snnconvert report`` command: refuses (TargetError) a network that does not fit.
    ``data_path`` is any form :func:`snnconvert.datasets.open_data` reads; ``timesteps``
    defaults to the length of time-varying data, else 32."""
    model = ir.load(model_path)
    prof = load_profile(profile)
    fitted = fit(model, prof)
    if not fitted.fits:
        raise TargetError(f"the network does not fit on '{prof.name}': " + "; ".join(fitted.reasons),
                          hint="Use a larger profile (more chips) or a smaller network.")
    shape = input_shape(model)
    data = open_data(data_path, preprocess=preprocess, shape=shape, what="report",
                     limit=limit, workers=workers)
    (timesteps,) = run_timesteps(data.sample_shape, shape, None if timesteps is None else [timesteps],
                                 [32], f"report data {data_path}")
    report = _report.build_report(model, data, None, timesteps, prof, fitted, out_dir,
                                  name=Path(model_path).name.split(".")[0])
    if json_path is not None:
        ir.atomic_write_bytes(json_path, report.to_json().encode())
    return report


def ann_outputs(model: onnx.ModelProto, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of ``model`` under onnxruntime (an IR runs as its rate-limit ANN)."""
    return onnxrt.outputs(model, x, batch_size)


@dataclass
class EvalRow:
    timesteps: int
    accuracy: float | None
    agreement: float
    firing_rate: float
    layer_rates: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    """ANN accuracy and, per T, the SNN's accuracy, agreement with the ANN, and firing rate."""

    ann_accuracy: float | None
    rows: list[EvalRow] = field(default_factory=list)
    ann_is_rate_limit: bool = False
    target: str = "torch"
    samples: int = 0

    def to_json(self) -> dict:
        return {"ann": {"accuracy": self.ann_accuracy},
                "snn": [{"timesteps": r.timesteps, "accuracy": r.accuracy,
                         "agreement": r.agreement, "firing_rate": r.firing_rate,
                         "layer_rates": r.layer_rates} for r in self.rows],
                "target": self.target, "samples": self.samples}


def evaluate(snn: onnx.ModelProto | str | os.PathLike, x: Data, y: np.ndarray | None = None,
             timesteps: list[int] = (32,), *, target: str = "torch",
             ann: onnx.ModelProto | str | os.PathLike | None = None,
             progress: bool = False, workers: int | None = None, **target_options) -> EvalReport:
    """Simulate ``snn`` on ``target`` and compare with ``ann`` (the ANN as exported, a model or its
    path, loaded as ``convert`` loads it; default: the IR's rate-limit ANN).

    ``x``: inputs with labels ``y``, or any data (a Source from :func:`datasets.open_data`, a
    DataLoader, an iterable of (x, y) batches) read batch by batch; under torch.distributed
    each rank evaluates its share and the counts are summed, equal to a single-process run.
    """
    return _evaluate(snn, x, y, timesteps, target=target, ann=None if ann is None else frontend.load_model(ann),
                     progress=progress, workers=workers, **target_options)


def _evaluate(snn: onnx.ModelProto | str | os.PathLike, x: Data, y: np.ndarray | None,
              timesteps: list[int], *, target: str, ann: onnx.ModelProto | None,
              progress: bool = False, workers: int | None = None, **target_options) -> EvalReport:
    """:func:`evaluate` against ``ann`` already loaded by the front-end (or None)."""
    backend = get_target(target)
    source = snn
    if isinstance(snn, (str, os.PathLike)) and str(snn).endswith(".snn.onnx"):
        source = ir.load(snn)
    reference = ann if ann is not None else (
        source if isinstance(source, onnx.ModelProto) else getattr(backend, "read_ir", ir.load)(snn))
    ts = sorted(set(timesteps))
    data = (x, y) if y is not None else x
    counts = evaluation.tally(source, reference, data, ts, backend, target_options, workers=workers,
                              progress=progress)
    labelled = counts.labelled > 0
    report = EvalReport(counts.ann_correct / counts.samples if labelled else None,
                        ann_is_rate_limit=ann is None, target=target, samples=counts.samples)
    for t in ts:
        report.rows.append(EvalRow(t, counts.correct[t] / counts.samples if labelled else None,
                                   counts.agree[t] / counts.samples, counts.firing_rate(t),
                                   counts.layer_rates(t)))
    return report


def evaluate_conversion(source: str | os.PathLike | onnx.ModelProto, calib: Data | None,
                        x: Data, y: np.ndarray | None, timesteps: list[int], *,
                        target: str = "torch", tune_t: int | str | None = None,
                        progress: bool = False, target_options: dict | None = None,
                        workers: int | None = None, log: list[tuple[str, str]] | None = None,
                        **convert_options) -> EvalReport:
    """Convert an ANN and evaluate it against its own onnxruntime accuracy.

    Calibration (the default) and ``v_init="optimized"`` fit the network to one T, so unless
    ``tune_t`` pins one, the network is converted once per T and each T is evaluated on its own
    conversion. ``tune_t="auto"`` converts once for the T :func:`choose_timesteps` picks and
    evaluates that T; ``log`` receives the conversions' (step, message) pairs.
    """
    ann = frontend.load_model(source)
    ts = sorted(set(timesteps))
    if tune_t == "auto":
        snn = convert(ann, calib, timesteps="auto", progress=progress, log=log, target=target,
                      **convert_options)
        ts = [ir.timesteps(snn)]
        return _evaluate(snn, x, y, ts, target=target, ann=ann, progress=progress, workers=workers,
                        **(target_options or {}))
    per_t = tune_t is None and (convert_options.get("v_init") == "optimized"
                                or convert_options.get("calibration", DEFAULT_CALIBRATION) != "none")
    groups = [[t] for t in ts] if per_t else [ts]
    report: EvalReport | None = None
    for group in groups:
        snn = convert(ann, calib, timesteps=tune_t or max(group), progress=progress, target=target,
                      log=log, **convert_options)
        part = _evaluate(snn, x, y, group, target=target, ann=ann, progress=progress, workers=workers,
                        **(target_options or {}))
        if report is None:
            report = part
        else:
            report.rows.extend(part.rows)
    return report
