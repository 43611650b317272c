"""Open a data argument (a path, arrays, a Source, a DataLoader, any iterable of batches) and
read it batch by batch, sharded across torch.distributed ranks when there are several.

Everything that consumes data (calibration, eval, report, finetune) goes through
:func:`batches`, so each accepts every kind of data and holds one batch (times the
DataLoader's prefetch) in memory at a time.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .. import distributed
from ..data import check_sample_shape, load_npz
from ..errors import DataError
from .images import IMAGE_SUFFIXES, ImageFolder, Preprocess, read_toml
from .sources import ArraySource, NpySource, NpzShards, Source

Batch = tuple[np.ndarray, "np.ndarray | None"]
Data = Any
"""What data arguments accept: a Source, an ndarray of inputs, an (x, y) pair of arrays, a
torch DataLoader or any iterable of (x, y) batches (tensors or arrays; y may be None)."""


def open_data(path: str | os.PathLike, *, preprocess: str | os.PathLike | Preprocess | None = None,
              shape: list[int | None] | None = None, labels: bool = False, what: str = "data",
              limit: int | None = None, workers: int | None = None) -> Source:
    """The Source a data path names:

    - ``F.npz``: one archive with ``x`` (and ``y``), loaded whole (the original format);
    - ``F.npy``: inputs, memory-mapped; labels from ``F.labels.npy`` or ``y.npy`` beside it
      when ``F`` is ``x``;
    - a folder with ``x.npy`` (and ``y.npy``): the same, memory-mapped;
    - a folder of ``.npz`` shards: read shard by shard;
    - a folder of class sub-folders of images: decoded with Pillow, preprocessed by
      ``preprocess`` (a :class:`Preprocess`, a .toml file or inline ``key=value`` pairs; other
      kinds of data ignore it, being preprocessed already);
    - a ``.toml`` file with ``[data] path = ...`` (relative to the file) and a ``[preprocess]`` table.

    ``shape`` (the model's per-sample input shape) is checked; ``labels`` requires labels;
    ``workers`` overrides the source's default number of DataLoader workers.
    """
    p = Path(path)
    if p.suffix == ".toml" and p.is_file():
        source = _from_toml(p, preprocess)
    elif not p.exists():
        raise DataError(f"{what} {'file' if p.suffix else 'folder'} not found: {p}")
    elif p.is_file() and p.suffix == ".npz":
        d = load_npz(p, labels=labels, shape=shape, what=what)
        source = ArraySource(d.x, d.y, str(p))
    elif p.is_file() and p.suffix == ".npy":
        source = NpySource(p, _labels_beside(p))
    elif p.is_dir() and (p / "x.npy").is_file():
        y = p / "y.npy"
        source = NpySource(p / "x.npy", y if y.is_file() else None)
    elif p.is_dir() and any(p.glob("*.npz")):
        source = NpzShards(p)
    elif p.is_dir() and _has_class_folders(p):
        source = ImageFolder(p, preprocess if isinstance(preprocess, Preprocess) else Preprocess.parse(preprocess))
    else:
        raise DataError(f"{what} data {p}: not a data file or folder",
                        hint="Give a .npz file, a .npy file or folder with x.npy/y.npy, a folder of "
                             ".npz shards, or an image folder with one sub-folder per class.")
    check(source, shape=shape, labels=labels, what=what)
    if workers is not None:
        source.default_workers = workers
    return source if limit is None else Subset(source, limit)


def _labels_beside(x_path: Path) -> Path | None:
    stem = x_path.name[:-4]
    candidates = [x_path.with_name(stem + ".labels.npy")]
    if stem == "x":
        candidates.append(x_path.with_name("y.npy"))
    return next((c for c in candidates if c.is_file()), None)


def _has_class_folders(p: Path) -> bool:
    return any(d.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())
               for d in p.iterdir())


def _from_toml(path: Path, preprocess) -> Source:
    table = read_toml(path)
    data = table.get("data", {})
    if "path" not in data:
        raise DataError(f"{path}: no [data] path = \"...\" entry",
                        hint="Name the image folder (or data file) under [data] path.")
    root = (path.parent / data["path"]).resolve()
    spec = preprocess if preprocess is not None else Preprocess.parse(table.get("preprocess", {}))
    if not root.is_dir() or not _has_class_folders(root):
        raise DataError(f"{path}: {root} is not an image folder with class sub-folders")
    return ImageFolder(root, spec if isinstance(spec, Preprocess) else Preprocess.parse(spec),
                       classes=data.get("classes"))


def check(source: Source, *, shape: list[int | None] | None = None, labels: bool = False,
          what: str = "data") -> None:
    """One DataError line when the samples do not fit the model or labels are missing."""
    if labels and not source.has_labels:
        raise DataError(f"{what} data {source.path} has no labels", hint="Add integer labels (y).")
    if shape is not None:
        check_sample_shape(list(source.sample_shape), shape, f"{what} data {source.path}")


class Subset(Source):
    """The first ``n`` samples of a source (``--limit``)."""

    def __init__(self, source: Source, n: int) -> None:
        self.source, self.n = source, min(n, len(source))
        self.sample_shape, self.has_labels = source.sample_shape, source.has_labels
        self.path, self.default_workers = source.path, source.default_workers

    def __len__(self) -> int:
        return self.n

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.source.read(indices)

    def labels(self) -> np.ndarray | None:
        labels = self.source.labels()
        return None if labels is None else labels[:self.n]


def as_source(data: Data) -> Source | None:
    """``data`` as a Source when it is one or is in-memory arrays; None for other iterables."""
    if isinstance(data, Source):
        return data
    if isinstance(data, np.ndarray):
        return ArraySource(data)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        return ArraySource(data[0], data[1])
    return None


class ShardedBatches:
    """Batches of a given sample order, split for this rank.

    ``split="batches"``: rank r takes whole batches r, r+W, ... (each identical to the
    single-process batch, so per-batch results are bit-equal: evaluation, statistics).
    ``split="within"``: every rank takes its slice of every global batch (training: the
    global batch, hence the gradient step, is the same whatever the process count).
    """

    def __init__(self, order: np.ndarray, batch_size: int, split: str = "batches",
                 rank: int | None = None, world: int | None = None, skip: int = 0) -> None:
        self.order, self.batch_size, self.split = order, batch_size, split
        self.rank = distributed.rank() if rank is None else rank
        self.world = distributed.world_size() if world is None else world
        self.skip = skip

    def global_batches(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.skip, self.global_batches()):
            idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.split == "batches":
                if b % self.world == self.rank:
                    yield idx.tolist()
            else:
                part = np.array_split(idx, self.world)[self.rank]
                yield part.tolist()

    def __len__(self) -> int:
        if self.split == "batches":
            return len(range(self.skip + (self.rank - self.skip) % self.world, self.global_batches(),
                             self.world))
        return self.global_batches() - self.skip


def _batch_of(items):
    """collate_fn: Source.__getitems__ already returns one batch."""
    return items


def loader(source: Source, batch_size: int, *, order: np.ndarray | None = None, split: str = "batches",
           shard: bool = True, workers: int | None = None, prefetch: int = 2, skip: int = 0,
           pin_memory: bool = False):
    """A DataLoader over ``source`` yielding (x, y) tensors, this rank's share when ``shard``.

    ``workers`` (default: the source's own, 2 for image folders) decode in background
    processes, ``prefetch`` batches ahead each, so loading overlaps simulation.
    """
    from torch.utils.data import DataLoader

    order = np.arange(len(source)) if order is None else order
    sampler = ShardedBatches(order, batch_size, split, *((None, None) if shard else (0, 1)), skip=skip)
    workers = source.default_workers if workers is None else workers
    # forkserver: workers start from a small server process, not as forks of this one, which by
    # then may hold gigabytes (calibration, the network) that copy-on-write would duplicate
    return DataLoader(source, batch_sampler=sampler, collate_fn=_batch_of, num_workers=workers,
                      prefetch_factor=prefetch if workers else None, persistent_workers=False,
                      pin_memory=pin_memory, multiprocessing_context="forkserver" if workers else None)


def _numpy(v) -> np.ndarray | None:
    if v is None:
        return None
    if hasattr(v, "detach"):  # a torch tensor
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _direct(source: Source, batch_size: int, shard: bool) -> Iterator[Batch]:
    """Batches read in this process (no workers: no DataLoader, no torch import)."""
    sampler = ShardedBatches(np.arange(len(source)), batch_size, "batches",
                             *((None, None) if shard else (0, 1)))
    labels = source.labels()
    for idx in sampler:
        idx = np.asarray(idx, np.int64)
        yield source.read(idx), None if labels is None else labels[idx]


def batches(data: Data, batch_size: int = 256, *, shard: bool = True, workers: int | None = None,
            prefetch: int = 2) -> Iterator[Batch]:
    """(x float32, y int64 or None) numpy batches of ``data``.

    Sources and arrays are read in order in batches of ``batch_size``, and under
    torch.distributed each rank reads every W-th batch (``shard``). A DataLoader or other
    iterable is read as it comes, as this rank's share (give it a DistributedSampler yourself).
    """
    source = as_source(data)
    if source is not None and not (source.default_workers if workers is None else workers):
        it: Iterable = _direct(source, batch_size, shard)
    elif source is not None:
        it = loader(source, batch_size, shard=shard, workers=workers, prefetch=prefetch)
    elif isinstance(data, (str, os.PathLike)):
        raise DataError(f"a path ({data}) was given where data was expected",
                        hint="Open it with snnconvert.datasets.open_data(path).")
    else:
        it = data
    for item in it:
        if isinstance(item, dict):
            x, y = item.get("x"), item.get("y")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            x, y = item
        else:
            x, y = item, None
        x = _numpy(x)
        if x is None or x.dtype.kind not in "fiu":
            raise DataError(f"a data batch must be (x, y) with numeric x, got {type(item).__name__}")
        y = _numpy(y)
        if y is not None and (y.dtype.kind not in "iu" or y.shape != (len(x),)):
            raise DataError(f"a batch's labels must be {len(x)} integers, got dtype {y.dtype} "
                            f"shape {list(y.shape)}")
        yield np.ascontiguousarray(x, np.float32), (None if y is None else y.astype(np.int64, copy=False))


def is_empty(data: Data) -> bool:
    """No data: None, or a sized collection of length 0 (a stream of unknown length is not)."""
    if data is None:
        return True
    try:
        return len(data) == 0
    except TypeError:
        return False


def head(data: Data, n: int) -> np.ndarray:
    """The first ``n`` inputs of ``data`` as one float32 array (never sharded: every rank gets
    the same samples). For passes that simulate a bounded in-memory subset."""
    if isinstance(data, np.ndarray):
        return np.asarray(data[:n], np.float32)
    return head_labelled(data, n)[0]


def head_labelled(data: Data, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``n`` (inputs, labels) of ``data`` (labels None when it has none)."""
    source = as_source(data)
    if source is not None:
        idx = np.arange(min(n, len(source)))
        labels = source.labels()
        return source.read(idx), None if labels is None else labels[idx]
    xs, ys, got = [], [], 0
    for x, y in batches(data, shard=False):
        xs.append(x[:n - got])
        ys.append(None if y is None else y[:n - got])
        got += len(xs[-1])
        if got >= n:
            break
    if not xs:
        raise DataError("the data stream is empty")
    return np.concatenate(xs), None if any(y is None for y in ys) else np.concatenate(ys)


def count(data: Data) -> int | None:
    """Number of samples, when known without reading the data."""
    source = as_source(data)
    if source is not None:
        return len(source)
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None
