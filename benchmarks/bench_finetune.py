"""Fine-tuning converted SNNs (pretraining as a bridge): accuracy vs wall time against an SNN
trained from scratch, the cost of each trainer (BPTT, SNN2ANN, pipe-S pre-stage), and peak memory.

    .venv/bin/python benchmarks/bench_finetune.py [--parts fmnist,sinabs,memory] [--train-n 10000]

fmnist  : a small CNN (conv-BN-ReLU-avgpool x2 + linear) trained as an ANN on Fashion-MNIST,
          converted (1,000 calibration images, v_init="optimized", T=4), then fine-tuned at T=4 with
          each trainer; a same-architecture SNN trained from scratch (random init, thresholds
          calibrated on the untrained net) gets a longer wall-time budget. Accuracy on the first
          2,000 test images. Every "epoch" is one pass over --train-n training images.
sinabs  : /work/shared/models/sinabs-mnist-cnn converted at T=4 (calib: first 1,000 MNIST train
          images x/255), fine-tuned 1 epoch on MNIST train images 1,000..5,999; first 2,000 test images.
memory  : peak RSS (ru_maxrss, fresh subprocess) of training the examples/mnist CNN, batch 128, at
          T=8 and T=32, for BPTT and SNN2ANN.
Needs /work/shared (data, models). Single thread (torch.set_num_threads(1)).
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import snnconvert  # noqa: E402
from snnconvert import ir  # noqa: E402
from snnconvert.finetune import FinetuneConfig, Trainer, accuracy  # noqa: E402

T = 4
N_TEST = 2000


def images(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0)[:, None]


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def train_ann(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def to_onnx(model: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), buf, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def ann_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def run_trainer(snn: onnx.ModelProto, cfg: FinetuneConfig, x, y, xt, yt, budget: float | None = None
                ) -> tuple[onnx.ModelProto, list[tuple[int, float, float]]]:
    """Train; returns the tuned IR and (epoch, cumulative training seconds, test accuracy) rows
    (row 0 = before training). With ``budget``, stops once the training time exceeds it."""
    trainer = Trainer(snn, cfg)
    trainer.fit_logit_scale(x, y)
    rows = [(0, 0.0, accuracy(trainer.net, xt, yt, cfg.timesteps))]
    elapsed = 0.0
    for _ in range(cfg.sharpen_epochs + cfg.epochs):
        t0 = time.perf_counter()
        trainer.run_epoch(x, y, progress=False)
        elapsed += time.perf_counter() - t0
        trainer.epoch += 1
        rows.append((trainer.epoch, elapsed, accuracy(trainer.net, xt, yt, cfg.timesteps)))
        print(f"    {cfg.method}{'+sharpen' if cfg.sharpen_epochs else ''} epoch {trainer.epoch}: "
              f"{elapsed:7.1f} s  acc {rows[-1][2]:.4f}", flush=True)
        if budget is not None and elapsed >= budget:
            break
    return trainer.export(), rows


def bench_fmnist(args) -> dict:
    from datasets import fashion_mnist

    xtr, ytr = fashion_mnist("train")
    xte, yte = fashion_mnist("test", N_TEST)
    xtr, xte = images(xtr), images(xte)
    calib = xtr[:1000]
    sub = np.random.default_rng(0).permutation(len(xtr))[:args.train_n]
    xs, ys = xtr[sub], ytr[sub]
    torch.manual_seed(0)
    ann = small_cnn()
    t0 = time.perf_counter()
    train_ann(ann, xtr, ytr, args.ann_epochs)
    t_ann = time.perf_counter() - t0
    acc_ann = ann_accuracy(ann, xte, yte)
    t0 = time.perf_counter()
    snn = snnconvert.convert(to_onnx(ann), calib, timesteps=T, v_init="optimized")
    t_conv = time.perf_counter() - t0
    print(f"  ANN: {args.ann_epochs} epoch(s) on 60,000 images in {t_ann:.1f} s, test acc {acc_ann:.4f}; "
          f"conversion {t_conv:.1f} s", flush=True)
    out = {"ann": {"accuracy": acc_ann, "train_s": t_ann, "convert_s": t_conv}, "runs": {}}
    base = dict(timesteps=T, batch_size=64, lr=args.lr)
    runs = {
        "bptt": FinetuneConfig(epochs=3, **base),
        "snn2ann": FinetuneConfig(epochs=3, method="snn2ann", **base),
        "sharpen+bptt": FinetuneConfig(epochs=3, sharpen_epochs=1, **base),
    }
    for name, cfg in runs.items():
        tuned, rows = run_trainer(snn, cfg, xs, ys, xte, yte)
        out["runs"][name] = rows
        if name == "bptt":
            ir.save(tuned, args.out_dir / "fmnist_bptt.snn.onnx")
    ft_epoch_s = out["runs"]["bptt"][-1][1] / 3
    torch.manual_seed(1)
    scratch_ann = small_cnn().eval()
    scratch_ir = snnconvert.convert(to_onnx(scratch_ann), calib, timesteps=T, v_init="half")
    planned = max(1, round(args.scratch_budget / ft_epoch_s))
    _, rows = run_trainer(scratch_ir, FinetuneConfig(epochs=planned, timesteps=T, batch_size=64, lr=2e-3),
                          xs, ys, xte, yte, budget=args.scratch_budget)
    out["runs"]["scratch"] = rows
    return out


def report_fmnist(res: dict) -> None:
    ann = res["ann"]
    pre = ann["train_s"] + ann["convert_s"]
    print(f"\nFashion-MNIST, T={T}, first {N_TEST} test images (ANN {ann['accuracy']:.4f}; ANN training "
          f"{ann['train_s']:.0f} s + conversion {ann['convert_s']:.0f} s)")
    print(f"{'run':<14} {'converted':>9} {'1 epoch':>8} {'3 epochs':>8} {'best':>7} {'s/epoch':>8}")
    for name, rows in res["runs"].items():
        accs = [r[2] for r in rows]
        per = rows[-1][1] / (len(rows) - 1)
        e1 = accs[1] if len(accs) > 1 else float("nan")
        e3 = accs[3] if len(accs) > 3 else float("nan")
        first = f"{accs[0]:.4f}" if name != "scratch" else f"(init {accs[0]:.3f})"
        print(f"{name:<14} {first:>9} {e1:>8.4f} {e3:>8.4f} {max(accs):>7.4f} {per:>8.1f}")
    scratch = res["runs"]["scratch"]
    best = max(r[2] for r in scratch)
    t_best = next(r[1] for r in scratch if r[2] == best)
    print(f"scratch: best {best:.4f} after {t_best:.0f} s of training ({scratch[-1][1]:.0f} s budget)")
    for name, rows in res["runs"].items():
        if name == "scratch":
            continue
        hit = next((r for r in rows if r[2] >= best), None)
        if hit is None:
            print(f"{name}: never reached {best:.4f} (best {max(r[2] for r in rows):.4f})")
        else:
            print(f"{name}: reached {best:.4f} after {hit[1]:.0f} s fine-tuning "
                  f"(= {hit[1] / t_best:.2f} of scratch's time; {(hit[1] + pre) / t_best:.2f} counting "
                  f"ANN training + conversion)")


def bench_sinabs(args) -> dict:
    from datasets import mnist

    xtr, ytr = mnist("train", 6000)
    xte, yte = mnist("test", N_TEST)
    xtr, xte = images(xtr), images(xte)
    src = Path("/work/shared/models/sinabs-mnist-cnn/sinabs_mnist_cnn.onnx")
    snn = snnconvert.convert(src, xtr[:1000], timesteps=T, v_init="optimized")
    out = {}
    for name, cfg in {"bptt": FinetuneConfig(epochs=1, timesteps=T, batch_size=64, lr=args.lr),
                      "snn2ann": FinetuneConfig(epochs=1, method="snn2ann", timesteps=T, batch_size=64,
                                                lr=args.lr)}.items():
        _, rows = run_trainer(snn, cfg, xtr[1000:], ytr[1000:], xte, yte)
        out[name] = rows
    return out


def report_sinabs(res: dict) -> None:
    print(f"\nsinabs MNIST CNN, T={T}, first {N_TEST} test images, 1 epoch on 5,000 train images")
    print(f"{'trainer':<10} {'before':>7} {'after':>7} {'seconds':>8}")
    for name, rows in res.items():
        print(f"{name:<10} {rows[0][2]:>7.4f} {rows[1][2]:>7.4f} {rows[1][1]:>8.1f}")


MEMORY_CHILD = """
import resource, sys, time, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import snnconvert
from snnconvert.finetune import FinetuneConfig, Trainer
d = np.load({root!r} + '/examples/mnist/calib.npz')
x = d['x']; y = np.arange(len(x)) % 10
snn = snnconvert.convert({root!r} + '/examples/mnist/model.onnx', x, timesteps={t})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tr = Trainer(snn, FinetuneConfig(timesteps={t}, method={method!r}, batch_size=128))
t0 = time.perf_counter()
tr.run_epoch(x[:128 * 4], y[:128 * 4], progress=False)
dt = (time.perf_counter() - t0) / 4
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, dt)
"""


def bench_memory(args) -> dict:
    out = {}
    for t in (8, 32):
        for method in ("bptt", "snn2ann"):
            code = MEMORY_CHILD.format(root=str(ROOT), t=t, method=method)
            line = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True).stdout.split()
            out[f"{method} T={t}"] = {"before_mb": int(line[0]) / 1024, "peak_mb": int(line[1]) / 1024,
                                      "s_per_batch": float(line[2])}
    return out


def report_memory(res: dict) -> None:
    print("\nPeak memory, examples/mnist CNN, batch 128 (ru_maxrss of a fresh process)")
    print(f"{'run':<14} {'peak MB':>8} {'+training MB':>13} {'s/batch':>8}")
    for name, r in res.items():
        print(f"{name:<14} {r['peak_mb']:>8.0f} {r['peak_mb'] - r['before_mb']:>13.0f} {r['s_per_batch']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="fmnist,sinabs,memory")
    parser.add_argument("--train-n", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--ann-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    parser.add_argument("--scratch-budget", type=float, default=480.0, help="seconds of scratch training")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/bench_finetune"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    results = {}
    if "memory" in parts:
        results["memory"] = bench_memory(args)
        report_memory(results["memory"])
    if "sinabs" in parts:
        results["sinabs"] = bench_sinabs(args)
        report_sinabs(results["sinabs"])
    if "fmnist" in parts:
        results["fmnist"] = bench_fmnist(args)
        report_fmnist(results["fmnist"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
