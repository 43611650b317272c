"""ANN vs SNN accuracy of a shared model across T, initializations and normalizations.

Reads benchmarks/data/<model>_{calib,test}.npz (written by benchmarks/prepare_data.py) and the
model from ../shared. Prints one table and writes JSON:

    python benchmarks/bench_accuracy.py sinabs-mnist-cnn --timesteps 4,8,32
    python benchmarks/bench_accuracy.py resnet20-cifar10 --timesteps 8,16,32,64,128 --grid full
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
from datasets import MODELS, shared  # noqa: E402

import snnconvert as sc  # noqa: E402
from snnconvert.api import ann_outputs  # noqa: E402
from snnconvert.frontend import load_model  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
OVERRIDES = {"resnet20-cifar10": ("models", "resnet20-cifar10", "resnet20_cifar10.onnx")}

GRIDS = {
    "best": [("percentile:99.99", True, "optimized")],
    "init": [("percentile:99.99", True, v) for v in ("zero", "half", "optimized")],
    "p999": [("percentile:99.9", True, "optimized")],
    "norm-half": [("max", False, "half"), ("percentile:99.99", False, "half"), ("max", True, "half"),
                  ("percentile:99.9", True, "half")],
    "norm": [(n, pc, v) for n in ("max", "percentile:99.9", "percentile:99.99", "percentile:99.999")
             for pc in (False, True) for v in ("half", "optimized")],
    "full": [("percentile:99.99", True, v) for v in ("zero", "half", "optimized")]
    + [(n, pc, "half") for n, pc in (("max", False), ("percentile:99.99", False), ("max", True),
                                     ("percentile:99.9", True))],
}


def model_path(name: str) -> Path:
    """The shared model; ResNet-20 in its static batch-1 export (the harder front-end case)."""
    return shared(*OVERRIDES[name]) if name in OVERRIDES else MODELS[name].path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--timesteps", default="4,8,16,32,64")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="full")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated v_init values to keep from the grid")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ts = sorted(int(t) for t in args.timesteps.split(","))
    calib = np.load(DATA / f"{args.model}_calib.npz")["x"]
    test = np.load(DATA / f"{args.model}_test.npz")
    x, y = test["x"][: args.limit], test["y"][: args.limit]
    path = model_path(args.model)
    ann_acc = float(np.mean(ann_outputs(load_model(path), x).argmax(1) == y))
    print(f"{args.model}: {len(x)} test images, calibration {len(calib)}; ANN accuracy {ann_acc:.4f}")
    print(f"{'norm':18s} {'per-ch':6s} {'v_init':9s} " + " ".join(f"T={t:<5d}" for t in ts) + "  sec")
    rows = []
    grid = [g for g in GRIDS[args.grid] if args.only is None or g[2] in args.only.split(",")]
    for norm, per_channel, v_init in grid:
        t0 = time.time()
        accs, rates = {}, {}
        # The data-optimized init is fitted at the T it runs at, so it converts once per T.
        for group in ([[t] for t in ts] if v_init == "optimized" else [ts]):
            snn = sc.convert(path, calib, timesteps=group[0], norm=norm, per_channel=per_channel,
                             v_init=v_init)
            res = SpikingNetwork(snn).simulate(x, group, batch_size=args.batch_size)
            accs.update({t: float(np.mean(res.predictions(t) == y)) for t in group})
            rates.update(res.firing_rate)
        dt = time.time() - t0
        rows.append({"norm": norm, "per_channel": per_channel, "v_init": v_init, "accuracy": accs,
                     "firing_rate": rates, "seconds": dt})
        print(f"{norm:18s} {str(per_channel):6s} {v_init:9s} "
              + " ".join(f"{accs[t]:.4f} " for t in ts) + f" {dt:.0f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "ann_accuracy": ann_acc,
                                         "n": len(x), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
