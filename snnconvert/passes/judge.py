"""The sign test by which label-free passes judge a change on held-out samples: a change wins a
sample where the changed network's prediction is the ANN's and the old one's is not, loses it
the other way round (:class:`~snnconvert.passes.fit_weights.FitReadout`'s refit,
:class:`~snnconvert.passes.distill.DistillForT`'s guard)."""
from __future__ import annotations

import math

SIGNIFICANCE = 0.16
"""The one-sided sign test's level below which a count of wins against losses is evidence: about
one standard deviation (the normal tail beyond one is 0.159), taken exactly for small counts, where
one sample in favour (p 0.5) or two (0.25) is no evidence. At 0.05 the readout refit was dropped on
a test graph where it raised held-out agreement with the ANN from 72 to 78 % (30 wins, 21 losses:
p 0.13)."""


def sign_test(wins: int, losses: int) -> float:
    """One-sided p-value of ``wins`` against ``losses``: the chance of at least ``wins`` heads in
    ``wins + losses`` fair coin flips (1 where there are none)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def significant(wins: int, losses: int, level: float = SIGNIFICANCE) -> bool:
    """Whether ``wins`` beat ``losses`` by more than chance (at ``level``)."""
    return sign_test(wins, losses) < level
