"""Fine-tuning converted SNNs (pretraining as a bridge): accuracy vs wall time against an SNN
trained from scratch, the cost of each trainer (BPTT, SNN2ANN, pipe-S pre-stage, Joint A-SNN),
and peak memory.

    .venv/bin/python benchmarks/bench_finetune.py [--parts fmnist,cifar10,sinabs,memory] [--train-n 10000]
                                                  [--json R.json]

fmnist  : a small CNN (conv-BN-ReLU-avgpool x2 + linear) trained as an ANN on Fashion-MNIST,
          converted (1,000 calibration images, v_init="optimized", T=4), then fine-tuned at T=4 with
          each trainer from the same converted start, 3 epochs each (pipe-S: 1 sharpening epoch +
          2 BPTT epochs); a same-architecture SNN trained from scratch (random init, thresholds
          calibrated on the untrained net) gets a longer wall-time budget (--scratch-budget 0 skips
          it). Accuracy on the first 2,000 test images. Every "epoch" is one pass over --train-n
          training images. Per trainer: wall and CPU seconds per epoch, and the peak RSS of a fresh
          process running --mem-batches batches of 64 with it (VmHWM in kB of /proc/self/status: ru_maxrss
          would carry the parent's high-water mark across fork+exec).
cifar10 : the same comparison on CIFAR-10: a small CNN (conv 3-32-64-64, BN, ReLU, avgpool, linear)
          trained as an ANN on --cifar-n JPEG training images (class-balanced, seed 0) for
          --cifar-ann-epochs epochs with random flips, converted like fmnist, fine-tuned on the same
          images; accuracy on the first 2,000 (class-balanced) JPEG test images.
steps   : steady-state CPU seconds per training step of each trainer on the fmnist / cifar10 nets
          (saved in --out-dir by those parts, in this run or an earlier one), trainers alternating
          step by step in one process, so that load on the machine hits all of them alike.
sinabs  : /work/shared/models/sinabs-mnist-cnn converted at T=4 (calib: first 1,000 MNIST train
          images x/255), fine-tuned 1 epoch on MNIST train images 1,000..5,999; first 2,000 test images.
memory  : peak RSS (VmHWM, fresh subprocess) of training the examples/mnist CNN, batch 128, at
          T=8 and T=32, for BPTT, SNN2ANN and joint.
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
from typing import Callable

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


def train_ann(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0,
              augment: bool = False) -> None:
    """Adam 1e-3, batch 128; ``augment``: random horizontal flips and a cosine schedule."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * -(-len(x) // 128)) if augment else None
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            xb = x[idx]
            if augment:
                flip = rng.random(len(idx)) < 0.5
                xb[flip] = xb[flip][..., ::-1]
            loss = nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    model.eval()


def to_onnx(model: nn.Module, shape: tuple[int, ...] = (1, 28, 28)) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, *shape), buf, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def ann_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def ann_then_snn(build: Callable[[], nn.Module], train: Callable[[nn.Module], None], xte: np.ndarray,
                 yte: np.ndarray, calib: np.ndarray) -> tuple[onnx.ModelProto, float, float, float]:
    """Train the ANN (seed 0), convert it at T (v_init="optimized"): (IR, ANN test accuracy,
    training seconds, conversion seconds)."""
    torch.manual_seed(0)
    ann = build()
    t0 = time.perf_counter()
    train(ann)
    t_ann = time.perf_counter() - t0
    acc_ann = ann_accuracy(ann, xte, yte)
    t0 = time.perf_counter()
    snn = snnconvert.convert(to_onnx(ann, tuple(calib.shape[1:])), calib, timesteps=T, v_init="optimized")
    return snn, acc_ann, t_ann, time.perf_counter() - t0


