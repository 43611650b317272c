"""``snnconvert finetune MODEL.snn.onnx --data TRAIN.npz``: train a converted network with
surrogate gradients (BPTT, SNN2ANN or Joint A-SNN) and write the tuned IR."""
from __future__ import annotations

from pathlib import Path

import click

from .. import distributed, ir
from ..data import input_shape, run_timesteps
from ..datasets import open_data
from ..finetune import METHODS, FinetuneConfig, finetune
from ..finetune.config import JOINT_NORMS, PRECISIONS
from ..runtime.neurons import SURROGATES
from .options import DATA_HELP, data_options


def default_output(model: Path) -> Path:
    base = model.name[: -len(".snn.onnx")] if model.name.endswith(".snn.onnx") else model.stem
    return model.with_name(base + ".tuned.snn.onnx")


@click.command("finetune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="Training data: " + DATA_HELP + ".")
@click.option("--val", "val_path", default=None, type=click.Path(),
              help="Validation data (any --data form), evaluated after every epoch.")
@data_options
@click.option("-T", "--timesteps", default=None, type=click.IntRange(min=1),
              help="Timesteps to train (and evaluate) at [default: 4; for time-varying data "
                   "x [N, T, ...] its length T].")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=0))
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Global batch: under torchrun each process takes its share of it.")
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda).")
@click.option("--surrogate", type=click.Choice(SURROGATES), default="atan", show_default=True)
@click.option("--method", type=click.Choice(METHODS), default="bptt", show_default=True,
              help="bptt: backprop through time; snn2ann: ANN branch fed the SNN's rates "
                   "(memory independent of T); joint: Joint A-SNN, ANN and SNN branches sharing "
                   "factorized weights, ANN->SNN distillation, the SNN branch written back.")
@click.option("--train-thresholds/--freeze-thresholds", default=True, show_default=True)
@click.option("--leak", default=None, type=click.FloatRange(0, 1, max_open=True),
              help="Set every neuron's LIF leak per step before training (default: keep).")
@click.option("--train-leak", is_flag=True, help="Learn each layer's LIF leak (in [0, 0.999]).")
@click.option("--sharpen-epochs", default=0, show_default=True, type=click.IntRange(min=0),
              help="pipe-S pre-stage: epochs of sharpened-ReLU ANN training before the SNN epochs.")
@click.option("--delays", "max_delay", default=0, show_default=True, type=click.IntRange(min=0),
              help="DCLS: learn one delay (0..D steps) per connection of every dense layer, written "
                   "into the IR as DelayDense synapses (0 = off).")
@click.option("--freeze-delays", is_flag=True,
              help="With --delays: keep the initial random delays fixed (train weights only).")
@click.option("--delay-init", type=click.Choice(["uniform", "zero"]), default="uniform", show_default=True,
              help="With --delays: initial delays drawn uniformly in 0..D (DCLS) or all 0.")
@click.option("--delay-ste", is_flag=True,
              help="With --delays: once σ is annealed, run the rounded delays forward with the "
                   "Gaussian gradient (straight-through), so training sees the deployed integer net.")
@click.option("--joint-norm", type=click.Choice(JOINT_NORMS), default="frozen", show_default=True,
              help="With --method joint: the BatchNorm re-introduced per branch (frozen: statistics "
                   "of the first batch, γ/β trained; batch: the paper's; none).")
@click.option("--joint-branches", default=3, show_default=True, type=click.IntRange(min=0),
              help="With --method joint: auxiliary classifier heads on intermediate neuron layers.")
@click.option("--joint-alpha", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="With --method joint: weight α of the distillation terms (CE gets 1-α).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Use the first N training samples.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Tuned .snn.onnx (default: MODEL.tuned.snn.onnx).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint written after every epoch (default: OUTPUT.ckpt).")
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Continue from a checkpoint (with any number of processes).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Also write the checkpoint every N global batches (resumable mid-epoch).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="bf16: bfloat16 autocast for the forward passes (GPUs).")
def command(model: Path, data_path: str, val_path: str | None, preprocess: str | None,
            workers: int | None, timesteps: int | None, epochs: int, lr: float,
            batch_size: int, weight_decay: float, device: str, surrogate: str, method: str,
            train_thresholds: bool, leak: float | None, train_leak: bool, sharpen_epochs: int,
            max_delay: int, freeze_delays: bool, delay_init: str, delay_ste: bool, joint_norm: str,
            joint_branches: int, joint_alpha: float, limit: int | None,
            seed: int, output: Path | None, checkpoint: Path | None, resume: Path | None,
            checkpoint_every: int | None, precision: str) -> None:
    """Fine-tune a converted network MODEL (.snn.onnx) on labelled data.

    Several processes: ``torchrun --nproc-per-node N -m snnconvert finetune ...`` (DDP; gloo on
    CPU, nccl with --device cuda, one GPU per process); rank 0 writes the checkpoint and output."""
    device = distributed.init_from_env(device)
    snn = ir.load(model)
    shape = input_shape(snn)
    train = open_data(data_path, preprocess=preprocess, labels=True, shape=shape, what="training",
                      limit=limit, workers=workers)
    val = open_data(val_path, preprocess=preprocess, labels=True, shape=shape, what="validation",
                    workers=workers) if val_path else None
    (timesteps,) = run_timesteps(train.sample_shape, shape, None if timesteps is None else [timesteps],
                                 [4], f"training data {data_path}")
    if val is not None:
        run_timesteps(val.sample_shape, shape, [timesteps], [4], f"validation data {val_path}")
    output = output or default_output(model)
    checkpoint = checkpoint or output.with_name(output.name + ".ckpt")
    cfg = FinetuneConfig(timesteps=timesteps, epochs=epochs, lr=lr, batch_size=batch_size,
                         weight_decay=weight_decay, device=device, surrogate=surrogate, method=method,
                         train_thresholds=train_thresholds, leak=leak, train_leak=train_leak,
                         sharpen_epochs=sharpen_epochs, delays=max_delay,
                         train_delays=not freeze_delays, delay_init=delay_init,
                         delay_ste=delay_ste,
                         joint_norm=joint_norm, joint_branches=joint_branches, joint_alpha=joint_alpha,
                         seed=seed, precision=precision)
    tuned, history = finetune(snn, train, None, val, None, config=cfg, checkpoint=checkpoint,
                              resume=resume, checkpoint_every=checkpoint_every, progress=True)
    if not distributed.is_main():
        return
    ir.save(tuned, output)
    if history.initial_val_accuracy is not None:
        click.echo(f"validation accuracy at T={timesteps} before: {history.initial_val_accuracy:.4f}")
    if history.epochs and history.epochs[-1].val_accuracy is not None:
        click.echo(f"validation accuracy at T={timesteps} after {history.epochs[-1].epoch} epoch(s): "
                   f"{history.epochs[-1].val_accuracy:.4f}")
    click.echo(f"wrote {output} (checkpoint {checkpoint})")
