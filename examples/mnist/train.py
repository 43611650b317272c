"""Train the bundled MNIST CNN (Conv-BN-ReLU-AvgPool x2 + Linear) and export it to ONNX with BN kept.

Writes model.onnx, calib.npz (first 1,000 train images) and test.npz (first 1,000 test images) next to
this file. Reads the canonical MNIST IDX .gz files (default: <repo>/../shared/data/mnist).
"""

from __future__ import annotations

import argparse
import gzip
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "data" / "mnist"


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip'd IDX file (big-endian header: magic with ndim in the low byte, then the dims)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (x float32 [N,1,28,28] in [0,1], y int64 [N]) for split 'train' or 't10k'."""
    x = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
    y = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz")
    return (x.astype(np.float32) / 255.0)[:, None], y.astype(np.int64)


def build_model() -> nn.Sequential:
    """The example CNN: two Conv-BN-ReLU-AvgPool stages and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, seed: int) -> None:
    """Adam, lr 2e-3 decayed x0.3 per epoch; prints the mean training loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, t0 = 0.0, time.time()
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        print(f"epoch {epoch + 1}: loss {total / len(xt):.4f} ({time.time() - t0:.0f} s)")


def export(model: nn.Module, path: Path) -> None:
    """Export with BatchNormalization kept as separate nodes (training=PRESERVE, no constant folding)."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deliberate here
        torch.onnx.export(
            model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=13,
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the exported model in onnxruntime on x."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + 1000]})[0] for i in range(0, len(x), 1000)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        raise SystemExit(f"MNIST data not found in {args.data_dir}; pass --data-dir")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "t10k")

    model = build_model()
    train(model, x_train, y_train, args.epochs, args.batch_size, args.seed)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "model.onnx"
    export(model, onnx_path)
    ops = [n.op_type for n in onnx.load(str(onnx_path)).graph.node]
    n_bn = ops.count("BatchNormalization")
    if n_bn != 2:
        raise SystemExit(f"expected 2 BatchNormalization nodes in the export, found {n_bn}: {ops}")

    logits = ort_logits(onnx_path, x_test)
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test[:1000])).numpy()
    max_diff = float(np.abs(logits[:1000] - ref).max())
    if max_diff > 1e-4:
        raise SystemExit(f"onnxruntime differs from torch by {max_diff:.2e} (> 1e-4)")

    np.savez_compressed(args.out_dir / "calib.npz", x=x_train[:1000], y=y_train[:1000])
    np.savez_compressed(args.out_dir / "test.npz", x=x_test[:1000], y=y_test[:1000])
    pred = logits.argmax(1)
    print(f"ops: {ops}")
    print(f"max |ORT - torch| = {max_diff:.2e}")
    print(f"ANN accuracy (onnxruntime): first 1,000 test images {np.mean(pred[:1000] == y_test[:1000]):.2%}, "
          f"all 10,000 {np.mean(pred == y_test):.2%}")


if __name__ == "__main__":
    main()
