"""A synthetic spike-timing task where only delays (or long memories) tell the classes apart.

Every class is a pattern of one spike per input channel at a class-specific offset; the offsets
of every class are a permutation of the same set, so all classes have the same spikes per
channel and per step: a network that counts spikes (a rate code) or only sees coincidences of
its inputs is at chance, while one that delays each channel by (span - its offset) sees all of
them arrive together. A sample puts its class's pattern at a random onset, moves each spike by a
random jitter of up to ``jitter`` steps and adds uniform noise spikes. Output: spike frames
``x`` [N, T, C] (float32, 0/1; what ``--encoding frames`` reads) and labels ``y`` [N].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptionError


@dataclass(frozen=True)
class TimingTask:
    """The task's shape; the class patterns depend only on ``pattern_seed``."""

    channels: int = 8
    classes: int = 4
    steps: int = 32
    spacing: int = 2          # steps between consecutive offsets of a pattern
    jitter: int = 1           # each spike moves by a uniform integer in [-jitter, jitter]
    noise: float = 0.01       # probability of a noise spike per channel and step
    pattern_seed: int = 0

    @property
    def span(self) -> int:
        """Steps from a pattern's first spike to its last."""
        return self.spacing * (self.channels - 1)

    def patterns(self) -> np.ndarray:
        """Offsets [classes, channels]: each row a permutation of 0, spacing, ..., span."""
        rng = np.random.default_rng(self.pattern_seed)
        base = np.arange(self.channels) * self.spacing
        return np.stack([rng.permutation(base) for _ in range(self.classes)])

    def check(self) -> None:
        if self.channels < 2 or self.classes < 2:
            raise OptionError("the timing task needs at least 2 channels and 2 classes")
        if self.steps < self.span + 2 * self.jitter + 1:
            raise OptionError(f"{self.steps} steps cannot hold a pattern of span {self.span} "
                              f"with jitter {self.jitter}",
                              hint=f"Use at least {self.span + 2 * self.jitter + 1} steps.")
        if not 0.0 <= self.noise < 1.0:
            raise OptionError(f"noise must be a probability in [0, 1), got {self.noise}")

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` labelled samples (balanced classes in random order), reproducible from ``seed``."""
        self.check()
        rng = np.random.default_rng(seed)
        offsets = self.patterns()
        y = rng.permutation(np.arange(n) % self.classes).astype(np.int64)
        latest = self.steps - self.span - 2 * self.jitter
        onset = rng.integers(0, latest, size=n) + self.jitter
        times = onset[:, None] + offsets[y] + rng.integers(-self.jitter, self.jitter + 1,
                                                           size=(n, self.channels))
        x = (rng.random((n, self.steps, self.channels)) < self.noise).astype(np.float32)
        x[np.arange(n)[:, None], times, np.arange(self.channels)[None, :]] = 1.0
        return x, y


def timing_task(n: int, seed: int = 0, **options) -> tuple[np.ndarray, np.ndarray]:
    """``TimingTask(**options).sample(n, seed)``."""
    return TimingTask(**options).sample(n, seed)
