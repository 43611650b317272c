"""Calibration: run the network with onnxruntime on user data and collect, in one streaming
pass, statistics of every neuron's input current: max, per-channel max, and histograms of the
positive values (global and per channel) from which percentiles are read.

Histograms keep a fixed number of bins over [0, R]; when a batch exceeds R, R doubles (bins
pair up), so no activations are ever held beyond one batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .. import ir, onnxrt
from ..errors import DataError
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
        for r in np.nonzero(top > self.ranges)[0]:
            if self.ranges[r] == 0:
                self.ranges[r] = float(top[r])
                continue
            k = int(np.ceil(np.log2(top[r] / self.ranges[r])))
            f = 2 ** min(k, int(np.log2(bins)))
            merged = self.counts[r].reshape(-1, f).sum(1)
            self.counts[r] = np.concatenate([merged, np.zeros(bins - len(merged), np.int64)])
            self.ranges[r] *= 2 ** k
        pos = values > 0
        rows, cols = np.nonzero(pos)
        if rows.size == 0:
            return
        scale = np.where(self.ranges > 0, bins / np.maximum(self.ranges, 1e-30), 0.0)
        idx = np.minimum((values[pos] * scale[rows]).astype(np.int64), bins - 1)
        self.counts += np.bincount(rows * bins + idx, minlength=self.counts.size).reshape(
            self.counts.shape)

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

    def value(self, method: str, per_channel: bool) -> np.ndarray:
        """The normalization scale λ for ``method`` ('max' or 'percentile:P')."""
        if method == "max":
            return np.maximum(self.channel_max, 0.0) if per_channel else np.array(max(self.max, 0.0))
        p = float(method.split(":", 1)[1])
        if per_channel:
            return self.channel_hist.percentile(p)
        return np.array(self.hist.percentile(p)[0])


class Calibrate(Pass):
    """Collect per-neuron input statistics into ``ctx.stats`` (the model is unchanged)."""

    name = "calibrate"

    def __init__(self, batch_size: int = 100) -> None:
        self.batch_size = batch_size

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        if ctx.calib is None or len(ctx.calib) == 0:
            raise DataError("calibration needs data, but none was given",
                            hint="Pass --calib C.npz with an array 'x' of preprocessed inputs.")
        names = [n.input for n in ir.neurons(model)]
        stats = {n: ActivationStats() for n in names}
        for batch in onnxrt.iterate(model, ctx.calib, names, self.batch_size, ctx.progress,
                                    desc="calibrating"):
            for n, v in batch.items():
                stats[n].update(v)
        ctx.stats.update(stats)
        ctx.info(self.name, f"collected statistics of {len(names)} neuron input(s) over "
                 f"{len(ctx.calib)} sample(s)")
        return model
