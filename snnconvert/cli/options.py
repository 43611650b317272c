"""Options shared by several commands (conversion settings, data files)."""
from __future__ import annotations

from typing import Callable

import click

from ..errors import OptionError
from ..passes.pipeline import CALIBRATION_MODES, DEFAULT_CALIBRATION, DEFAULT_DISTILL, DISTILL_METHODS


def conversion_options(f: Callable) -> Callable:
    """--calib, --norm, --per-channel, --v-init, --calibration, --distill, --agreement, --reset,
    --leak, --encoding, --readout."""
    options = [
        click.option("--calib", type=click.Path(), default=None,
                     help="Calibration data (.npz with x, or any --data form) for threshold normalization."),
        click.option("--norm", default="percentile:99.99", show_default=True,
                     help="Threshold normalization: max or percentile:P."),
        click.option("--per-channel/--per-layer", default=True, show_default=True,
                     help="One threshold per channel, or one per layer."),
        click.option("--v-init", default="half", show_default=True,
                     type=click.Choice(["zero", "half", "optimized"]),
                     help="Initial membrane potential: 0, θ/2, or θ/2 + data-fitted bias correction "
                          "(the start that --calibration refines)."),
        click.option("--calibration", default=DEFAULT_CALIBRATION, show_default=True,
                     type=click.Choice(list(CALIBRATION_MODES)),
                     help="Fit the network for its T on the calibration data, layer by layer: refit = "
                          "least-squares refit of each layer's weights on its spiking input, then "
                          "threshold search, bias and potential calibration; fast = the same "
                          "without the weight refit (2-3x cheaper); temporal = refit, then a "
                          "per-channel bias for each time step (FTBC; not for --target nir); "
                          "full = refit, then the whole "
                          "network trained at T to reproduce the ANN's output (label-free "
                          "surrogate-gradient distillation, kept only if it agrees with the ANN "
                          "on held-out calibration samples at least as often, else the network "
                          "refit gives; costs minutes on CPU); tuned (the default) = refit, "
                          "then two epochs of full's distillation at T <= 16 (1.1-2.5x refit's "
                          "time), six more where those two won significantly more held-out "
                          "samples than they lost; none = --norm "
                          "thresholds and --v-init only."),
        click.option("--distill", default=None, type=click.Choice(list(DISTILL_METHODS)),
                     help=f"With --calibration tuned or full (refused otherwise; default {DEFAULT_DISTILL}): "
                          "the distillation's gradient backpropagated through the T steps with "
                          "the surrogate gradient (bptt), or straight through the SNN's rates "
                          "(rates: 3-6x faster; on ResNet-20 it agrees with the ANN 0.7-2.1 pt "
                          "less often)."),
        click.option("--agreement", default=99.0, show_default=True,
                     type=click.FloatRange(0, 100, min_open=True),
                     help="-T auto: the agreement with the ANN (%) the chosen T must reach on "
                          "held-out calibration samples."),
        click.option("--reset", default="subtract", show_default=True,
                     type=click.Choice(["subtract", "zero"]), help="Reset mode of the neurons."),
        click.option("--leak", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                     help="LIF leak per step (0 = IF)."),
        click.option("--maxpool-to-avgpool", is_flag=True,
                     help="Swap MaxPool for AveragePool (warns with the measured ANN accuracy effect)."),
        click.option("--encoding", default="analog", show_default=True,
                     help="Input encoding recorded in the IR: analog, frames (alias spikes), "
                          "rate:bernoulli[:SEED] or rate:deterministic."),
        click.option("--readout", default="membrane", show_default=True,
                     help="Readout recorded in the IR: membrane (mean), last, window:K or spikes."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_timesteps(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; every T must be a positive integer."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionError(f"--timesteps must be a comma-separated list of integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise OptionError(f"--timesteps must list positive integers, got '{text}'")
    return sorted(set(values))


DATA_HELP = ("a .npz with x and y; a .npy (memory-mapped) or a folder with x.npy and y.npy; a folder "
             "of .npz shards; an image folder with one sub-folder per class (see --preprocess); or a "
             ".toml naming one")


def data_options(f: Callable) -> Callable:
    """--preprocess and --workers: how streamed data (image folders, shards) is read."""
    options = [
        click.option("--preprocess", default=None,
                     help="Image folders: a .toml file or inline 'resize=36 crop=32 scale=255 "
                          "mean=0.49,0.48,0.45 std=0.25,0.24,0.26 layout=NCHW mode=RGB'."),
        click.option("--workers", type=click.IntRange(min=0), default=None,
                     help="Background loader processes (default: 2 for image folders, 1 for "
                          "shards, 0 for arrays)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class TimestepsOrAuto(click.ParamType):
    """A positive integer T, or 'auto' (the smallest T reaching --agreement)."""

    name = "T|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            t = int(value)
        except ValueError:
            self.fail(f"'{value}' is neither a positive integer nor 'auto'", param, ctx)
        if t < 1:
            self.fail(f"T must be at least 1, got {t}", param, ctx)
        return t
