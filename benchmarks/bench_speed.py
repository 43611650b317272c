"""Torch SNN simulation time over T × onnxruntime's ANN time, same batch and threads, one run.

    python benchmarks/bench_speed.py [--threads 1] [--timesteps 32]

Models: the bundled MNIST example, and the shared sinabs CNN and ResNet-20 when ../shared exists.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import snnconvert as sc  # noqa: E402
from snnconvert.onnxrt import session  # noqa: E402
from snnconvert.frontend import load_model  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402


def cases():
    ex = ROOT / "examples" / "mnist"
    yield "mnist-example", ex / "model.onnx", np.load(ex / "calib.npz")["x"], np.load(ex / "test.npz")["x"], 256
    data = ROOT / "benchmarks" / "data"
    try:
        from datasets import MODELS, shared
    except ImportError:
        return
    for name, batch in (("sinabs-mnist-cnn", 256), ("resnet20-cifar10", 100)):
        if (data / f"{name}_calib.npz").exists():
            path = shared("models", "resnet20-cifar10", "resnet20_cifar10.onnx") \
                if name.startswith("resnet") else MODELS[name].path
            yield name, path, np.load(data / f"{name}_calib.npz")["x"], np.load(data / f"{name}_test.npz")["x"], batch


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = args.timesteps
    print(f"threads={args.threads} T={t}")
    print(f"{'model':18s} {'batch':>5s} {'ANN ms':>8s} {'SNN ms':>9s} {'SNN/(T*ANN)':>12s}")
    for name, path, calib, test, batch in cases():
        x = np.ascontiguousarray(test[:batch])
        ann = load_model(path)
        sess = session(ann, threads=args.threads)
        feed = {sess.get_inputs()[0].name: x}
        ann_s = best_of(lambda: sess.run(None, feed), args.repeats * 5)
        net = SpikingNetwork(sc.convert(path, calib, timesteps=t))
        xt = torch.from_numpy(x)
        with torch.no_grad():
            snn_s = best_of(lambda: net(xt, t), args.repeats)
        print(f"{name:18s} {batch:5d} {1e3 * ann_s:8.2f} {1e3 * snn_s:9.1f} {snn_s / (t * ann_s):12.2f}",
              flush=True)


if __name__ == "__main__":
    main()
