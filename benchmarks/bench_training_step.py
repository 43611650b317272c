"""Training step time with the fused neuron op (runtime/fused_training.py) against the torch loop.

For each model and T: the network converted with `--calibration fast` on 256 calibration samples,
one training step (forward at T, cross-entropy against fixed random labels, backward through
every step) timed with the fused op (the default) and with the torch loop
(`SpikingNetwork(cpu_kernels="torch")`, the training path before stop 33), the two alternating
step by step in one process so that load on the machine hits both alike; the median of
--reps steps after one warm-up each. Also checks, for that batch, that both give the same
output and every parameter's gradient to float32 rounding (the largest relative difference).

    .venv/bin/python benchmarks/bench_training_step.py [--models example,sinabs-mnist-cnn,resnet20-cifar10]
                                                       [--threads 1] [--reps 3] [--json R.json]

The example runs without ../shared; the shared models need benchmarks/data (prepare_data.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import DATA_DIR, MODELS  # noqa: E402

import snnconvert  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = {"example": ((4, 64), (16, 64), (32, 64)), "sinabs-mnist-cnn": ((4, 64), (16, 64), (32, 64)),
         "resnet20-cifar10": ((4, 64), (16, 16))}
"""(T, batch) per model: ResNet-20 at T=16 in the distillation's parts of 16 samples."""


def _model(name: str) -> tuple[Path, np.ndarray]:
    if name == "example":
        return ROOT / "examples" / "mnist" / "model.onnx", np.load(ROOT / "examples" / "mnist" / "calib.npz")["x"]
    return MODELS[name].path, np.load(DATA_DIR / f"{name}_calib.npz")["x"]


def _step(net: SpikingNetwork, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, torch.Tensor, dict]:
    net.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = net(x, steps)
    torch.nn.functional.cross_entropy(out, y).backward()
    seconds = time.perf_counter() - t0
    return seconds, out.detach(), {k: p.grad for k, p in net.params.items() if p.grad is not None}


def measure(name: str, steps: int, batch: int, reps: int) -> dict:
    path, calib = _model(name)
    snn = snnconvert.convert(path, calib[:256], timesteps=steps, calibration="fast")
    x = torch.from_numpy(np.ascontiguousarray(calib[:batch], np.float32))
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 10, batch))
    nets = {kind: SpikingNetwork(snn, cpu_kernels=kind) for kind in ("onnxruntime", "torch")}
    for net in nets.values():
        for p in net.params.values():
            p.requires_grad_(True)
    times: dict[str, list[float]] = {kind: [] for kind in nets}
    last: dict[str, tuple] = {}
    for rep in range(reps + 1):
        for kind, net in nets.items():
            seconds, out, grads = _step(net, x, y, steps)
            if rep:
                times[kind].append(seconds)
            last[kind] = (out, grads)
    (out_f, g_f), (out_l, g_l) = last["onnxruntime"], last["torch"]
    rel = max(float((g_f[k] - g_l[k]).abs().max() / g_l[k].abs().max().clamp(min=1e-30)) for k in g_l)
    fused, loop = float(np.median(times["onnxruntime"])), float(np.median(times["torch"]))
    return {"model": name, "T": steps, "batch": batch, "fused_ms": 1000 * fused, "loop_ms": 1000 * loop,
            "speedup": loop / fused, "same_output": bool(torch.equal(out_f, out_l)),
            "max_rel_grad_diff": rel, "parameters": len(g_l)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"training step, fused neuron op vs torch loop; {args.threads} thread(s), median of {args.reps}")
    print(f"{'model':18} {'T':>3} {'batch':>5} {'fused ms':>9} {'loop ms':>9} {'speed-up':>8}  same output, max rel grad diff")
    for name in args.models.split(","):
        for steps, batch in CASES[name]:
            r = measure(name, steps, batch, args.reps)
            rows.append(r)
            print(f"{name:18} {steps:3d} {batch:5d} {r['fused_ms']:9.0f} {r['loop_ms']:9.0f} {r['speedup']:7.2f}x  "
                  f"{r['same_output']}, {r['max_rel_grad_diff']:.1e} over {r['parameters']} parameters",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
