"""Does a temporal-delta formulation pay? Events per synaptic layer, direct vs delta, one run.

    python benchmarks/bench_delta.py [--timesteps 32] [--images 100] [--json D.json]

A synaptic layer fed by spikes s_t can be run on the change of its input, y_t = y_{t-1} +
W (s_t - s_{t-1}), paying for the nonzeros of the difference instead of those of s_t. For each
event-driven layer (Conv/Gemm/MatMul on spikes) of the bundled example, sinabs-mnist-cnn and
ResNet-20 this counts, over all steps of ``--images`` images, the nonzero inputs (the event
kernels' work) and the nonzero input differences (a delta kernel's work, the first step counted
whole). A ratio delta/direct above 1 means the delta formulation does more work.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import snnconvert as sc  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402
from bench_speed import cases  # noqa: E402


def layer_events(model, x: np.ndarray, timesteps: int) -> dict[str, dict]:
    """Per event-driven node: nonzero inputs and nonzero input differences over all steps."""
    net = SpikingNetwork(model, synapses="dense", time_chunk=None)
    counts: dict[str, list[int]] = {}
    original = net._varying_op

    def counting(node, attrs, args, steps, batch, state, events=True):
        if events and node.name in net._event_nodes:
            a = args[0].reshape(steps, batch, -1)
            delta = torch.cat([a[:1], a[1:] - a[:-1]])
            c = counts.setdefault(node.name, [0, 0])
            c[0] += int(torch.count_nonzero(a))
            c[1] += int(torch.count_nonzero(delta))
        return original(node, attrs, args, steps, batch, state, events)

    net._varying_op = counting
    with torch.no_grad():
        for start in range(0, len(x), 50):
            net(torch.as_tensor(x[start:start + 50]), timesteps)
    return {name: {"direct": d, "delta": e, "delta_over_direct": e / max(1, d)}
            for name, (d, e) in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name, path, calib, test, _ in cases():
        model = sc.convert(path, calib, timesteps=args.timesteps)
        layers = layer_events(model, np.ascontiguousarray(test[:args.images]), args.timesteps)
        direct = sum(v["direct"] for v in layers.values())
        delta = sum(v["delta"] for v in layers.values())
        results[name] = {"layers": layers, "direct": direct, "delta": delta,
                         "delta_over_direct": delta / max(1, direct)}
        print(f"{name}: T={args.timesteps}, {args.images} images: events direct {direct:,}, "
              f"delta {delta:,} -> delta/direct {delta / max(1, direct):.2f}")
        for layer, v in layers.items():
            print(f"    {layer:40s} {v['delta_over_direct']:5.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
