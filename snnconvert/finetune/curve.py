"""Accuracy over training time: train under a time budget, evaluating every few batches with the
clock stopped, so that two training runs (a converted network fine-tuned, the same network trained
from scratch) can be compared on the time each takes to reach an accuracy.

Both clocks are kept, wall (``time.perf_counter``) and this process's CPU time
(``time.process_time``): on a shared machine the wall clock also counts other jobs' load.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

import numpy as np
import torch

from ..errors import OptionError
from .trainer import Trainer, accuracy

Clock = Literal["wall", "cpu"]
CLOCKS: tuple[str, ...] = ("wall", "cpu")


@dataclass(frozen=True)
class CurvePoint:
    """Validation accuracy after ``samples`` training samples and the time they took (training
    only, evaluation excluded; a curve's offset not included)."""

    samples: int
    wall_s: float
    cpu_s: float
    accuracy: float

    def seconds(self, clock: Clock) -> float:
        return self.wall_s if clock == "wall" else self.cpu_s


@dataclass
class Curve:
    """One training run's accuracy over time. ``offset_wall_s``/``offset_cpu_s``: the time spent
    before training started that counts against this run (e.g. ANN training plus conversion)."""

    name: str
    points: list[CurvePoint] = field(default_factory=list)
    offset_wall_s: float = 0.0
    offset_cpu_s: float = 0.0

    def time(self, point: CurvePoint, clock: Clock = "wall") -> float:
        """Seconds on ``clock`` from the start of the run (offset included) to ``point``."""
        return point.seconds(clock) + (self.offset_wall_s if clock == "wall" else self.offset_cpu_s)

    def best(self) -> CurvePoint:
        """The first point of the highest accuracy."""
        if not self.points:
            raise OptionError(f"curve '{self.name}' has no points")
        top = max(p.accuracy for p in self.points)
        return next(p for p in self.points if p.accuracy == top)

    def first_reaching(self, target: float) -> CurvePoint | None:
        """The first point whose accuracy is at least ``target``; None if none is."""
        return next((p for p in self.points if p.accuracy >= target), None)

    def time_to_reach(self, target: float, clock: Clock = "wall") -> float | None:
        """Seconds (offset included) until the accuracy first reaches ``target``; None if never."""
        point = self.first_reaching(target)
        return None if point is None else self.time(point, clock)

    def to_dict(self) -> dict:
        return {"name": self.name, "offset_wall_s": self.offset_wall_s, "offset_cpu_s": self.offset_cpu_s,
                "points": [asdict(p) for p in self.points]}

    @classmethod
    def from_dict(cls, d: dict) -> "Curve":
        return cls(d["name"], [CurvePoint(**p) for p in d["points"]], d.get("offset_wall_s", 0.0),
                   d.get("offset_cpu_s", 0.0))


class Stopwatch:
    """Wall and CPU seconds accumulated while running (``with watch.running(): ...``)."""

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._started: tuple[float, float] | None = None

    def start(self) -> None:
        if self._started is None:
            self._started = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        if self._started is not None:
            wall, cpu = self._started
            self.wall_s += time.perf_counter() - wall
            self.cpu_s += time.process_time() - cpu
            self._started = None

    def seconds(self, clock: Clock) -> float:
        running = self._started is not None
        if running:
            self.stop()
            self.start()
        return self.wall_s if clock == "wall" else self.cpu_s


class _BudgetSpent(Exception):
    pass


def train_with_curve(trainer: Trainer, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                     budget_s: float, clock: Clock = "cpu", eval_every: int = 50, name: str = "run",
                     offset_wall_s: float = 0.0, offset_cpu_s: float = 0.0, max_epochs: int | None = None,
                     stop: Callable[[Curve], bool] | None = None, log: bool = True) -> Curve:
    """Train ``trainer`` on (x, y) epoch after epoch until ``budget_s`` seconds of training on
    ``clock`` are spent (checked every ``eval_every`` batches), ``max_epochs`` epochs are done, or
    ``stop(curve)`` says so after a measurement. The validation accuracy on (x_val, y_val) at
    the trainer's T is measured before training, every ``eval_every`` batches and at the end of
    every epoch, with the clocks stopped. Returns the curve (the trainer keeps the trained state)."""
    if clock not in CLOCKS:
        raise OptionError(f"unknown clock '{clock}'", hint=f"Use one of: {', '.join(CLOCKS)}.")
    if budget_s <= 0 or eval_every < 1:
        raise OptionError("budget_s must be positive and eval_every at least 1")
    cfg = trainer.cfg
    curve = Curve(name, offset_wall_s=offset_wall_s, offset_cpu_s=offset_cpu_s)
    watch = Stopwatch()
    seen = 0          # training samples before the current epoch
    in_epoch = 0      # training samples of the current epoch so far
    pending = 0       # batches since the last measurement

    def measure() -> bool:
        """Record a point; whether training should stop."""
        nonlocal pending
        pending = 0
        watch.stop()
        acc = accuracy(trainer.net, x_val, y_val, cfg.timesteps, cfg.eval_batch_size, cfg.precision)
        curve.points.append(CurvePoint(seen + in_epoch, watch.wall_s, watch.cpu_s, acc))
        if log:
            print(f"  {name}: {seen + in_epoch:7d} samples {watch.wall_s:7.1f} s wall {watch.cpu_s:7.1f} s cpu  "
                  f"acc {acc:.4f}", flush=True)
        trainer.net.train()
        done = watch.seconds(clock) >= budget_s or (stop is not None and stop(curve))
        watch.start()
        return done

    def on_step(tr: Trainer, sums: torch.Tensor, n: int) -> None:
        nonlocal in_epoch, pending
        in_epoch, pending = n, pending + 1
        if pending >= eval_every and measure():
            raise _BudgetSpent

    if measure():
        watch.stop()
        return curve
    try:
        while max_epochs is None or trainer.epoch < max_epochs:
            trainer.run_epoch(x, y, progress=False, on_step=on_step)
            trainer.epoch += 1
            seen, in_epoch = seen + in_epoch, 0
            if pending and measure():
                break
    except _BudgetSpent:
        pass
    watch.stop()
    return curve
