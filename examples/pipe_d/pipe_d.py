"""pipe-D end to end on emulated N-MNIST: an ANN trained on accumulated event frames, converted to
an LIF SNN that reads the frames one per step, fine-tuned on the frames with BPTT.

    .venv/bin/python examples/pipe_d/pipe_d.py [--train 6000] [--test 2000] [-T 10]
        [--ann-epochs 8] [--budget 120] [--lr 1e-3] [--leak 0.05] [--fixed-leak]
        [--out-dir out/pipe_d]

Steps (each timed, wall and CPU):
  1. data: MNIST digits -> saccade recordings -> T frames [N, T, 2, 34, 34] (out/pipe_d/{train,test}.npz,
     made once, reused while their settings match);
  2. ANN: a small CNN trained on the accumulated frames (the mean over time, what the SNN integrates);
     exported to ONNX (ann.onnx) beside the accumulated training frames (train_mean.npz);
  3. conversion: ``snnconvert.convert(..., encoding="frames")`` -> converted.snn.onnx;
  4. fine-tuning on the frames (BPTT, T = the frames' T) for --budget seconds of CPU time, test
     accuracy every --eval-every batches -> tuned.snn.onnx, curve.json.
MNIST comes from the shared folder (../shared beside the repository, or $SNNCONVERT_SHARED).
Single thread.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import snnconvert  # noqa: E402
from snnconvert import ir  # noqa: E402
from snnconvert.events import SaccadeConfig, accumulate_frames, images_to_dataset  # noqa: E402
from snnconvert.finetune import FinetuneConfig, Trainer  # noqa: E402
from snnconvert.finetune.curve import Curve, Stopwatch, train_with_curve  # noqa: E402

SIZE = 34
CHANNELS = 2


@dataclass
class EventData:
    """Emulated N-MNIST frames (float32 [N, T, 2, 34, 34] counts) and labels."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def timesteps(self) -> int:
        return int(self.x.shape[1])


def make_data(out: Path, n_train: int, n_test: int, timesteps: int, seed: int = 0) -> EventData:
    """Emulated N-MNIST from the first MNIST train/test images (written once to ``out``, reused
    while n, T and seed match): saccades with the real recording's noise, T equal time bins."""
    from datasets import mnist

    out.mkdir(parents=True, exist_ok=True)
    settings = {"train": n_train, "test": n_test, "timesteps": timesteps, "seed": seed}
    stamp = out / "data.json"
    fresh = not stamp.exists() or json.loads(stamp.read_text()) != settings
    config = SaccadeConfig(noise_hz=0.4, noise_p1=0.8)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        if fresh or not (out / f"{split}.npz").exists():
            images, labels = mnist(split, n)
            t0 = time.perf_counter()
            images_to_dataset(out / f"{split}.npz", images, labels, timesteps, config=config, seed=s,
                              progress=False)
            print(f"data: {n} {split} recordings -> {out / f'{split}.npz'} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    stamp.write_text(json.dumps(settings))
    with np.load(out / "train.npz") as f, np.load(out / "test.npz") as g:
        return EventData(f["x"].astype(np.float32), f["y"], g["x"].astype(np.float32), g["y"])


def event_cnn(width: int = 16) -> nn.Module:
    """conv-BN-ReLU-avgpool x2 + linear on [2, 34, 34] frames (every op converts)."""
    return nn.Sequential(
        nn.Conv2d(CHANNELS, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 8 * 8, 10))


def to_onnx(model: nn.Module) -> onnx.ModelProto:
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, CHANNELS, SIZE, SIZE), buf, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def ann_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 500])).argmax(1) for i in range(0, len(x), 500)])
    return float((pred.numpy() == y).mean())


