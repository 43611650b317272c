"""``snnconvert report MODEL.snn.onnx --data D.npz``: resources, energy and diagnostics."""
from __future__ import annotations

import click

from .options import DATA_HELP, data_options


@click.command("report")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="Data (labels optional): " + DATA_HELP + ".")
@data_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N samples.")
@click.option("-T", "--timesteps", default=None, type=click.IntRange(min=1),
              help="T of the run [default: 32; for time-varying data x [N, T, ...] its length].")
@click.option("--profile", default="generic-float", show_default=True,
              help="Profile name in targets/ or a .toml path.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("-o", "--out-dir", type=click.Path(file_okay=False), default=None,
              help="Directory for the PNG plots.")
def command(model: str, data_path: str, preprocess: str | None, workers: int | None, limit: int | None,
            timesteps: int | None, profile: str, json_path: str | None, out_dir: str | None) -> None:
    """Per-layer neurons, synapses, firing rates, SOPs vs MACs, fit on a chip, energy, plots."""
    from ..api import run_report

    r = run_report(model, data_path, timesteps, profile, json_path, out_dir, preprocess=preprocess,
                   workers=workers, limit=limit)
    d = r.data
    click.echo(f"accuracy {d['snn_accuracy']} (ANN {d['ann_accuracy']}) at T={d['timesteps']}; "
               f"cores {d['fit']['total_cores']} on {profile}; energy SNN/ANN "
               f"{d['energy']['snn_over_ann']:.3g}")
