"""The torch target on a CUDA GPU against the CPU, on the same converted networks, in one run:
evaluation throughput (fp32 and bf16 autocast), the GPU's predictions and firing rates against
the CPU's, peak GPU memory, one fine-tuning (BPTT) step, and the calibration's distillation
(`tuned`'s two epochs, ``convert --device``) at T=16 and 32.

The networks are converted here with default flags (calibration needs no GPU) and carried to
the GPU machine, which has no ../shared:

    .venv/bin/python benchmarks/bench_gpu.py --prepare DIR          # here: convert, write DIR
    python3 benchmarks/bench_gpu.py --prepared DIR --json R.json    # on the GPU machine

CPU figures are taken on the GPU machine's own CPU (one thread, and all its threads) on a
slice of the test images; the GPU evaluates them all (after one warm-up batch). The distillation
is timed on the GPU only (on the CPU it takes minutes: ``--device cpu --parts distill``, one
thread, times it here).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from datasets import DATA_DIR, MODELS  # noqa: E402

import snnconvert  # noqa: E402
from snnconvert import ir  # noqa: E402
from snnconvert.finetune import FinetuneConfig, Trainer  # noqa: E402
from snnconvert.passes import PassContext  # noqa: E402
from snnconvert.passes.distill import DistillForT  # noqa: E402
from snnconvert.passes.pipeline import BRIEF_EPOCHS  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402

NETWORKS = {"sinabs-mnist-cnn": 32, "resnet20-cifar10": 32}
"""Model -> T it is converted for and evaluated at."""
CPU_SLICE = 100
"""Test images the CPU evaluates (the GPU's predictions are compared on them)."""
TRAIN_T, TRAIN_BATCH, TRAIN_STEPS = 8, 64, 10
DISTILL_T = (16, 32)
PARTS = ("eval", "train", "distill")


def prepare(out: Path) -> None:
    """Convert each network with default flags for its T; copy its test and calibration data."""
    out.mkdir(parents=True, exist_ok=True)
    for name, t in NETWORKS.items():
        calib = np.load(DATA_DIR / f"{name}_calib.npz")
        snn = snnconvert.convert(str(MODELS[name].path), calib["x"], timesteps=t, progress=True)
        ir.save(snn, out / f"{name}.snn.onnx")
        for part in ("test", "calib"):
            with np.load(DATA_DIR / f"{name}_{part}.npz") as d:
                np.savez(out / f"{name}_{part}.npz", x=d["x"], y=d["y"])
        print(f"{name}: converted for T={t}")


def _on_gpu(device: str) -> bool:
    return torch.device(device).type == "cuda"


def _sync(device: str) -> None:
    if _on_gpu(device):
        torch.cuda.synchronize()


def simulate(snn, x: np.ndarray, t: int, device: str, precision: str = "fp32", batch: int = 256):
    """(readout at T, layer rates, seconds, peak GPU bytes) of one evaluation on ``device``."""
    net = SpikingNetwork(snn).to(device)
    kind = torch.device(device).type
    with torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16"):
        net.simulate(x[:min(batch, 32)], t, batch_size=batch)  # warm-up: kernels, JIT, allocator
    if _on_gpu(device):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    with torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16"):
        res = net.simulate(x, t, batch_size=batch)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if _on_gpu(device) else 0
    return res.readout[t], res.layer_rates[t], seconds, peak


def train_step_ms(snn, x: np.ndarray, y: np.ndarray, device: str, precision: str, steps: int) -> float:
    """Milliseconds per BPTT step at TRAIN_T, batch TRAIN_BATCH (one warm-up epoch first)."""
    cfg = FinetuneConfig(timesteps=TRAIN_T, batch_size=TRAIN_BATCH, device=device, precision=precision,
                         logit_scale=1.0, lr=1e-4)
    trainer = Trainer(snn, cfg)
    n = TRAIN_BATCH * steps
    trainer.run_epoch(x[:TRAIN_BATCH * 2], y[:TRAIN_BATCH * 2])
    _sync(device)
    start = time.perf_counter()
    trainer.run_epoch(x[:n], y[:n])
    _sync(device)
    return 1000 * (time.perf_counter() - start) / steps


def distillation(snn, xc: np.ndarray, t: int, device: str) -> dict:
    """`tuned`'s distillation (its two epochs; the pass's defaults otherwise) of ``snn`` at T on
    the calibration images, the teacher its rate-limit ANN: seconds and the pass's log line."""
    ctx = PassContext(calib=xc, timesteps=t, device=device)
    _sync(device)
    start = time.perf_counter()
    DistillForT(epochs=BRIEF_EPOCHS)(snn, ctx)
    _sync(device)
    return {"seconds": time.perf_counter() - start, "log": ctx.log[-1][1]}


def measure(name: str, folder: Path, gpu: str = "cuda", limit: int | None = None,
            parts: tuple[str, ...] = PARTS) -> dict:
    t = NETWORKS[name]
    snn = ir.load(folder / f"{name}.snn.onnx")
    with np.load(folder / f"{name}_test.npz") as d:
        x, y = d["x"][:limit].astype(np.float32), d["y"][:limit]
    with np.load(folder / f"{name}_calib.npz") as d:
        xc, yc = d["x"].astype(np.float32), d["y"]
    row: dict = {"T": t, "images": len(x), "cpu_slice": CPU_SLICE}
    if "distill" in parts:
        row["distill"] = {str(dt): distillation(snn, xc, dt, gpu) for dt in DISTILL_T}
    if "eval" not in parts:
        return row
    threads = os.cpu_count() or 1
    cpu_out = {}
    for n_threads in (1, threads):
        torch.set_num_threads(n_threads)
        out, rates, s, _ = simulate(snn, x[:CPU_SLICE], t, "cpu")
        cpu_out[n_threads] = (out, rates)
        row[f"cpu_{n_threads}_threads_img_s"] = CPU_SLICE / s
    torch.set_num_threads(threads)
    cpu_pred, cpu_rates = cpu_out[1][0].argmax(1), cpu_out[1][1]
    for precision in ("fp32", "bf16"):
        out, rates, s, peak = simulate(snn, x, t, gpu, precision)
        pred = out.argmax(1)
        row[f"gpu_{precision}"] = {
            "img_s": len(x) / s, "accuracy": float(np.mean(pred == y)), "peak_gb": peak / 2**30,
            "agree_cpu_slice": float(np.mean(pred[:CPU_SLICE] == cpu_pred)),
            "max_rate_diff_vs_cpu": max(abs(rates[k] - cpu_rates[k]) for k in cpu_rates)}
        if precision == "fp32":
            fp32_pred = pred
            _, slice_rates, _, _ = simulate(snn, x[:CPU_SLICE], t, gpu, precision)
            row["gpu_fp32"]["max_rate_diff_vs_cpu"] = max(abs(slice_rates[k] - cpu_rates[k]) for k in cpu_rates)
        else:
            row["gpu_bf16"]["agree_fp32"] = float(np.mean(pred == fp32_pred))
            del row["gpu_bf16"]["max_rate_diff_vs_cpu"]
    if "train" not in parts:
        return row
    row["train_ms_per_step"] = {f"gpu_{p}": train_step_ms(snn, xc, yc, gpu, p, TRAIN_STEPS)
                                for p in ("fp32", "bf16")}
    row["train_ms_per_step"][f"cpu_{threads}_threads"] = train_step_ms(snn, xc, yc, "cpu", "fp32", 2)
    return row


def report(name: str, r: dict) -> None:
    for t, d in r.get("distill", {}).items():
        print(f"{name}: distillation at T={t}: {d['seconds']:.1f} s ({d['log']})")
    if "gpu_fp32" not in r:
        return
    g, b = r["gpu_fp32"], r["gpu_bf16"]
    cpu = [k for k in r if k.startswith("cpu_") and k.endswith("_img_s")]
    print(f"{name} at T={r['T']}, {r['images']} images: "
          + ", ".join(f"{k[4:-6].replace('_', ' ')} CPU {r[k]:.1f} img/s" for k in cpu)
          + f"; GPU fp32 {g['img_s']:.0f} img/s ({g['accuracy']:.2%}, peak {g['peak_gb']:.2f} GB, "
          f"predictions = CPU's on {g['agree_cpu_slice']:.0%} of {r['cpu_slice']}, largest layer-rate "
          f"difference {g['max_rate_diff_vs_cpu']:.1e}); GPU bf16 {b['img_s']:.0f} img/s ({b['accuracy']:.2%}, "
          f"predictions = fp32's on {b['agree_fp32']:.1%})")
    if "train_ms_per_step" in r:
        print(f"  BPTT step at T={TRAIN_T}, batch {TRAIN_BATCH}: "
              + ", ".join(f"{k.replace('_', ' ')} {v:.0f} ms" for k, v in r["train_ms_per_step"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", type=Path, help="convert the networks and write them with their data here")
    ap.add_argument("--prepared", type=Path, help="measure the networks prepared in this folder")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="cuda", help="the accelerator's torch device ('cpu': a dry run of this script)")
    ap.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated (default all)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the distillation (default all)")
    ap.add_argument("--limit", type=int, default=None, help="test images per network (default all)")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    if args.prepared is None or (_on_gpu(args.device) and not torch.cuda.is_available()):
        sys.exit("bench_gpu.py measures on a CUDA GPU: pass --prepared DIR on a machine that has one")
    name = torch.cuda.get_device_name() if _on_gpu(args.device) else args.device
    print(f"{name}, torch {torch.__version__}, {os.cpu_count()} CPU threads")
    results = {}
    for name in args.networks.split(","):
        if args.threads:
            torch.set_num_threads(args.threads)
        results[name] = measure(name, args.prepared, args.device, args.limit, tuple(args.parts.split(",")))
        report(name, results[name])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