def run_trainer(snn: onnx.ModelProto, cfg: FinetuneConfig, x, y, xt, yt, budget: float | None = None
                ) -> tuple[onnx.ModelProto, list[tuple[int, float, float, float]]]:
    """Train; returns the tuned IR and (epoch, cumulative training seconds, test accuracy,
    cumulative training CPU seconds) rows (row 0 = before training). With ``budget``, stops
    once the training time exceeds it."""
    trainer = Trainer(snn, cfg)
    trainer.fit_logit_scale(x, y)
    rows = [(0, 0.0, accuracy(trainer.net, xt, yt, cfg.timesteps), 0.0)]
    elapsed = cpu = 0.0
    for _ in range(cfg.sharpen_epochs + cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.run_epoch(x, y, progress=False)
        elapsed += time.perf_counter() - t0
        cpu += time.process_time() - c0
        trainer.epoch += 1
        rows.append((trainer.epoch, elapsed, accuracy(trainer.net, xt, yt, cfg.timesteps), cpu))
        print(f"    {cfg.method}{'+sharpen' if cfg.sharpen_epochs else ''} epoch {trainer.epoch}: "
              f"{elapsed:7.1f} s (CPU {cpu:7.1f} s)  acc {rows[-1][2]:.4f}", flush=True)
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
    snn, acc_ann, t_ann, t_conv = ann_then_snn(small_cnn, lambda m: train_ann(m, xtr, ytr, args.ann_epochs),
                                               xte, yte, calib)
    print(f"  ANN: {args.ann_epochs} epoch(s) on 60,000 images in {t_ann:.1f} s, test acc {acc_ann:.4f}; "
          f"conversion {t_conv:.1f} s", flush=True)
    out = {"ann": {"accuracy": acc_ann, "train_s": t_ann, "convert_s": t_conv}, "runs": {}}
    out["runs"], out["memory"] = compare_trainers(snn, xs, ys, xte, yte, args, "fmnist")
    if args.scratch_budget <= 0:
        return out
    ft_epoch_s = out["runs"]["bptt"][-1][1] / 3
    torch.manual_seed(1)
    scratch_ann = small_cnn().eval()
    scratch_ir = snnconvert.convert(to_onnx(scratch_ann), calib, timesteps=T, v_init="half")
    planned = max(1, round(args.scratch_budget / ft_epoch_s))
    _, rows = run_trainer(scratch_ir, FinetuneConfig(epochs=planned, timesteps=T, batch_size=64, lr=2e-3),
                          xs, ys, xte, yte, budget=args.scratch_budget)
    out["runs"]["scratch"] = rows
    return out


EPOCHS = 3


def trainer_configs(lr: float) -> dict[str, FinetuneConfig]:
    """The compared trainers, each EPOCHS epochs in all, from the same converted start."""
    base = dict(timesteps=T, batch_size=64, lr=lr)
    return {
        "bptt": FinetuneConfig(epochs=EPOCHS, **base),
        "snn2ann": FinetuneConfig(epochs=EPOCHS, method="snn2ann", **base),
        "sharpen+bptt": FinetuneConfig(epochs=EPOCHS - 1, sharpen_epochs=1, **base),
        "joint": FinetuneConfig(epochs=EPOCHS, method="joint", **base),
    }


def compare_trainers(snn: onnx.ModelProto, xs, ys, xte, yte, args, tag: str) -> tuple[dict, dict]:
    """Each trainer from the same converted IR: per-epoch rows, then each one's peak memory."""
    runs = {}
    for name, cfg in trainer_configs(args.lr).items():
        tuned, rows = run_trainer(snn, cfg, xs, ys, xte, yte)
        runs[name] = rows
        ir.save(tuned, args.out_dir / f"{tag}_{name.replace('+', '_')}.snn.onnx")
    ir_path = args.out_dir / f"{tag}_converted.snn.onnx"
    ir.save(snn, ir_path)
    data_path = args.out_dir / f"{tag}_memory_batches.npz"
    n = 64 * args.mem_batches
    np.savez(data_path, x=xs[:n], y=ys[:n])
    memory = {name: trainer_memory(ir_path, data_path, name) for name in trainer_configs(args.lr)}
    for name, rows in runs.items():
        n = len(rows) - 1
        memory[name]["summary"] = {"converted_accuracy": rows[0][2], "accuracy": rows[-1][2],
                                   "epochs": n, "s_per_epoch": rows[-1][1] / n,
                                   "cpu_s_per_epoch": rows[-1][3] / n}
    return runs, memory


HWM = """
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
"""

TRAINER_MEMORY_CHILD = HWM + """
import sys, time, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from snnconvert import ir
from snnconvert.finetune import FinetuneConfig, Trainer
d = np.load({data!r}); x, y = d['x'], d['y']
snn = ir.load({ir!r})
cfg = FinetuneConfig(timesteps={t}, batch_size=64, method={method!r}, sharpen_epochs={sharpen})
tr = Trainer(snn, cfg)
tr.logit_scale = 1.0
base = hwm()
t0, c0 = time.perf_counter(), time.process_time()
tr.run_epoch(x, y, progress=False)
n = -(-len(x) // 64)
print(base, hwm(), (time.perf_counter() - t0) / n,
      (time.process_time() - c0) / n)
"""


def trainer_memory(ir_path: Path, data_path: Path, name: str) -> dict:
    """Peak RSS of a fresh process running one pass over the saved batches with trainer ``name``
    ("sharpen+bptt" runs its sharpening phase; its BPTT phase costs what "bptt" does)."""
    method = "bptt" if name == "sharpen+bptt" else name
    code = TRAINER_MEMORY_CHILD.format(root=str(ROOT), data=str(data_path), ir=str(ir_path), t=T,
                                       method=method, sharpen=int(name == "sharpen+bptt"))
    line = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split()
    return {"before_mb": int(line[0]) / 1024, "peak_mb": int(line[1]) / 1024,
            "s_per_batch": float(line[2]), "cpu_s_per_batch": float(line[3])}


def step_costs(args, rounds: int = 4) -> dict:
    """Steady-state CPU seconds per training step of each trainer, side by side in one process:
    on the IR and batches the fmnist / cifar10 parts saved in --out-dir, one warm-up step each,
    then ``rounds`` rounds of one step per trainer in turn (pipe-S: its sharpening step)."""
    out = {}
    for tag in ("fmnist", "cifar10"):
        ir_path = args.out_dir / f"{tag}_converted.snn.onnx"
        if not ir_path.exists():
            continue
        snn = ir.load(ir_path)
        d = np.load(args.out_dir / f"{tag}_memory_batches.npz")
        xb, yb = d["x"][:64], d["y"][:64]
        trainers = {}
        for name, cfg in trainer_configs(args.lr).items():
            trainers[name] = Trainer(snn, cfg)
            trainers[name].logit_scale = 1.0
        spent = dict.fromkeys(trainers, 0.0)
        for r in range(rounds + 1):
            for name, tr in trainers.items():
                c0 = time.process_time()
                tr.run_epoch(xb, yb, progress=False)
                if r:
                    spent[name] += time.process_time() - c0
        out[tag] = {name: v / rounds for name, v in spent.items()}
        print(f"  {tag}: CPU s per step (batch 64, T={T}): " + ", ".join(
            f"{name} {v:.3f} ({v / out[tag]['bptt']:.2f}x BPTT)" for name, v in out[tag].items()), flush=True)
    return out


def report_trainers(title: str, runs: dict, memory: dict) -> None:
    """Accuracy after each epoch, seconds per epoch (wall, CPU) and peak memory per trainer."""
    print(title)
    print(f"{'trainer':<14} {'converted':>9} {'ep 1':>7} {'ep 2':>7} {'ep 3':>7} {'s/epoch':>8} "
          f"{'CPU s/ep':>8} {'peak MB':>8} {'+train MB':>9}")
    for name, rows in runs.items():
        if name == "scratch":
            continue
        accs = [f"{r[2]:.4f}" for r in rows[1:4]] + ["-"] * (4 - len(rows))
        n = len(rows) - 1
        mem = memory.get(name, {})
        print(f"{name:<14} {rows[0][2]:>9.4f} {accs[0]:>7} {accs[1]:>7} {accs[2]:>7} {rows[-1][1] / n:>8.1f} "
              f"{rows[-1][3] / n:>8.1f} {mem.get('peak_mb', float('nan')):>8.0f} "
              f"{mem.get('peak_mb', float('nan')) - mem.get('before_mb', float('nan')):>9.0f}")
    budget = runs["bptt"][-1][1]
    print(f"equal wall time (BPTT's {EPOCHS} epochs, {budget:.0f} s): " + ", ".join(
        f"{name} {[r for r in rows if r[1] <= budget * 1.02][-1][2]:.4f}"
        for name, rows in runs.items() if name != "scratch")
          + " (test accuracy after the last epoch finished within that time, +2 %)")


def report_fmnist(res: dict) -> None:
    ann = res["ann"]
    pre = ann["train_s"] + ann["convert_s"]
    print(f"\nFashion-MNIST, T={T}, first {N_TEST} test images (ANN {ann['accuracy']:.4f}; ANN training "
          f"{ann['train_s']:.0f} s + conversion {ann['convert_s']:.0f} s)")
    report_trainers("", res["runs"], res.get("memory", {}))
    if "scratch" not in res["runs"]:
        return
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


def cifar_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def cifar_images(x: np.ndarray) -> np.ndarray:
    """uint8 [N,32,32,3] -> normalised float32 [N,3,32,32]."""
    x = (x.astype(np.float32) / 255.0 - np.asarray(CIFAR_MEAN, np.float32)) / np.asarray(CIFAR_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def bench_cifar10(args) -> dict:
    from datasets import cifar10_test, cifar10_train

    xtr, ytr = cifar10_train(args.cifar_n, seed=0)
    xte, yte = cifar10_test(N_TEST)
    xtr, xte = cifar_images(xtr), cifar_images(xte)
    snn, acc_ann, t_ann, t_conv = ann_then_snn(
        cifar_cnn, lambda m: train_ann(m, xtr, ytr, args.cifar_ann_epochs, augment=True), xte, yte, xtr[:1000])
    print(f"  CIFAR-10 ANN: {args.cifar_ann_epochs} epochs on {args.cifar_n:,} images in {t_ann:.1f} s, "
          f"test acc {acc_ann:.4f}; conversion {t_conv:.1f} s", flush=True)
    out = {"ann": {"accuracy": acc_ann, "train_s": t_ann, "convert_s": t_conv, "train_images": args.cifar_n,
                   "ann_epochs": args.cifar_ann_epochs, "test_images": N_TEST}}
    out["runs"], out["memory"] = compare_trainers(snn, xtr, ytr, xte, yte, args, "cifar10")
    return out


def report_cifar10(res: dict) -> None:
    ann = res["ann"]
    report_trainers(f"\nCIFAR-10, T={T}, first {N_TEST} JPEG test images, fine-tuned on {ann['train_images']:,} "
                    f"train images (ANN {ann['accuracy']:.4f} after {ann['ann_epochs']} epochs, "
                    f"{ann['train_s']:.0f} s; conversion {ann['convert_s']:.0f} s)", res["runs"], res["memory"])


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


MEMORY_CHILD = HWM + """
import sys, time, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import snnconvert
from snnconvert.finetune import FinetuneConfig, Trainer
d = np.load({root!r} + '/examples/mnist/calib.npz')
x = d['x']; y = np.arange(len(x)) % 10
snn = snnconvert.convert({root!r} + '/examples/mnist/model.onnx', x, timesteps={t})
base = hwm()
tr = Trainer(snn, FinetuneConfig(timesteps={t}, method={method!r}, batch_size=128))
t0 = time.perf_counter()
tr.run_epoch(x[:128 * 4], y[:128 * 4], progress=False)
dt = (time.perf_counter() - t0) / 4
print(base, hwm(), dt)
"""


def bench_memory(args) -> dict:
    out = {}
    for t in (8, 32):
        for method in ("bptt", "snn2ann", "joint"):
            code = MEMORY_CHILD.format(root=str(ROOT), t=t, method=method)
            line = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True).stdout.split()
            out[f"{method} T={t}"] = {"before_mb": int(line[0]) / 1024, "peak_mb": int(line[1]) / 1024,
                                      "s_per_batch": float(line[2])}
    return out


def report_memory(res: dict) -> None:
    print("\nPeak memory, examples/mnist CNN, batch 128 (VmHWM of a fresh process)")
    print(f"{'run':<14} {'peak MB':>8} {'+training MB':>13} {'s/batch':>8}")
    for name, r in res.items():
        print(f"{name:<14} {r['peak_mb']:>8.0f} {r['peak_mb'] - r['before_mb']:>13.0f} {r['s_per_batch']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="fmnist,cifar10,steps,sinabs,memory")
    parser.add_argument("--cifar-n", type=int, default=5000, help="CIFAR-10 training images (multiple of 10)")
    parser.add_argument("--cifar-ann-epochs", type=int, default=15)
    parser.add_argument("--mem-batches", type=int, default=4, help="batches of 64 per peak-memory process")
    parser.add_argument("--train-n", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--ann-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    parser.add_argument("--scratch-budget", type=float, default=480.0,
                        help="seconds of scratch training (0: no scratch run)")
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
    if "cifar10" in parts:
        results["cifar10"] = bench_cifar10(args)
        report_cifar10(results["cifar10"])
    if "steps" in parts:
        results["steps"] = step_costs(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
