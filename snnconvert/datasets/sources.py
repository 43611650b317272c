"""Sample sources: map-style datasets (torch's Dataset protocol) that read samples on demand.

A :class:`Source` knows its length, per-sample shape and labels without reading the inputs, and
returns a whole batch per call (``__getitems__``, which torch's DataLoader uses), so loading
can run in DataLoader workers while the main process simulates. Sources hold paths, not open
files, across pickling: each worker opens its own memory map or shard.
"""
from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import DataError


class Source:
    """A sized, indexable dataset of (input float32, label int64) samples.

    Subclasses set ``sample_shape``, ``has_labels``, ``path`` and implement :meth:`__len__`,
    :meth:`read` and :meth:`labels`.
    """

    sample_shape: tuple[int, ...] = ()
    has_labels: bool = False
    path: str = ""
    default_workers: int = 0
    """DataLoader workers used when the caller does not say (0: load in the main process)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Inputs of ``indices`` as one float32 array [len(indices), *sample_shape]."""
        raise NotImplementedError

    def labels(self) -> np.ndarray | None:
        """All labels (int64, one per sample), or None without labels. Small: read eagerly."""
        raise NotImplementedError

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], (None if y is None else y[0])

    def __getitems__(self, indices) -> tuple:
        """(x, y) torch tensors of a whole batch: DataLoader calls this once per batch."""
        import torch

        idx = np.asarray(indices, np.int64)
        x = np.ascontiguousarray(self.read(idx), dtype=np.float32)
        labels = self.labels()
        y = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels[idx]))
        return torch.from_numpy(x), y

    def permutation(self, rng: np.random.Generator) -> np.ndarray:
        """A random order of all samples (shard-aware sources keep shards together)."""
        return rng.permutation(len(self))

    def describe(self) -> str:
        return f"{len(self)} samples of shape {list(self.sample_shape)} from {self.path}"


def _contiguous(idx: np.ndarray) -> bool:
    return len(idx) > 0 and idx[-1] - idx[0] == len(idx) - 1 and bool(np.all(np.diff(idx) == 1))


def _check_labels(y: np.ndarray | None, n: int, where: str) -> np.ndarray | None:
    if y is None:
        return None
    if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: 'y' must be {n} integer labels, got dtype {y.dtype} shape {list(y.shape)}")
    return np.asarray(y, np.int64)


class ArraySource(Source):
    """Samples held in (or memory-mapped as) numpy arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None, path: str = "<array>") -> None:
        x = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if x.ndim < 1 or x.dtype.kind not in "fiu" or len(x) == 0:
            raise DataError(f"{path}: 'x' must be a non-empty numeric array, got dtype {x.dtype} "
                            f"shape {list(x.shape)}")
        self.x, self._y = x, _check_labels(None if y is None else np.asarray(y), len(x), path)
        self.sample_shape, self.has_labels, self.path = tuple(x.shape[1:]), self._y is not None, path

    def __len__(self) -> int:
        return len(self.x)

    def read(self, indices: np.ndarray) -> np.ndarray:
        if _contiguous(indices):
            return np.array(self.x[indices[0]:indices[-1] + 1], np.float32)
        return np.array(self.x[indices], np.float32)

    def labels(self) -> np.ndarray | None:
        return self._y


class NpySource(ArraySource):
    """A pair of ``.npy`` files, memory-mapped: ``x.npy`` (inputs) and ``y.npy`` (labels, optional).

    Only the rows of the current batch are read from disk, so memory does not grow with the file.
    """

    def __init__(self, x_path: str | os.PathLike, y_path: str | os.PathLike | None = None) -> None:
        self.x_path, self.y_path = str(x_path), None if y_path is None else str(y_path)
        y = _load_npy(self.y_path, mmap=False) if self.y_path else None
        super().__init__(self._open(), y, self.x_path)
        self.default_workers = 0

    def _open(self) -> np.ndarray:
        return _load_npy(self.x_path, mmap=True)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["x"] = None  # a memory map pickles as a full copy: reopen in the worker instead
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.x = self._open()


def _load_npy(path: str, mmap: bool) -> np.ndarray:
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npy array ({type(exc).__name__}: {exc})",
                        hint="Save it with numpy.save(path, array).") from None


def _npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of array ``key`` in an .npz archive, read from its header only."""
    try:
        with zipfile.ZipFile(path) as z:
            name = key + ".npy"
            if name not in z.namelist():
                return None
            with z.open(name) as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(f)
                return tuple(shape), np.dtype(dtype)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"shard {path} is not a readable .npz archive ({type(exc).__name__})",
                        hint="Write each shard with numpy.savez(path, x=..., y=...).") from None


class NpzShards(Source):
    """A folder of ``.npz`` shards (each with ``x`` and optionally ``y``), read one shard at a time.

    Shard sizes come from the archive headers, so opening the folder reads no inputs; each
    process keeps the last ``cache`` shards it read. Shuffling permutes shards and the samples
    within each shard (:meth:`permutation`), so a shuffled epoch still reads every shard once.
    """

    def __init__(self, folder: str | os.PathLike, cache: int = 2) -> None:
        folder = Path(folder)
        self.path, self.cache = str(folder), cache
        self.files = sorted(p for p in folder.glob("*.npz") if p.is_file())
        if not self.files:
            raise DataError(f"{folder} holds no .npz shards")
        sizes, labels, shape = [], [], None
        for f in self.files:
            head = _npz_header(f, "x")
            if head is None:
                raise DataError(f"shard {f} has no array 'x'", hint="Store inputs under the key 'x'.")
            s, dtype = head
            if dtype.kind not in "fiu" or len(s) < 1:
                raise DataError(f"shard {f}: 'x' must be a numeric array, got dtype {dtype}")
            if shape is None:
                shape = s[1:]
            elif s[1:] != shape:
                raise DataError(f"shard {f}: samples have shape {list(s[1:])}, the first shard's "
                                f"have {list(shape)}")
            sizes.append(s[0])
            labels.append(self._read_labels(f, s[0]))
        have = [lab is not None for lab in labels]
        if any(have) and not all(have):
            raise DataError(f"{folder}: some shards have labels 'y' and others do not "
                            f"(e.g. {self.files[have.index(False)].name})")
        self.sample_shape, self.has_labels = tuple(shape), all(have)
        self._labels = np.concatenate(labels) if self.has_labels else None
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.default_workers = 1
        self._shards: OrderedDict[int, np.ndarray] = OrderedDict()

    @staticmethod
    def _read_labels(path: Path, n: int) -> np.ndarray | None:
        with np.load(path, allow_pickle=False) as f:
            return _check_labels(f["y"], n, f"shard {path}") if "y" in f.files else None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_shards"] = OrderedDict()
        return state

    def _shard(self, k: int) -> np.ndarray:
        if k in self._shards:
            self._shards.move_to_end(k)
            return self._shards[k]
        with np.load(self.files[k], allow_pickle=False) as f:
            x = f["x"]
        self._shards[k] = x
        while len(self._shards) > self.cache:
            self._shards.popitem(last=False)
        return x

    def read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.sample_shape), np.float32)
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self._shard(int(k))[indices[sel] - self.offsets[k]]
        return out

    def labels(self) -> np.ndarray | None:
        return self._labels

    def permutation(self, rng: np.random.Generator) -> np.ndarray:
        parts = [self.offsets[k] + rng.permutation(int(self.offsets[k + 1] - self.offsets[k]))
                 for k in rng.permutation(len(self.files))]
        return np.concatenate(parts)
