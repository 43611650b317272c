"""``snnconvert convert MODEL.onnx``: write the spiking IR and the target's artifact."""
from __future__ import annotations

from pathlib import Path

import click

from .. import api, ir
from ..data import input_shape, load_npz
from ..errors import OptionError
from ..frontend import load_model
from ..targets import TARGETS, get_target
from .options import conversion_options

ARTIFACT_SUFFIX = {"torch": ".pt", "lava": ".lava", "nir": ".nir"}


def default_output(model: Path) -> Path:
    name = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(name + ".snn.onnx")


def artifact_path(out: Path, target: str) -> Path:
    base = out.name[: -len(".snn.onnx")] if out.name.endswith(".snn.onnx") else out.stem
    return out.with_name(base + ARTIFACT_SUFFIX[target])


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(TARGETS), default="torch", show_default=True)
@conversion_options
@click.option("-T", "--timesteps", default=32, show_default=True, type=click.IntRange(min=1),
              help="Timesteps the network is tuned for (stored in the IR).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .snn.onnx (default: next to MODEL).")
@click.option("--fixed-point", is_flag=True, help="lava: quantize to Loihi 2 fixed point.")
@click.option("--strict", is_flag=True, help="nir: refuse instead of warning on semantic losses.")
def command(model: Path, target: str, calib: str | None, norm: str, per_channel: bool, v_init: str,
            reset: str, leak: float, maxpool_to_avgpool: bool, timesteps: int, output: Path | None,
            fixed_point: bool, strict: bool) -> None:
    """Convert MODEL.onnx to a spiking network (.snn.onnx + the target's artifact)."""
    backend = get_target(target)
    out = output or default_output(model)
    if out.resolve() == model.resolve():
        raise OptionError(f"output {out} would overwrite the input model",
                          hint="Choose another path with -o.")
    calib_x = calib_y = None
    if calib is not None:
        calib_data = load_npz(calib, labels=False, shape=input_shape(load_model(model)),
                              what="calibration")
        calib_x, calib_y = calib_data.x, calib_data.y
    log: list[tuple[str, str]] = []
    snn = api.convert(model, calib_x, timesteps=timesteps, norm=norm, per_channel=per_channel,
                      v_init=v_init, reset=reset, leak=leak,
                      maxpool_to_avgpool=maxpool_to_avgpool, progress=True, log=log,
                      calib_labels=calib_y)
    for step, message in log:
        click.echo(f"  {step:22s} {message}")
    options = {"fixed_point": fixed_point} if target == "lava" else (
        {"strict": strict} if target == "nir" else {})
    if target == "lava" and fixed_point and calib_x is not None:
        options["calib"] = calib_x
    artifact = backend.compile(snn, artifact_path(out, target), **options)
    ir.save(snn, out)
    click.echo(f"wrote {out} and {artifact} (target {target}, T={timesteps})")
