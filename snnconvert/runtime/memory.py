"""Bound the C heap of a long simulation (glibc): hand freed pages back when they pile up.

Every time chunk allocates and frees the same large activations; the small long-lived
allocations made in between (tensor headers, per-step totals, running sums) land inside the
freed blocks, so glibc cannot reuse them whole and the heap keeps growing: ResNet-20 at T=64,
batch 256, reached 5-8 GB resident for 0.7 GB of live data. Trimming after every chunk would
make every later allocation fault its pages in again (2.7x slower there), so the guard trims at
the start of each batch and then only when resident memory exceeds the live level (measured
after the first chunk) by ``headroom`` bytes (there: 1.1 GB above the start instead of 4.9 GB,
for 15-25 % more CPU time). When the live data itself grows (a caller keeping results), the
limit moves up with it instead of trimming at every chunk. Elsewhere than Linux with glibc it
does nothing.

It also sizes batches by bytes (:func:`sample_bytes`, :func:`samples_within`): a pass that runs
"256 samples at once" holds 0.7 GB of tensors on ResNet-20 (2.7 MB a sample) but 32 GB on VGG-19
at 224×224 (126 MB a sample), so sample counts chosen on CIFAR-size networks are capped by the
bytes a sample's tensors take.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import onnx

from ..errors import SnnConvertError
from ..ops.shapes import tensor_shapes

BATCH_HEADROOM = 1 << 30
"""Resident bytes a batch may add above its starting level before free pages are returned."""


def _trim_function():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _trim_function()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident memory, or None where /proc is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


class HeapGuard:
    """``start()`` at the beginning of a batch, ``check()`` after each time chunk."""

    def __init__(self, headroom: int = BATCH_HEADROOM) -> None:
        self.headroom = headroom
        self.limit: int | None = None
        self.trims = 0
        self._fresh = False

    def start(self) -> None:
        """Return what the last batch left freed (so the peak does not creep from batch to batch);
        the live level is measured after this batch's first chunk, once the simulation's state
        (membrane potentials, spike counts) exists."""
        if _TRIM is None:
            return
        _TRIM(0)
        self._fresh = self.limit is None

    def check(self) -> None:
        if self._fresh:
            self._fresh = False
            _TRIM(0)
            rss = resident_bytes()
            self.limit = None if rss is None else rss + self.headroom
            return
        if self.limit is None:
            return
        rss = resident_bytes()
        if rss is not None and rss > self.limit:
            _TRIM(0)
            self.trims += 1
            live = resident_bytes() or 0
            if live + self.headroom // 2 > self.limit:
                self.limit = live + self.headroom


BATCH_BYTES = 1 << 30
"""Bytes of float32 tensors (every tensor of the graph, once per sample, or per sample and step
where the steps are unrolled) that one batch of a calibration pass may hold: above ResNet-20's
batches (256 samples × 2.7 MB, so CIFAR-size networks keep their sample counts), about 8 samples
of VGG-19 at 224×224 (126 MB each)."""


def sample_bytes(model: onnx.ModelProto) -> tuple[int, int]:
    """(largest, total) bytes of one sample's tensors as float32: the graph input and every node
    output, from the ops' shape rules; (0, 0) where a shape cannot be derived (no bound then)."""
    try:
        shapes = tensor_shapes(model)
    except SnnConvertError:
        return 0, 0
    sizes = [4 * int(np.prod(shape, dtype=np.int64)) for shape in shapes.values()] or [0]
    return max(sizes), sum(sizes)


def samples_within(per_sample: int, most: int, budget: int = BATCH_BYTES) -> int:
    """``most`` samples, or fewer (at least one) where ``per_sample`` bytes each pass ``budget``."""
    if per_sample <= 0:
        return max(1, most)
    return max(1, min(most, budget // per_sample))
