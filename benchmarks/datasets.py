"""Typed loaders for the shared MNIST / Fashion-MNIST / CIFAR-10 data and the per-model preprocessing.

Images come back as uint8 (MNIST-family [N,28,28], CIFAR-10 [N,32,32,3] HWC RGB) with int64 labels;
`preprocess` turns them into the float32 input each model in /work/shared/models expects.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

SHARED = Path(os.environ.get("SNNCONVERT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DATA_DIR = Path(__file__).resolve().parent / "data"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

Split = Literal["train", "test"]


def shared(*parts: str) -> Path:
    """Path under the shared data/model folder; raises FileNotFoundError naming the folder if it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the benchmarks need the shared data/models folder at {SHARED} "
            "(a sibling 'shared' of the repository, or set SNNCONVERT_SHARED)"
        )
    return path


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzip'd IDX file: big-endian magic (ndim in its low byte), the dims, then raw uint8."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_dataset(folder: str, split: Split, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}[split]
    x = _read_idx(shared("data", folder, f"{prefix}-images-idx3-ubyte.gz"))
    y = _read_idx(shared("data", folder, f"{prefix}-labels-idx1-ubyte.gz"))
    return np.ascontiguousarray(x[:n]), y[:n].astype(np.int64)


def mnist(split: Split, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """First n (all if None) MNIST images of the split, canonical order: uint8 [n,28,28], int64 [n]."""
    return _idx_dataset("mnist", split, n)


def fashion_mnist(split: Split, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """First n (all if None) Fashion-MNIST images of the split: uint8 [n,28,28], int64 [n]."""
    return _idx_dataset("fashion-mnist", split, n)


def _per_class(n: int, total: int) -> int:
    if n <= 0 or n % 10 or n > total:
        raise ValueError(f"n must be a positive multiple of 10 and at most {total}, got {n}")
    return n // 10


def cifar10_test(n: int | None = None, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 test images, uint8 [n,32,32,3] HWC RGB and int64 labels.

    exact=True: the lossless first n (<= 100) test images in canonical order. Otherwise the JPEG-q75
    set: the first n/10 images of every class (index_within_class < n/10; all 10,000 if n is None),
    interleaved class by class (0,1,...,9,0,1,...) so that every prefix is class-balanced.
    """
    if exact:
        d = np.load(shared("data", "cifar10", "cifar10_test_first100_exact.npz"))
        if n is not None and not 0 < n <= len(d["y"]):
            raise ValueError(f"exact CIFAR-10 holds {len(d['y'])} images, asked for {n}")
        return d["x"][:n], d["y"][:n].astype(np.int64)
    d = np.load(shared("data", "cifar10", "cifar10_test_jpeg_q75_decoded.npz"))
    y, within = d["y"].astype(np.int64), d["index_within_class"].astype(np.int64)
    keep = np.arange(len(y)) if n is None else np.flatnonzero(within < _per_class(n, len(y)))
    order = keep[np.lexsort((y[keep], within[keep]))]
    return d["x"][order], y[order]


def cifar10_train(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n CIFAR-10 training images (n/10 per class, drawn with `seed`), decoded from the JPEG-q75 tar.

    uint8 [n,32,32,3] HWC RGB, int64 labels, interleaved class by class. The decoded array is cached
    in benchmarks/data/cifar10_train_n{n}_seed{seed}.npz.
    """
    per_class = _per_class(n, 50_000)
    cache = DATA_DIR / f"cifar10_train_n{n}_seed{seed}.npz"
    if cache.exists():
        d = np.load(cache)
        return d["x"], d["y"]
    from PIL import Image

    rng = np.random.default_rng(seed)
    picks = {c: np.sort(rng.choice(5000, per_class, replace=False)) for c in range(10)}
    wanted = {f"train/{name}/{k:04d}.jpg": (c, j) for c, name in enumerate(CIFAR10_CLASSES)
              for j, k in enumerate(picks[c])}
    x = np.zeros((per_class, 10, 32, 32, 3), np.uint8)
    found = 0
    with tarfile.open(shared("data", "cifar10", "cifar10_train_jpeg_q75.tar.gz"), "r:gz") as tar:
        for member in tar:
            slot = wanted.get(member.name)
            if slot is None:
                continue
            data = tar.extractfile(member).read()
            x[slot[1], slot[0]] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            found += 1
    if found != n:
        raise RuntimeError(f"found {found} of {n} wanted images in the CIFAR-10 train tar")
    x = x.reshape(n, 32, 32, 3)
    y = np.tile(np.arange(10, dtype=np.int64), per_class)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, x=x, y=y)
    return x, y


@dataclass(frozen=True)
class ModelSpec:
    """Where a shared model lives, which data it reads and how its input is normalised."""

    onnx: tuple[str, ...]
    dataset: Literal["mnist", "cifar10"]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC", "N784x1"] = "NCHW"

    @property
    def path(self) -> Path:
        """The ONNX file (raises FileNotFoundError when the shared folder is absent)."""
        return shared(*self.onnx)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
MODELS: dict[str, ModelSpec] = {
    "mnist-8": ModelSpec(("models", "mnist-8", "mnist-8.onnx"), "mnist"),
    "sinabs-mnist-cnn": ModelSpec(("models", "sinabs-mnist-cnn", "sinabs_mnist_cnn.onnx"), "mnist"),
    "convnet_avgpool": ModelSpec(("models", "vnncomp21-mnist", "Convnet_avgpool.onnx"), "mnist"),
    "mnist-net_256x2": ModelSpec(("models", "vnncomp21-mnist", "mnist-net_256x2.onnx"), "mnist",
                                 layout="N784x1"),
    "resnet20-cifar10": ModelSpec(("models", "resnet20-cifar10", "resnet20_cifar10_dynbatch.onnx"), "cifar10",
                                  _IMAGENET_MEAN, (0.229, 0.224, 0.225)),
    "resnet_2b": ModelSpec(("models", "vnncomp21-cifar10", "resnet_2b.onnx"), "cifar10",
                           (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar_base_kw": ModelSpec(("models", "vnncomp21-cifar10", "cifar_base_kw.onnx"), "cifar10",
                               _IMAGENET_MEAN, (0.225, 0.225, 0.225)),
    "cifar10_small": ModelSpec(("models", "vnncomp21-cifar10", "cifar10_small.onnx"), "cifar10",
                               layout="NHWC"),
}


def preprocess(name: str, images: np.ndarray) -> np.ndarray:
    """Float32 model input for uint8 images: x/255, per-channel (x-mean)/std, then the model's layout."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    x = images.astype(np.float32) / 255.0
    if spec.dataset == "mnist":
        x = x[..., None]  # [N,28,28] -> [N,28,28,1] so both datasets are NHWC here
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    elif spec.layout == "N784x1":
        x = x.reshape(len(x), -1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def evaluation_set(name: str, test_set: Literal["prepared", "full"] = "prepared", skip: int = 0,
                limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A model's test inputs and labels: the prepared file (benchmarks/data, the first 2,000 MNIST /
    1,000 CIFAR-10 images) or the whole test split ("full": MNIST 10,000, CIFAR-10 the 10,000 JPEG
    ones, class-interleaved), without its first ``skip`` images, then the first ``limit``."""
    if test_set == "prepared":
        d = np.load(DATA_DIR / f"{name}_test.npz")
        x, y = d["x"], d["y"]
    else:
        images, y = mnist("test") if MODELS[name].dataset == "mnist" else cifar10_test()
        x = preprocess(name, images)
    stop = None if limit is None else skip + limit
    return x[skip:stop], y[skip:stop]