def train_ann(model: nn.Module, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              epochs: int, lr: float = 2e-3, seed: int = 0, watch: Stopwatch | None = None) -> list[dict]:
    """Adam with a cosine schedule, batch 64; per epoch: the stopwatch's seconds and test accuracy
    (measured with ``watch`` stopped)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * ((len(x) + 63) // 64))
    rows = []
    for epoch in range(epochs):
        if watch:
            watch.start()
        model.train()
        for idx in np.array_split(rng.permutation(len(x)), (len(x) + 63) // 64):
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if watch:
            watch.stop()
        acc = ann_accuracy(model, x_test, y_test)
        rows.append({"epoch": epoch + 1, "wall_s": watch.wall_s if watch else None,
                     "cpu_s": watch.cpu_s if watch else None, "accuracy": acc})
        print(f"  ANN epoch {epoch + 1}: test acc {acc:.4f}" +
              (f" ({watch.wall_s:.0f} s wall, {watch.cpu_s:.0f} s cpu)" if watch else ""), flush=True)
    model.eval()
    return rows


def finetune_config(timesteps: int, lr: float, epochs: int, leak: float | None, train_leak: bool) -> FinetuneConfig:
    return FinetuneConfig(timesteps=timesteps, epochs=epochs, lr=lr, batch_size=32, leak=leak,
                          train_leak=train_leak)


@dataclass
class PipeD:
    """What one pipe-D run made: the ANN, the converted and the fine-tuned network, the curve."""

    ann: onnx.ModelProto
    converted: onnx.ModelProto
    trainer: Trainer
    curve: Curve
    info: dict


def run_pipe_d(data: EventData, *, ann_epochs: int, lr: float, leak: float | None, train_leak: bool,
               budget_s: float, clock: str = "cpu", epochs: int = 3, eval_every: int = 40,
               deadline_s: float | None = None, stop: Callable[[Curve], bool] | None = None) -> PipeD:
    """pipe-D on one clock from the start: the ANN trained on the accumulated frames, converted
    (encoding ``frames``, calibrated on accumulated frames), fine-tuned on the frames with BPTT at
    the frames' T for ``budget_s`` seconds on ``clock`` (``epochs``: the cosine schedule's length),
    at most until ``deadline_s`` seconds from the start (ANN training and conversion included),
    or until ``stop(curve)`` says so."""
    watch = Stopwatch()
    watch.start()
    acc_x, acc_test = accumulate_frames(data.x), accumulate_frames(data.x_test)
    watch.stop()
    torch.manual_seed(0)
    ann = event_cnn()
    print(f"pipe-D: ANN on accumulated frames, {ann_epochs} epochs of {len(acc_x)}", flush=True)
    ann_rows = train_ann(ann, acc_x, data.y, acc_test, data.y_test, ann_epochs, watch=watch)
    before = (watch.wall_s, watch.cpu_s)
    watch.start()
    model = to_onnx(ann)
    snn = snnconvert.convert(model, acc_x[:1000], timesteps=data.timesteps, encoding="frames")
    watch.stop()
    convert_s = (watch.wall_s - before[0], watch.cpu_s - before[1])
    budget = budget_s if deadline_s is None else max(min(budget_s, deadline_s - watch.seconds(clock)), 1.0)
    trainer = Trainer(snn, finetune_config(data.timesteps, lr, epochs, leak, train_leak))
    trainer.fit_logit_scale(data.x, data.y)
    print(f"pipe-D: ANN {ann_rows[-1]['accuracy']:.4f} after {before[0]:.0f} s wall / {before[1]:.0f} s cpu, "
          f"conversion {convert_s[0]:.1f} s wall; fine-tuning for up to {budget:.0f} s on {clock}", flush=True)
    curve = train_with_curve(trainer, data.x, data.y, data.x_test, data.y_test, budget_s=budget, clock=clock,
                             eval_every=eval_every, name="pipe-D: ANN + conversion + BPTT",
                             offset_wall_s=watch.wall_s, offset_cpu_s=watch.cpu_s, stop=stop)
    info = {"ann": ann_rows, "ann_accuracy": ann_rows[-1]["accuracy"], "ann_train_wall_s": before[0],
            "ann_train_cpu_s": before[1], "convert_wall_s": convert_s[0], "convert_cpu_s": convert_s[1],
            "converted_accuracy": curve.points[0].accuracy, "ft_epochs_planned": epochs}
    return PipeD(model, snn, trainer, curve, info)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=6000, help="training recordings (first N MNIST train images)")
    ap.add_argument("--test", type=int, default=2000, help="test recordings (first N MNIST test images)")
    ap.add_argument("-T", "--timesteps", type=int, default=10, help="frames per recording")
    ap.add_argument("--ann-epochs", type=int, default=8)
    ap.add_argument("--budget", type=float, default=120.0, help="CPU seconds of SNN fine-tuning")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    ap.add_argument("--leak", type=float, default=0.05, help="LIF leak per step set before fine-tuning")
    ap.add_argument("--fixed-leak", dest="train_leak", action="store_false",
                    help="keep the leak fixed (default: each layer's leak is learnt)")
    ap.add_argument("--eval-every", type=int, default=40, help="batches between test evaluations")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "out" / "pipe_d")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = make_data(args.out_dir, args.train, args.test, args.timesteps)
    np.savez(args.out_dir / "train_mean.npz", x=accumulate_frames(data.x), y=data.y)
    run = run_pipe_d(data, ann_epochs=args.ann_epochs, lr=args.lr, leak=args.leak, train_leak=args.train_leak,
                     budget_s=args.budget, eval_every=args.eval_every)
    onnx.save(run.ann, args.out_dir / "ann.onnx")
    ir.save(run.converted, args.out_dir / "converted.snn.onnx")
    ir.save(run.trainer.export(), args.out_dir / "tuned.snn.onnx")
    (args.out_dir / "curve.json").write_text(json.dumps({**run.curve.to_dict(), "info": run.info}, indent=1))
    curve, best = run.curve, run.curve.best()
    print(f"converted: {curve.points[0].accuracy:.4f}; best after fine-tuning {best.accuracy:.4f} at "
          f"{curve.time(best, 'wall'):.0f} s wall / {curve.time(best, 'cpu'):.0f} s cpu from the start "
          f"(ANN training and conversion included) -> {args.out_dir}/{{ann.onnx,converted.snn.onnx,"
          f"tuned.snn.onnx,curve.json}}")


if __name__ == "__main__":
    main()
