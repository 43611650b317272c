"""Compose passes. The default conversion pipeline, in order:

fold-batchnorm → replace-neurons → calibrate → normalize-thresholds → init-membrane
[→ optimize-init when v_init = "optimized"] [→ calibrate-for-T unless calibration = "none"]
[→ remember-ann … distill-for-T when calibration = "tuned" (T ≤ 16, two epochs, six more where
   those two paid) or "full"]

Users reorder, drop or add passes (any callable ``(model, ctx) -> model`` with a ``name``).
"""
from __future__ import annotations

from typing import Iterable

import onnx

from .base import Pass, PassContext, PassLike
from .calibrate import Calibrate
from .calibrate_for_t import CalibrateForT, default_steps
from .distill import DEFAULT_METHOD as DEFAULT_DISTILL
from .distill import METHODS as DISTILL_METHODS
from .distill import BRIEF_EPOCHS, BRIEF_EXTEND, BRIEF_UP_TO, DistillForT, RememberANN
from .fold_batchnorm import FoldBatchNorm
from .init_membrane import InitMembrane
from .maxpool_to_avgpool import MaxPoolToAvgPool
from .normalize_thresholds import NormalizeThresholds
from .optimize_init import OptimizeInit
from .replace_neurons import ReplaceNeurons

V_INIT_MODES = ("zero", "half", "optimized")
CALIBRATION_MODES = ("none", "fast", "refit", "temporal", "tuned", "full")
DEFAULT_CALIBRATION = "tuned"
"""The calibration a conversion gets unless told otherwise: `refit`, then at T ≤ 16 a brief
distillation (README, "Calibration for the chosen T", "A brief distillation by default")."""
DISTILLING = ("tuned", "full")
"""Calibrations that end with a distillation (the ones ``distill`` applies to)."""


class Pipeline:
    """An ordered, editable list of passes."""

    def __init__(self, passes: Iterable[PassLike]) -> None:
        self.passes: list[PassLike] = list(passes)

    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def _index(self, name: str) -> int:
        try:
            return self.names().index(name)
        except ValueError:
            raise KeyError(f"no pass named '{name}' in {self.names()}") from None

    def insert_after(self, name: str, p: PassLike) -> "Pipeline":
        self.passes.insert(self._index(name) + 1, p)
        return self

    def insert_before(self, name: str, p: PassLike) -> "Pipeline":
        self.passes.insert(self._index(name), p)
        return self

    def replace(self, name: str, p: PassLike) -> "Pipeline":
        self.passes[self._index(name)] = p
        return self

    def remove(self, name: str) -> "Pipeline":
        del self.passes[self._index(name)]
        return self

    def __call__(self, model: onnx.ModelProto, ctx: PassContext, *, owned: bool = False) -> onnx.ModelProto:
        """Run the passes in order. ``owned``: the caller hands ``model`` over (it holds no other
        reference and will not read it again), so the first pass may change it in place too;
        every model a :class:`Pass` returns is the pipeline's own, so the passes after it do."""
        for p in self.passes:
            if isinstance(p, Pass):
                model = p.run(model, ctx) if owned else p(model, ctx)
                owned = True
            else:
                model, owned = p(model, ctx), False
        return model

    def __repr__(self) -> str:
        return "Pipeline(" + " → ".join(self.names()) + ")"


def default_pipeline(norm: str = "percentile:99.99", per_channel: bool = True,
                     v_init: str | float = "half", reset: str = "subtract", leak: float = 0.0,
                     optimize_samples: int = 128, maxpool_to_avgpool: bool = False,
                     calibration: str = DEFAULT_CALIBRATION, distill: str = DEFAULT_DISTILL) -> Pipeline:
    """The standard conversion: exact BN folding, soft-reset IF, robust normalization, θ/2 start;
    then, unless ``calibration`` is "none", fitted layer by layer for ctx.timesteps ("refit":
    weight refit first; "fast": thresholds, bias and potentials only; "temporal": refit,
    then a bias per time step (the neurons' step bias); "full": refit, then the whole network
    distilled from the ANN at T by surrogate-gradient training, its gradient through the rates
    (``distill`` "rates") or through the T steps ("bptt"); "tuned", the default: refit, then the
    same distillation for two epochs, at T ≤ 16 only, and six more where the two won significantly
    more held-out samples than they lost)."""
    if calibration not in CALIBRATION_MODES:
        raise ValueError(f"calibration must be one of {CALIBRATION_MODES}")
    if distill not in DISTILL_METHODS:
        raise ValueError(f"distill must be one of {DISTILL_METHODS}")
    passes: list[PassLike] = [
        FoldBatchNorm(),
        *([MaxPoolToAvgPool()] if maxpool_to_avgpool else []),
        ReplaceNeurons(reset=reset, leak=leak),
        Calibrate(),
        NormalizeThresholds(norm, per_channel),
        InitMembrane("half" if v_init == "optimized" else v_init),
    ]
    if v_init == "optimized":
        passes.append(OptimizeInit(samples=optimize_samples))
    brief: dict = (dict(epochs=BRIEF_EPOCHS, up_to=BRIEF_UP_TO, extend=BRIEF_EXTEND)
                   if calibration == "tuned" else {})
    if calibration in DISTILLING:
        passes.append(RememberANN(up_to=brief.get("up_to")))
    if calibration != "none":
        # v(0) = 0 asked for (hard-reset targets such as NIR hold no initial potential): keep it
        fit = CalibrateForT(default_steps(potential=v_init != "zero",
                                          weights=calibration in ("refit", "temporal", *DISTILLING),
                                          step_bias=calibration == "temporal"))
        passes.append(fit)
    if calibration in DISTILLING:
        passes.append(DistillForT(method=distill, fit=fit, potentials=v_init != "zero", **brief))
    return Pipeline(passes)
