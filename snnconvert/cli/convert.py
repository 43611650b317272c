"""``snnconvert convert MODEL.onnx``: write the spiking IR and the target's artifact."""
from __future__ import annotations

from pathlib import Path

import click

from .. import api, distributed, ir
from ..data import input_shape
from ..datasets import head, open_data
from ..errors import OptionError
from ..frontend import load_model
from ..targets import TARGETS, get_target
from .options import TimestepsOrAuto, conversion_options, data_options

ARTIFACT_SUFFIX = {"torch": ".pt", "lava": ".lava", "nir": ".nir"}


IR_SUFFIX = ".snn.onnx"


def default_output(model: Path) -> Path:
    name = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(name + IR_SUFFIX)


def output_paths(model: Path, output: Path | None, target: str) -> tuple[Path, Path]:
    """(IR path, artifact path) that ``-o`` names: one path per artifact, never the same file.

    ``-o`` ending in the target's artifact suffix (``.pt``, ``.lava``, ``.nir``) names the
    artifact, and the IR goes beside it as ``.snn.onnx``; any other ``-o`` names the IR, and the
    artifact goes beside it (``X.snn.onnx``/``X.onnx``/``X`` -> ``X.pt``). Another target's
    artifact suffix is refused."""
    out = output or default_output(model)
    name = out.name
    suffix = ARTIFACT_SUFFIX[target]
    others = {s: t for t, s in ARTIFACT_SUFFIX.items() if t != target}
    if out.suffix in others:
        raise OptionError(f"-o {out} names a {others[out.suffix]} artifact, but the target is {target}",
                          hint=f"Use -o {out.with_suffix(suffix)} (or a .snn.onnx path) for --target {target}.")
    if name.endswith(IR_SUFFIX):
        base = name[: -len(IR_SUFFIX)]
    elif name.endswith(".onnx"):
        base = name[: -len(".onnx")]
    elif out.suffix == suffix:
        base = out.stem
    else:
        base = name
    ir_path = out.with_name(base + IR_SUFFIX) if out.suffix == suffix else out
    artifact = out.with_name(base + suffix)
    for path in (ir_path, artifact):
        if path.resolve() == model.resolve():
            raise OptionError(f"output {path} would overwrite the input model",
                              hint="Choose another path with -o.")
    return ir_path, artifact


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(TARGETS), default="torch", show_default=True)
@conversion_options
@data_options
@click.option("-T", "--timesteps", default="32", show_default=True, type=TimestepsOrAuto(),
              help="Timesteps the network is tuned for (stored in the IR); 'auto': the smallest "
                   "T whose agreement with the ANN on held-out calibration samples reaches "
                   "--agreement.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="X.pt / X.lava / X.nir names the target's artifact (the IR goes beside it "
                   "as X.snn.onnx); any other path names the IR (the artifact goes beside it). "
                   "Default: MODEL's name with .snn.onnx.")
@click.option("--fixed-point", is_flag=True, help="lava: quantize to Loihi 2 fixed point.")
@click.option("--strict", is_flag=True, help="nir: refuse instead of warning on semantic losses.")
@click.option("--device", default="cpu", show_default=True,
              help="torch device the calibration's distillation trains on (cpu, cuda); the rest runs on the CPU.")
def command(model: Path, target: str, calib: str | None, norm: str, per_channel: bool, v_init: str,
            calibration: str, distill: str | None, agreement: float, reset: str, leak: float, maxpool_to_avgpool: bool,
            encoding: str, readout: str, preprocess: str | None,
            workers: int | None, timesteps: int | str, output: Path | None,
            fixed_point: bool, strict: bool, device: str) -> None:
    """Convert MODEL.onnx to a spiking network (.snn.onnx + the target's artifact)."""
    backend = get_target(target)
    out, artifact_out = output_paths(model, output, target)
    device = distributed.init_from_env(device)
    calib_data = None
    if calib is not None:
        calib_data = open_data(calib, preprocess=preprocess, shape=input_shape(load_model(model)),
                               what="calibration", workers=workers)
    log: list[tuple[str, str]] = []
    snn = api.convert(model, calib_data, timesteps=timesteps, norm=norm, per_channel=per_channel,
                      v_init=v_init, reset=reset, leak=leak, calibration=calibration, distill=distill,
                      agreement=agreement / 100, maxpool_to_avgpool=maxpool_to_avgpool,
                      progress=True, log=log, target=target, encoding=encoding, readout=readout,
                      device=device)
    if not distributed.is_main():
        return
    for step, message in log:
        click.echo(f"  {step:22s} {message}")
    options = {"fixed_point": fixed_point} if target == "lava" else (
        {"strict": strict} if target == "nir" else {})
    if target == "lava" and fixed_point and calib_data is not None:
        options["calib"] = head(calib_data, 256)
    artifact = backend.compile(snn, artifact_out, **options)
    ir.save(snn, out)
    click.echo(f"wrote {out} and {artifact} (target {target}, T={ir.timesteps(snn)})")
