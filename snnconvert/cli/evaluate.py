"""``snnconvert eval MODEL --data D.npz``: ANN vs SNN accuracy, agreement and firing rate per T."""
from __future__ import annotations

import json
from pathlib import Path

import click
import onnx

from .. import api, distributed, ir
from ..data import input_shape, run_timesteps
from ..datasets import open_data
from ..errors import OptionError
from ..frontend import load_model
from ..targets import TARGETS, get_target
from .options import DATA_HELP, TimestepsOrAuto, conversion_options, data_options, parse_timesteps


def read_converted(path: Path) -> tuple[bool, onnx.ModelProto | None]:
    """Whether ``path`` holds a converted network, and its IR when it is one ONNX file.

    Recognized by name (``.snn.onnx``, artifacts ``.pt``/``.nir``/``.lava`` or a directory with
    ``model.snn.onnx``) or by content (an ONNX file declaring the spiking domain); the file is
    parsed once. Anything else is an ANN, left to the front-end (which reports unreadable files).
    """
    if path.suffix in (".pt", ".lava", ".nir") or (path.is_dir() and (path / "model.snn.onnx").exists()):
        return True, None
    if path.name.endswith(".snn.onnx"):
        return True, ir.load(path)
    try:
        model = onnx.load(str(path)) if path.is_file() else None
    except Exception:  # not ONNX: the ANN loader reports it
        return False, None
    return (True, model) if model is not None and ir.is_snn(model) else (False, None)


DEFAULT_TIMESTEPS = [1, 2, 4, 8, 16, 32, 64]


@click.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="Evaluation data: " + DATA_HELP + ".")
@conversion_options
@data_options
@click.option("--timesteps", default=None,
              help="Comma-separated list of T [default: 1,2,4,8,16,32,64; for time-varying data "
                   "x [N, T, ...] its length T; longer T are refused].")
@click.option("-T", "tune_t", default=None, type=TimestepsOrAuto(),
              help="T the on-the-fly conversion is tuned for (default: each --timesteps gets its "
                   "own calibrated network; with --calibration none, the largest); 'auto': the "
                   "smallest T reaching --agreement, evaluated at that T.")
@click.option("--target", type=click.Choice(TARGETS), default="torch", show_default=True)
@click.option("--fixed-point", is_flag=True, help="lava: run the Loihi 2 fixed-point model.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of accuracy vs T.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Samples simulated side by side (default: 256 on torch, fewer where one sample's "
                   "tensors are large, e.g. 32 for VGG-19 at 224x224; 100 on lava).")
@click.option("--device", default="cpu", show_default=True,
              help="torch device (cpu, cuda) of the torch target's simulation and of the calibration's "
                   "distillation.")
@click.option("--synapses", type=click.Choice(["auto", "event", "dense"]), default="dense", show_default=True,
              help="torch on CPU: dense or event-driven synaptic kernels (auto: per layer, by timing; "
                   "faster on sparse layers, but the timed choice changes float32 summation order, so "
                   "figures can differ by a few spikes between runs; dense and event repeat exactly).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="torch: bf16 runs synaptic ops under bfloat16 autocast (membranes stay fp32); "
                   "meant for GPUs.")
def command(model: Path, data_path: str, calib: str | None, norm: str, per_channel: bool,
            v_init: str, calibration: str, distill: str | None, agreement: float, reset: str, leak: float,
            maxpool_to_avgpool: bool, encoding: str, readout: str, preprocess: str | None,
            workers: int | None, timesteps: str, tune_t: int | str | None, target: str,
            fixed_point: bool,
            json_path: Path | None, plot_path: Path | None, limit: int | None,
            batch_size: int | None, device: str, precision: str, synapses: str) -> None:
    """Evaluate MODEL (an ANN .onnx converted on the fly with --calib, or a converted network).

    Under ``torchrun --nproc-per-node N`` each process evaluates every N-th batch and the counts
    are summed: the figures equal a single-process run; rank 0 prints and writes."""
    device = distributed.init_from_env(device)
    asked = parse_timesteps(timesteps) if timesteps is not None else None
    backend = get_target(target)
    options: dict = {} if batch_size is None else {"batch_size": batch_size}
    if target == "torch":
        options["device"] = device
        options["precision"] = precision
        options["synapses"] = synapses
    elif precision != "fp32" or synapses != "dense":
        raise OptionError("--precision and --synapses apply to --target torch only")
    if target == "lava":
        options["fixed_point"] = fixed_point
    elif fixed_point:
        raise OptionError("--fixed-point applies to --target lava only")
    converted, snn_model = read_converted(model)
    if converted:
        ir_model = snn_model if snn_model is not None else (
            backend.read_ir(model) if hasattr(backend, "read_ir") else None)
        shape = input_shape(ir_model) if ir_model is not None else None
        data = open_data(data_path, preprocess=preprocess, labels=True, shape=shape,
                         what="evaluation", limit=limit, workers=workers)
        ts = run_timesteps(data.sample_shape, shape, asked, DEFAULT_TIMESTEPS,
                           f"evaluation data {data_path}")
        source = snn_model if snn_model is not None else model
        report = api.evaluate(source, data, None, ts, target=target, progress=True, workers=workers,
                              **options)
    else:
        shape = input_shape(load_model(model))
        data = open_data(data_path, preprocess=preprocess, labels=True, shape=shape,
                         what="evaluation", limit=limit, workers=workers)
        ts = run_timesteps(data.sample_shape, shape, asked, DEFAULT_TIMESTEPS,
                           f"evaluation data {data_path}")
        calib_data = open_data(calib, preprocess=preprocess, shape=shape,
                               what="calibration", workers=workers) if calib else None
        log: list[tuple[str, str]] = []
        report = api.evaluate_conversion(
            model, calib_data, data, None, ts, target=target, tune_t=tune_t, progress=True,
            target_options=options, workers=workers, log=log, norm=norm, per_channel=per_channel,
            v_init=v_init, calibration=calibration, distill=distill, agreement=agreement / 100, reset=reset,
            leak=leak, maxpool_to_avgpool=maxpool_to_avgpool, encoding=encoding, readout=readout,
            device=device)
        for step, message in log:
            if step == "choose-T" and distributed.is_main():
                click.echo(f"  {step:22s} {message}")
    if not distributed.is_main():
        return
    label = "ANN (rate limit of the IR)" if report.ann_is_rate_limit else "ANN"
    click.echo(f"{label} accuracy: {report.ann_accuracy:.4f}  ({report.samples} samples, target {target}"
               + (f", {distributed.world_size()} processes)" if distributed.world_size() > 1 else ")"))
    click.echo(f"{'T':>6} {'accuracy':>9} {'agreement':>10} {'firing rate':>12}")
    for row in report.rows:
        click.echo(f"{row.timesteps:>6} {row.accuracy:>9.4f} {row.agreement:>10.4f} {row.firing_rate:>12.4f}")
    if json_path is not None:
        ir.atomic_write_bytes(json_path, json.dumps(report.to_json(), indent=2).encode())
        click.echo(f"wrote {json_path}")
    if plot_path is not None:
        from ..plots import accuracy_vs_timesteps

        accuracy_vs_timesteps(report, plot_path, title=f"{model.name} ({target})")
        click.echo(f"wrote {plot_path}")
