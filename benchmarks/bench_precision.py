"""Spike-count agreement of bfloat16 autocast against float32 (the torch target's
``precision="bf16"``), measured on the CPU with torch kernels: bf16 rounding is the same on a
GPU, only the accumulation order differs. No GPU was available here.

    .venv/bin/python benchmarks/bench_precision.py [--n 200] [-T 8] [--json R.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from datasets import DATA_DIR, MODELS  # noqa: E402

import snnconvert  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402


def run(snn, x: np.ndarray, t: int, bf16: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    net = SpikingNetwork(snn, cpu_kernels="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        res = net.simulate(x, t, batch_size=50, record=True)
    return res.predictions(t), {k: v.numpy() for k, v in net.spike_counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("-T", "--timesteps", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    for name in ("sinabs-mnist-cnn", "resnet20-cifar10"):
        calib = np.load(DATA_DIR / f"{name}_calib.npz")["x"]
        test = np.load(DATA_DIR / f"{name}_test.npz")
        x, y = test["x"][:args.n], test["y"][:args.n]
        snn = snnconvert.convert(str(MODELS[name].path), calib, timesteps=args.timesteps)
        p32, c32 = run(snn, x, args.timesteps, False)
        p16, c16 = run(snn, x, args.timesteps, True)
        total32 = sum(float(v.sum()) for v in c32.values())
        total16 = sum(float(v.sum()) for v in c16.values())
        same = sum(int((c32[k] == c16[k]).sum()) for k in c32) / sum(v.size for v in c32.values())
        mad = sum(float(np.abs(c32[k] - c16[k]).sum()) for k in c32) / sum(v.size for v in c32.values())
        out[name] = {"T": args.timesteps, "samples": len(x), "accuracy_fp32": float(np.mean(p32 == y)),
                     "accuracy_bf16": float(np.mean(p16 == y)), "prediction_agreement": float(np.mean(p32 == p16)),
                     "neurons_with_identical_counts": same, "mean_abs_count_difference": mad,
                     "total_spikes_ratio_bf16_over_fp32": total16 / total32}
        r = out[name]
        print(f"{name} T={args.timesteps}, {len(x)} images: accuracy fp32 {100 * r['accuracy_fp32']:.1f} % "
              f"bf16 {100 * r['accuracy_bf16']:.1f} %; predictions agree {100 * r['prediction_agreement']:.1f} %; "
              f"neurons with identical spike counts {100 * same:.2f} %, mean |count difference| {mad:.4f}, "
              f"total spikes bf16/fp32 {r['total_spikes_ratio_bf16_over_fp32']:.4f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
