"""Arrays kept in memory up to a byte budget, the rest in temporary files.

Layer-by-layer calibration reads each layer's input current and ANN activation over all its
samples several times (one pass per candidate set); holding them whole would make its memory
grow with the number of samples. The spool holds them as chunks of samples: in memory while
the total stays under ``budget`` bytes, on disk (read back whole on each access, so nothing
stays mapped) beyond it.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

BUDGET = 1 << 30
"""Bytes a spool keeps in memory before it writes chunks to disk."""


class Spool:
    """Chunks of arrays under (key, index); ``close()`` (or the context manager) removes its files."""

    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self.in_memory = 0
        self.spilled = 0
        self._mem: dict[tuple[str, int], np.ndarray] = {}
        self._files: dict[tuple[str, int], Path] = {}
        self._dir: Path | None = None
        self._written = 0

    def put(self, key: str, index: int, value: np.ndarray) -> None:
        """Keep ``value``: in memory, a copy where it views memory it does not own (an
        onnxruntime output held here would pin the shared arena's memory, which is never
        returned, for as long as it is spooled); past the budget, written to disk as it is."""
        self.drop_one(key, index)
        value = np.ascontiguousarray(value)
        if self.in_memory + value.nbytes <= self.budget:
            self._mem[(key, index)] = value if value.base is None else value.copy()
            self.in_memory += value.nbytes
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="snnconvert-spool-"))
        self._written += 1
        path = self._dir / f"{self._written}.npy"
        np.save(path, value)
        self._files[(key, index)] = path
        self.spilled += value.nbytes

    def get(self, key: str, index: int) -> np.ndarray:
        value = self._mem.get((key, index))
        return value if value is not None else np.load(self._files[(key, index)])

    def __contains__(self, item: tuple[str, int]) -> bool:
        return item in self._mem or item in self._files

    def drop_one(self, key: str, index: int) -> None:
        value = self._mem.pop((key, index), None)
        if value is not None:
            self.in_memory -= value.nbytes
        path = self._files.pop((key, index), None)
        if path is not None:
            path.unlink(missing_ok=True)

    def drop(self, key: str) -> None:
        """Forget every chunk of ``key``."""
        for k, i in [ki for ki in (*self._mem, *self._files) if ki[0] == key]:
            self.drop_one(k, i)

    def close(self) -> None:
        self._mem.clear()
        self._files.clear()
        self.in_memory = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
