"""NIR export checked against a second simulator: Norse reads our .nir files with its own
importer (norse.torch.from_nir); its predictions are compared with our NIR-semantics simulator
and with the IR's torch runtime on MNIST test images.

    .venv/bin/python benchmarks/bench_nir.py [--n 500] [-T 32] [--frames]

``--frames``: the input is Bernoulli spike frames [N, T, 1, 28, 28] of the test images (P(spike) =
intensity, seed 0), one frame per step in Norse, our simulator and the IR runtime alike.

Needs /work/shared (MNIST IDX, sinabs model) and Norse installed without touching torch:
``pip install --no-deps norse nirtorch``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import nir
import numpy as np
import torch

import snnconvert
from snnconvert.runtime import SpikingNetwork
from snnconvert.targets import get_target

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared")
MODELS = {
    "examples/mnist": ROOT / "examples/mnist/model.onnx",
    "sinabs-mnist-cnn": SHARED / "models/sinabs-mnist-cnn/sinabs_mnist_cnn.onnx",
}


def mnist(n: int, offset: int = 0, train: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (x/255, [N,1,28,28]) and labels from the shared IDX files."""
    stem = "train" if train else "t10k"
    with gzip.open(SHARED / f"data/mnist/{stem}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(SHARED / f"data/mnist/{stem}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    sl = slice(offset, offset + n)
    return (x[sl].astype(np.float32) / 255.0), y[sl].astype(np.int64)


@torch.no_grad()
def norse_readout(graph: nir.NIRGraph, x: np.ndarray, timesteps: int) -> np.ndarray:
    """Mean output over T of Norse's import of ``graph``. NIR types carry no batch axis, so
    Norse's nn.Flatten(0, -1) needs unbatched samples: run one image at a time."""
    import norse.torch as norse

    logging.getLogger().setLevel(logging.ERROR)
    net = norse.from_nir(graph, dt=1.0)
    out = []
    per_step = x.ndim == 5
    for xi in torch.as_tensor(x):
        state, total = None, 0
        for t in range(timesteps):
            y, state = net(xi[t] if per_step else xi, state)
            total = total + y
        out.append((total / timesteps).numpy())
    return np.stack(out)


def run(name: str, path: Path, n: int, timesteps: int, frames: bool = False) -> dict:
    target = get_target("nir")
    calib, _ = mnist(1000, train=True)
    x, y = mnist(n)
    if frames:
        rng = np.random.default_rng(0)
        x = (rng.random((n, timesteps, *x.shape[1:]), dtype=np.float32) < x[:, None]).astype(np.float32)
    results = {}
    for label, kwargs in {"nir-exact (reset=zero, v_init=zero)": dict(reset="zero", v_init="zero"),
                          "default IR (subtract, theta/2), lossy NIR": {}}.items():
        model = snnconvert.convert(path, calib, timesteps=timesteps, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nir_path = target.compile(model, Path(tempfile.mkdtemp()) / f"{name}.nir")
        graph = nir.read(str(nir_path))
        t0 = time.perf_counter()
        ours_out = target.evaluate(nir_path, x, [timesteps]).readout[timesteps]
        ours = ours_out.argmax(1)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs_out = norse_readout(graph, x, timesteps)
        theirs = theirs_out.argmax(1)
        t_norse = time.perf_counter() - t0
        ir_pred = SpikingNetwork(model).simulate(x, [timesteps]).predictions(timesteps)
        results[label] = {
            "losses": len(caught),
            "agreement_norse_vs_ours": float(np.mean(theirs == ours)),
            "max_abs_readout_diff_norse_vs_ours": float(np.abs(theirs_out - ours_out).max()),
            "agreement_ir_runtime_vs_ours": float(np.mean(ir_pred == ours)),
            "acc_ours_nir": float(np.mean(ours == y)),
            "acc_norse": float(np.mean(theirs == y)),
            "acc_ir_runtime": float(np.mean(ir_pred == y)),
            "seconds_ours": round(t_ours, 1), "seconds_norse": round(t_norse, 1),
        }
        print(name, label, json.dumps(results[label]), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("-T", "--timesteps", type=int, default=32)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--frames", action="store_true", help="Bernoulli spike frames, one per step")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {name: run(name, p, args.n, args.timesteps, args.frames) for name, p in MODELS.items()
           if p.exists()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
