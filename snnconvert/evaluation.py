"""Evaluation over a data stream: the reference ANN (onnxruntime) and the SNN (a target) run
batch by batch, and only counts are kept (correct, agreeing, spikes per layer), so memory does
not grow with the number of samples. Under torch.distributed each rank evaluates every W-th
batch, identical to the single-process batch, and the integer counts are summed exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable

import numpy as np
import onnx
from tqdm.auto import tqdm

from . import distributed, onnxrt
from .datasets import Data, batches, count
from .data import ann_input
from .errors import DataError, TargetError
from .results import SimResult
from .runtime.memory import sample_bytes, samples_within

STREAM_CHUNK = 1024
"""Samples per call of a target without a reusable simulator (each call rebuilds the network)."""


@dataclass
class Tally:
    """Counts over the evaluated samples, per T."""

    samples: int = 0
    labelled: int = 0
    ann_correct: int = 0
    correct: dict[int, int] = field(default_factory=dict)
    agree: dict[int, int] = field(default_factory=dict)
    spikes: dict[int, dict[str, float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    rate_sums: dict[int, dict[str, float]] = field(default_factory=dict)
    """Σ layer rate × batch size, for targets that report rates but not spike counts."""
    firing_sums: dict[int, float] = field(default_factory=dict)

    def add(self, result: SimResult, ann_pred: np.ndarray, y: np.ndarray | None) -> None:
        n = len(ann_pred)
        self.samples += n
        if y is not None:
            self.labelled += n
            self.ann_correct += int(np.sum(ann_pred == y))
        for t in result.readout:
            pred = result.predictions(t)
            if y is not None:
                self.correct[t] = self.correct.get(t, 0) + int(np.sum(pred == y))
            self.agree[t] = self.agree.get(t, 0) + int(np.sum(pred == ann_pred))
            if result.spikes.get(t):
                per = self.spikes.setdefault(t, {})
                for name, s in result.spikes[t].items():
                    per[name] = per.get(name, 0.0) + float(s)
            else:
                per = self.rate_sums.setdefault(t, {})
                for name, r in result.layer_rates.get(t, {}).items():
                    per[name] = per.get(name, 0.0) + float(r) * n
                self.firing_sums[t] = self.firing_sums.get(t, 0.0) + float(result.firing_rate.get(t, 0.0)) * n
        self.sizes.update(result.sizes)

    def reduce(self, timesteps: list[int]) -> None:
        """Sum the counts of every torch.distributed rank (exact: integers)."""
        if distributed.world_size() == 1:
            return
        names, sizes = distributed.broadcast_object((list(self.sizes), self.sizes))
        self.sizes = sizes
        head = distributed.all_sum(np.array([self.samples, self.labelled, self.ann_correct], np.int64))
        self.samples, self.labelled, self.ann_correct = (int(v) for v in head)
        per_t = distributed.all_sum(np.array([[self.correct.get(t, 0), self.agree.get(t, 0)]
                                              for t in timesteps], np.int64))
        self.correct = {t: int(c) for t, (c, _) in zip(timesteps, per_t)}
        self.agree = {t: int(a) for t, (_, a) in zip(timesteps, per_t)}
        if names:
            spikes = distributed.all_sum(np.array([[self.spikes.get(t, {}).get(k, 0.0) for k in names]
                                                   for t in timesteps], np.float64))
            self.spikes = {t: dict(zip(names, map(float, row))) for t, row in zip(timesteps, spikes)}
        layers = distributed.broadcast_object(list(dict.fromkeys(k for v in self.rate_sums.values() for k in v)))
        if layers:
            sums = distributed.all_sum(np.array([[self.rate_sums.get(t, {}).get(k, 0.0) for k in layers]
                                                 + [self.firing_sums.get(t, 0.0)] for t in timesteps]))
            self.rate_sums = {t: dict(zip(layers, map(float, row[:-1]))) for t, row in zip(timesteps, sums)}
            self.firing_sums = {t: float(row[-1]) for t, row in zip(timesteps, sums)}

    def layer_rates(self, t: int) -> dict[str, float]:
        """Mean spikes per neuron per step, per layer, at T = ``t``."""
        if t in self.spikes:
            return {k: v / (self.samples * self.sizes[k] * t) for k, v in self.spikes[t].items()}
        return {k: v / self.samples for k, v in self.rate_sums.get(t, {}).items()}

    def firing_rate(self, t: int) -> float:
        """Mean spikes per neuron per step over all neuron layers at T = ``t``."""
        if t in self.spikes:
            total = sum(self.sizes[k] for k in self.spikes[t])
            return sum(self.spikes[t].values()) / (self.samples * total * t) if total else 0.0
        return self.firing_sums.get(t, 0.0) / self.samples if self.samples else 0.0


EVAL_BYTES = 4 << 30
"""Bytes of one sample's tensors (:func:`~snnconvert.runtime.memory.sample_bytes`) × the default
batch of an evaluation: 256 samples of ResNet-20 (2.7 MB each) or of a ResNet-56-size network, 32
of VGG-19 at 224×224 (126 MB), whose 256 would hold tens of GB of neuron state."""


def simulator(backend: ModuleType, source, timesteps: list[int], options: dict, batch: int = 256
              ) -> tuple[Callable[[np.ndarray], SimResult], int]:
    """(x -> SimResult, batch size to read the stream in) for ``backend``; ``batch``: the batch
    unless ``options`` name one.

    A target exposing ``simulator(source, timesteps, **options)`` builds its network once; any
    other is called on chunks of :data:`STREAM_CHUNK` samples (its own batching inside).
    """
    make = getattr(backend, "simulator", None)
    if make is not None:
        options = {"batch_size": batch, **options}
        return make(source, timesteps, **options), int(options["batch_size"])
    return (lambda x: backend.evaluate(source, x, timesteps, **options)), STREAM_CHUNK


def tally(source, reference: onnx.ModelProto, data: Data, timesteps: list[int], backend: ModuleType,
          options: dict, *, workers: int | None = None, progress: bool = False) -> Tally:
    """Run ``reference`` (onnxruntime) and the SNN ``source`` on ``backend`` over ``data``."""
    default = samples_within(sample_bytes(reference)[1], 256, EVAL_BYTES)
    simulate, batch_size = simulator(backend, source, timesteps, options, default)
    name = reference.graph.output[0].name
    sess = onnxrt.session(reference, outputs=[name])
    input_name = sess.get_inputs()[0].name
    rank = len(sess.get_inputs()[0].shape)
    result = Tally()
    total = count(data)
    bar = tqdm(total=total, desc=f"evaluating T={max(timesteps)}", unit="img", leave=False,
               disable=not progress or not distributed.is_main())
    try:
        for x, y in batches(data, batch_size, workers=workers):
            if x.ndim == rank + 1 and not getattr(backend, "TIME_VARYING_INPUT", False):
                raise TargetError(f"the {backend.__name__.rsplit('.', 1)[-1]} target injects a constant "
                                  f"input current; this data has a time axis ({list(x.shape)})",
                                  hint="Run time-varying input on --target torch.")
            static = ann_input(x, rank, max(timesteps))
            ann = np.concatenate([sess.run([name], {input_name: static[i:i + default]})[0]
                                  for i in range(0, len(x), default)])
            result.add(simulate(x), np.argmax(ann.reshape(len(x), -1), axis=1), y)
            bar.update(len(x) * distributed.world_size())
    finally:
        bar.close()
    result.reduce(timesteps)
    if result.samples == 0:
        raise DataError("the evaluation data is empty")
    if 0 < result.labelled < result.samples:
        raise DataError("some evaluation batches have labels and others do not")
    return result
