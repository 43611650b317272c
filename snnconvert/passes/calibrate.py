"""Calibration: run the network with onnxruntime on user data and collect, in one streaming
pass, statistics of every neuron's input current: max, per-channel max, and histograms of the
positive values (global and per channel) from which percentiles are read.

Histograms keep a fixed number of bins over [0, R) with R a power of two above every value seen;
when a batch reaches R, R doubles (bins pair up), so no activations are ever held beyond one
batch. Bin edges are then powers of two apart and binning is exact in floating point, so a
histogram does not depend on the order of the batches: shards of the data (one per
torch.distributed rank) reduce to exactly the single-process histogram.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .. import distributed, ir, onnxrt
from ..datasets import batches
from ..errors import DataError
from ..runtime.memory import sample_bytes, samples_within
from .base import Pass, PassContext

BINS = 2048


@dataclass
class Histogram:
    """Counts of positive values over [0, R] in ``counts.shape[-1]`` bins, per row (channel)."""

    counts: np.ndarray
    ranges: np.ndarray

    @classmethod
    def empty(cls, rows: int, bins: int = BINS) -> "Histogram":
        return cls(np.zeros((rows, bins), np.int64), np.zeros(rows))

    def add(self, values: np.ndarray) -> None:
        """values: [rows, n] (non-positive entries are ignored)."""
        bins = self.counts.shape[1]
        top = values.max(axis=1, initial=0.0)
        for r in np.nonzero(top >= self.ranges)[0]:
            if top[r] > 0:
                self.grow(int(r), float(np.ldexp(1.0, np.frexp(top[r])[1])))
        pos = values > 0
        rows, cols = np.nonzero(pos)
        if rows.size == 0:
            return
        scale = np.where(self.ranges > 0, bins / np.maximum(self.ranges, 1e-30), 0.0)
        idx = np.minimum((values[pos] * scale[rows]).astype(np.int64), bins - 1)
        self.counts += np.bincount(rows * bins + idx, minlength=self.counts.size).reshape(
            self.counts.shape)

    def grow(self, r: int, new_range: float) -> None:
        """Widen row ``r`` to [0, new_range) (a power of two at least the current range)."""
        bins = self.counts.shape[1]
        if self.ranges[r] == 0:
            self.ranges[r] = new_range
            return
        k = int(round(np.log2(new_range / self.ranges[r])))
        if k <= 0:
            return
        f = 2 ** min(k, int(np.log2(bins)))
        merged = self.counts[r].reshape(-1, f).sum(1)
        self.counts[r] = np.concatenate([merged, np.zeros(bins - len(merged), np.int64)])
        self.ranges[r] = new_range

    def reduce(self) -> None:
        """Merge this histogram over the torch.distributed ranks (exact: same ranges, summed counts)."""
        ranges = distributed.all_max(self.ranges)
        for r in np.nonzero(ranges > self.ranges)[0]:
            self.grow(int(r), float(ranges[r]))
        self.counts = distributed.all_sum(self.counts)

    def percentile(self, p: float) -> np.ndarray:
        """Per-row p-th percentile of the positive values (0 where a row saw none)."""
        bins = self.counts.shape[1]
        cum = np.cumsum(self.counts, axis=1)
        total = cum[:, -1]
        out = np.zeros(len(total))
        for r in np.nonzero(total)[0]:
            target = p / 100.0 * total[r]
            b = int(np.searchsorted(cum[r], target))
            b = min(b, bins - 1)
            before = cum[r, b - 1] if b else 0
            frac = (target - before) / max(self.counts[r, b], 1)
            out[r] = (b + min(max(frac, 0.0), 1.0)) * self.ranges[r] / bins
        return out


@dataclass
class ActivationStats:
    """Statistics of one neuron's input current over the calibration data."""

    max: float = 0.0
    channel_max: np.ndarray | None = None
    hist: Histogram | None = None
    channel_hist: Histogram | None = None
    count: int = 0
    extra: dict = field(default_factory=dict)

    def update(self, x: np.ndarray) -> None:
        channels = x.shape[1] if x.ndim > 1 else 1
        per_channel = np.moveaxis(x, 1, 0).reshape(channels, -1) if x.ndim > 1 else x.reshape(1, -1)
        if self.hist is None:
            self.hist, self.channel_hist = Histogram.empty(1), Histogram.empty(channels)
            self.channel_max = np.full(channels, -np.inf)
        self.max = max(self.max, float(x.max()))
        self.channel_max = np.maximum(self.channel_max, per_channel.max(axis=1))
        self.hist.add(x.reshape(1, -1))
        self.channel_hist.add(per_channel)
        self.count += x.shape[0]

    def reduce(self) -> None:
        """Combine the statistics of every torch.distributed rank (each saw its shard)."""
        if distributed.world_size() == 1:
            return
        channels = int(distributed.all_max(0 if self.channel_max is None else len(self.channel_max)))
        if self.hist is None:
            self.hist, self.channel_hist = Histogram.empty(1), Histogram.empty(channels)
            self.channel_max = np.full(channels, -np.inf)
        self.max = float(distributed.all_max(self.max))
        self.channel_max = distributed.all_max(self.channel_max)
        self.hist.reduce()
        self.channel_hist.reduce()
        self.count = int(distributed.all_sum(self.count))

    def value(self, method: str, per_channel: bool) -> np.ndarray:
        """The normalization scale λ for ``method`` ('max' or 'percentile:P')."""
        if method == "max":
            return np.maximum(self.channel_max, 0.0) if per_channel else np.array(max(self.max, 0.0))
        p = float(method.split(":", 1)[1])
        if per_channel:
            return self.channel_hist.percentile(p)
        return np.array(self.hist.percentile(p)[0])


def steps_as_samples(x: np.ndarray, rank: int) -> np.ndarray:
    """A time-varying batch [N, T, ...] (one more axis than the model's ``rank``) as N*T
    samples, so statistics are taken over every step; a static batch as it is."""
    return x.reshape(-1, *x.shape[2:]) if x.ndim == rank + 1 else x


class Calibrate(Pass):
    """Collect per-neuron input statistics into ``ctx.stats`` (the model is unchanged); on
    time-varying data, over all steps of every sample."""

    name = "calibrate"

    def __init__(self, batch_size: int = 100) -> None:
        """``batch_size``: samples run at once, fewer where their tensors would pass
        :data:`~snnconvert.runtime.memory.BATCH_BYTES`."""
        self.batch_size = batch_size

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        if ctx.calib is None or (isinstance(ctx.calib, np.ndarray) and len(ctx.calib) == 0):
            raise DataError("calibration needs data, but none was given",
                            hint="Pass --calib C.npz with an array 'x' of preprocessed inputs.")
        names = [n.input for n in ir.neurons(model)]
        stats = {n: ActivationStats() for n in names}
        rank = ir.input_rank(model)
        size = samples_within(sample_bytes(model)[1], self.batch_size)  # exact whatever the batch
        inputs = (steps_as_samples(x, rank) for x, _ in batches(ctx.calib, size))
        for batch in onnxrt.iterate(model, inputs, names, size, ctx.progress,
                                    desc="calibrating"):
            for n, v in batch.items():
                stats[n].update(v)
        for s in stats.values():
            s.reduce()
        seen = next(iter(stats.values())).count if stats else 0
        if names and seen == 0:
            raise DataError("calibration needs data, but the calibration stream was empty")
        ctx.stats.update(stats)
        ctx.info(self.name, f"collected statistics of {len(names)} neuron input(s) over "
                 f"{seen} sample(s)")
        return model
