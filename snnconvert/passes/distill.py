"""Label-free weight calibration at T by distillation (the last step of `full` calibration, and,
for two epochs at T ≤ 16, of `tuned`, the default, and six more where those two paid:
:data:`BRIEF_EPOCHS`).

After the layer-by-layer calibration, the whole converted network is trained at T = ctx.timesteps
(backpropagation through the T steps with the surrogate gradient of the torch runtime by default,
or straight through the rates: :class:`~snnconvert.runtime.SpikingNetwork`,
:mod:`snnconvert.runtime.training`), without labels: the loss is the KL divergence of the SNN
readout's softmax from the ANN's output's on the same input (at a temperature), plus per-layer
rate terms. The inputs are the calibration samples and, against
over-fitting a few hundred of them, mixup blends of two of them (the ANN labels any input, so no
knowledge of the data's domain is needed). Weights, biases, thresholds and initial potentials all
learn, at a small rate.

A share of the calibration samples is held out: :class:`RememberANN` sets it aside before the fit
for T, so neither that fit nor the training sees it. After every epoch the network is scored on
it (agreement of the predictions with the ANN's, divergence, output error, at T). Over the last
epochs the weights are averaged (stochastic weight averaging: the plain mean of the weights after
every step), and that average, after the last epoch, is kept: on ResNet-20 at T=16 networks a few
steps apart differ by about 1 point of accuracy, more than a few hundred held-out samples can
resolve, so averaging the noise away beats choosing through it. The guard (:func:`keeps`) keeps
the distillation where it agrees with the ANN on at least as many held-out samples as the network
it started from, or on fewer by no more than chance (a sign test over the samples whose agreement
changed) while its held-out divergence from the ANN fell; otherwise it is dropped, and the network
is fitted for T again, on all the calibration samples (the held-out ones included), where the fit
would read more of them: what `refit` gives.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

from .. import ir, onnxrt
from ..datasets import Data, count, head, is_empty
from ..errors import DataError
from ..runtime import SpikingNetwork, param_key
from ..runtime.device import torch_device
from ..runtime.memory import sample_bytes, samples_within
from ..runtime.training import keep_thresholds_positive, scale_for, threshold_floors, threshold_keys
from .base import Pass, PassContext
from .calibrate_for_t import CalibrateForT
from .judge import significant
from .optimize_init import open_thresholds, thresholds, with_thresholds

REFERENCE = "reference-ann"
"""Key in ``ctx.stats`` of the ANN the distillation matches (set by :class:`RememberANN`)."""
HELD_OUT = "distill-held-out"
"""Key in ``ctx.stats`` of the :class:`SetAside` of :class:`RememberANN`, so that the fit for T never
sees the samples that judge the distillation."""
SAMPLES, HELD_OUT_SHARE, MIN_HELD_OUT = 1024, 0.2, 32
STEP_BUDGET = 256
"""Samples × T one backward pass of the "bptt" distillation holds (a batch of 16 at T=16: a peak of about
1.8 GB on ResNet-20); a larger batch × T is backpropagated in parts, its gradients summed."""


def held_out_count(n: int, share: float = HELD_OUT_SHARE, minimum: int = MIN_HELD_OUT) -> int:
    """Samples of ``n`` held out of the training (``share``, at least ``minimum``); 0 when the
    rest would be fewer than those held out (too few to distill)."""
    n_hold = max(minimum, int(round(share * n)))
    return n_hold if n - n_hold >= n_hold else 0


@dataclass
class SetAside:
    """What :class:`RememberANN` set aside for :class:`DistillForT`: the held-out samples, the
    calibration data as it came, the number of samples it left to the passes between them, and
    the thresholds of the network as it entered the fit for T (fitted again from there, on all
    the data, if the distillation is dropped): that network is the reference ANN with them, so
    only they are kept, not a second copy of the weights."""

    held_out: np.ndarray
    calib: Data
    left: int
    thresholds: dict[str, np.ndarray]

    def entry(self, reference: onnx.ModelProto) -> onnx.ModelProto:
        """The network as it entered the fit for T, from the reference ANN kept beside this."""
        return with_thresholds(reference, self.thresholds)


def _static(model: onnx.ModelProto, x: np.ndarray) -> bool:
    rank = len(model.graph.input[0].type.tensor_type.shape.dim)
    return not rank or x.ndim == rank


def distils_at(timesteps: int, up_to: int | None) -> bool:
    """Whether a distillation limited to T ≤ ``up_to`` (None: no limit) runs at ``timesteps``."""
    return up_to is None or timesteps <= up_to


class RememberANN(Pass):
    """Keep the network as it is now, its neurons opened (the ANN), as the reference later passes
    match: placed before the passes that change weights (calibration for T). It also sets aside
    the distillation's held-out samples (the last ``held_out`` share of the first ``samples``):
    the passes until :class:`DistillForT` see only the rest of those first ``samples`` (the fit
    for T reads at most 1,024 anyway, and checks itself on those after the ones it fits), so that
    the held-out score of the network they fit is not flattered by samples it was fitted on.
    :class:`DistillForT` restores the data as it came (and, dropping the distillation, fits again
    from the network as it is here)."""

    name = "remember-ann"

    def __init__(self, samples: int = SAMPLES, held_out: float = HELD_OUT_SHARE,
                 min_held_out: int = MIN_HELD_OUT, up_to: int | None = None) -> None:
        """``up_to``: the :class:`DistillForT` that follows distils only at T ≤ this (None: at any
        T); above it nothing is set aside, so the fit for T reads all the samples."""
        self.samples, self.held_out, self.min_held_out = samples, held_out, min_held_out
        self.up_to = up_to

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        ctx.stats[REFERENCE] = open_thresholds(model)
        ctx.stats.pop(HELD_OUT, None)
        if is_empty(ctx.calib) or not self.held_out or not distils_at(ctx.timesteps, self.up_to):
            return model
        x = head(ctx.calib, self.samples)
        n_hold = held_out_count(len(x), self.held_out, self.min_held_out)
        if n_hold and _static(model, x):
            left = len(x) - n_hold
            ctx.stats[HELD_OUT] = SetAside(x[left:], ctx.calib, left, thresholds(model))
            ctx.calib = x[:left]
            ctx.info(self.name, f"{n_hold} of {len(x)} calibration samples set aside to judge the "
                     "distillation (the fit for T does not see them)")
        return model


@dataclass
class EpochScore:
    """Held-out score after an epoch (epoch 0: before training): the share of samples whose
    prediction is the ANN's (and, per sample, whether it is: ``agrees``), the mean squared output
    difference, and the KL divergence from the ANN's softmax at the distillation's temperature."""

    epoch: int
    agreement: float
    error: float
    divergence: float
    train_loss: float | None
    seconds: float
    agrees: np.ndarray | None = field(default=None, repr=False)


LOSSES = ("mse", "kl")
METHODS = ("rates", "bptt")
DEFAULT_METHOD = "bptt"
"""The distillation's gradient unless asked otherwise: backpropagated through the T steps (on
ResNet-20 it agrees with the ANN 0.7-2.1 pt more often than the straight-through rates over 3,000
test images and is at least as accurate at T=4/8/16, for 3-6x the distillation's time; docs/calibration.md,
"Backpropagation through the steps")."""
SELECTIONS = ("last", "agreement", "divergence")
BRIEF_EPOCHS, BRIEF_UP_TO, BRIEF_EXTEND = 2, 16, 6
"""The `tuned` calibration (the default): a distillation of ``BRIEF_EPOCHS`` epochs, only at T ≤
``BRIEF_UP_TO``. Measured on ResNet-20 (1,000 calibration images; first 1,000 JPEG test images /
images 2,000-3,999): at T=8 it lifts `refit`'s 70.30 / 72.05 % to 76.50 / 75.00 % (the eight epochs
of `full`: 76.40 / 74.80 %), at T=16 76.80 / 77.40 to 79.10 / 79.75 % (`full`: 80.40 / 79.60), for
1.1-1.6x `refit`'s calibration time on ResNet-20 (2-2.5x on the small networks measured)
instead of `full`'s 3-7x; at T=32 it lowers the held-out
agreement (the guard drops it, as it drops `full`'s eight epochs there), so above T=16 it is not run
(README, "A brief distillation by default"). Where the two epochs won significantly more held-out
samples than they lost (:func:`~snnconvert.passes.judge.significant`), the distillation is still
paying, and `tuned` distils on for ``BRIEF_EXTEND`` epochs more, `full`'s eight in all: ResNet-20 at
T=4, where two epochs won 26 held-out samples and lost 15 (p 0.06) and `full` gave 70.90 % against
`tuned`'s 67.60 (docs/benchmarks.md, "Distilling on where it pays")."""


class DistillForT(Pass):
    """Train the converted network at T to reproduce the ANN's output, label-free (module doc)."""

    name = "distill-for-T"

    def __init__(self, epochs: int = 8, lr: float = 3e-4, batch_size: int = 16, samples: int = SAMPLES,
                 sample_steps: int = 16384, held_out: float = HELD_OUT_SHARE,
                 min_held_out: int = MIN_HELD_OUT,
                 mixup: float = 0.5, loss: str = "kl", temperature: float = 4.0, layers: float = 1.0,
                 method: str = DEFAULT_METHOD, ema: float = 0.9, average: float = 0.6,
                 select: str = "last", surrogate: str = "atan", alpha: float = 2.0, seed: int = 0,
                 step_budget: int = STEP_BUDGET, fit: CalibrateForT | None = None,
                 up_to: int | None = None, potentials: bool = True, extend: int = 0) -> None:
        """``samples``: at most this many calibration samples, of which the share ``held_out`` (at
        least ``min_held_out``; with fewer samples nothing is distilled) scores each epoch;
        ``sample_steps``: training samples × T per epoch are bounded by it (the cost; each epoch
        draws its samples afresh from all the training ones);
        ``mixup``: share of each batch replaced by blends λ·a + (1 − λ)·b of two samples, λ
        uniform in [0, 1] (0: no mixup); ``loss``: on the output, "mse" or "kl" (at
        ``temperature``); ``layers``: weight of the per-layer terms (each layer's rate vs the ANN's
        activation, squared error relative to the activation's mean square; an "mse" output term is
        then relative too); ``method``: "rates" (straight-through: the SNN's rates forward from a
        no-grad run at T, the clip activation's gradient backward; memory independent of T) or
        "bptt" (backpropagation through the T steps with the surrogate gradient, in parts of at most
        ``step_budget`` samples × T: :func:`distill`); ``ema``: the
        weights scored and kept are this exponential moving average over the steps (0: the last);
        ``average``: over this share of the epochs, the last ones, they are instead the plain mean
        of the weights after every step since that share began (0: none; :func:`average_from`);
        ``select``: how held-out scores rank the epochs (:func:`rank`; "last": the last epoch is
        kept, if the guard :func:`keeps` it). When :class:`RememberANN`
        set samples aside, those are the held-out ones (``held_out`` is then its); ``fit``: the
        fit for T before this pass (the pipeline's :class:`CalibrateForT`): where the distillation
        is dropped, it is run again from the network :class:`RememberANN` saw, on all the
        calibration samples, if it reads more than the set-aside left it
        (:meth:`without_distillation`); ``up_to``: above this T the pass leaves the network as
        it is (give :class:`RememberANN` the same); ``potentials``: False keeps the neurons'
        initial potentials as they are (a network converted with v(0) = 0 keeps it); ``extend``:
        where the distillation won significantly more held-out samples than it lost, it goes on
        from its result for this many epochs more (a schedule of their own, kept if the guard
        keeps them over the result it started from; 0: never)."""
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.samples, self.sample_steps = samples, sample_steps
        self.held_out, self.min_held_out, self.mixup = held_out, min_held_out, mixup
        self.surrogate, self.alpha, self.seed, self.step_budget = surrogate, alpha, seed, step_budget
        self.loss, self.temperature, self.layers, self.method = loss, temperature, layers, method
        self.ema, self.average, self.select, self.fit = ema, average, select, fit
        self.up_to, self.potentials, self.extend = up_to, potentials, extend
        if loss not in LOSSES or method not in METHODS or select not in SELECTIONS:
            raise ValueError(f"loss must be one of {LOSSES}, method one of {METHODS}, select one of "
                             f"{SELECTIONS}")
        self.history: list[EpochScore] = []
        self.kept: bool | None = None

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        if is_empty(ctx.calib):
            raise DataError("distillation for T needs calibration data",
                            hint="Pass --calib C.npz, or choose another --calibration.")
        steps = ctx.timesteps
        self.history, self.kept = [], None
        aside = ctx.stats.pop(HELD_OUT, None)
        hold, calib = (None, ctx.calib) if aside is None else (aside.held_out, aside.calib)
        x = head(ctx.calib, self.samples)  # without the samples RememberANN set aside, if it did
        ctx.calib = calib  # as it came
        if not distils_at(steps, self.up_to):
            ctx.info(self.name, f"skipped: T={steps} is above {self.up_to}, the largest T it distils at")
            return self.without_distillation(model, aside, ctx)
        if not _static(model, x):
            ctx.info(self.name, "skipped: time-varying calibration samples (it trains on static inputs)")
            return model
        if hold is None:
            n_hold = held_out_count(len(x), self.held_out, self.min_held_out)
            if not n_hold:
                ctx.info(self.name, f"skipped: {len(x)} calibration sample(s) are too few to hold "
                         "some out and train on the rest")
                return model
            x, hold = x[:len(x) - n_hold], x[len(x) - n_hold:]
        per_epoch = max(self.batch_size, self.sample_steps // steps)
        teacher = ctx.stats.get(REFERENCE)
        teacher = open_thresholds(model) if teacher is None else teacher
        tuned, self.history = self._train(model, teacher, x, hold, steps, per_epoch, self.epochs, self.seed, ctx)
        start = self.history[0]
        best = max(self.history, key=lambda s: rank(s, self.select))
        wins, losses, self.kept = self._judged(ctx, len(x), per_epoch, len(hold), start, best, self.history, "")
        if self.kept and self.extend and significant(wins, losses):
            ctx.info(self.name, f"{wins} held-out samples won against {losses} lost: the distillation "
                     f"still pays, {self.extend} epoch(s) more")
            more, extra = self._train(tuned, teacher, x, hold, steps, per_epoch, self.extend, self.seed + 1, ctx)
            then = max(extra, key=lambda s: rank(s, self.select))
            done = len(self.history) - 1
            self.history += [replace(s, epoch=s.epoch + done) for s in extra[1:]]
            if self._judged(ctx, len(x), per_epoch, len(hold), extra[0], then, extra, " more")[2]:
                tuned = more
        ctx.stats[self.name] = [vars(s) for s in self.history]
        return tuned if self.kept else self.without_distillation(model, aside, ctx)

    def _train(self, model: onnx.ModelProto, teacher: onnx.ModelProto, x: np.ndarray, hold: np.ndarray,
               steps: int, per_epoch: int, epochs: int, seed: int, ctx: PassContext
               ) -> tuple[onnx.ModelProto, list[EpochScore]]:
        return distill(model, teacher, x, hold, steps, epochs=epochs, lr=self.lr, per_epoch=per_epoch,
                       batch_size=self.batch_size, mixup=self.mixup, loss=self.loss,
                       temperature=self.temperature, layers=self.layers, method=self.method,
                       ema=self.ema, average_from=average_from(epochs, self.average), select=self.select,
                       surrogate=self.surrogate, alpha=self.alpha, seed=seed,
                       step_budget=self.step_budget, potentials=self.potentials, device=ctx.device,
                       progress=ctx.progress)

    def _judged(self, ctx: PassContext, n: int, per_epoch: int, n_hold: int, start: EpochScore,
                best: EpochScore, history: list[EpochScore], more: str) -> tuple[int, int, bool]:
        """The guard's verdict on ``best`` against ``start`` (held-out samples won, lost, and
        whether it is kept), logged with the training it judges."""
        wins, losses = changes(start, best)
        kept = best.epoch > 0 and keeps(start, best)
        seconds = sum(s.seconds for s in history)
        drawn = f", {per_epoch} drawn for each epoch" if per_epoch < n else ""
        ctx.info(self.name, f"trained at T={ctx.timesteps} ({self.method}) on {n} calibration sample(s){drawn} "
                 f"for {len(history) - 1} epoch(s){more} ({seconds:.1f} s); on {n_hold} held out: "
                 f"divergence from the ANN {start.divergence:.4g} -> {best.divergence:.4g}, output "
                 f"error {start.error:.4g} -> {best.error:.4g}, agreement {100 * start.agreement:.1f} "
                 f"% -> {100 * best.agreement:.1f} % (epoch {best.epoch}; {wins} won, {losses} lost): "
                 + ("kept" if kept else "dropped"))
        return wins, losses, kept

    def without_distillation(self, model: onnx.ModelProto, aside: SetAside | None,
                             ctx: PassContext) -> onnx.ModelProto:
        """The network when the distillation is dropped: ``model`` (fitted on the samples the
        set-aside left), or, where the fit would read more of all the calibration samples,
        :attr:`fit` run again on all of them from the network as it entered the fit, so that a
        dropped distillation leaves the network `refit` gives."""
        if self.fit is None or aside is None:
            return model
        reference = ctx.stats[REFERENCE]
        total = count(aside.calib)
        # the samples the fit reads depend on the graph and its weights, which the entry shares
        # with the reference: the entry (a copy of the weights) is built only to fit again
        if total is not None and min(total, self.fit.reads(reference, ctx.timesteps)) <= aside.left:
            return model  # it would read the same samples: the same network
        ctx.info(self.name, f"fitting for T again, on all the calibration samples "
                 f"({len(aside.held_out)} held out included), as without the distillation")
        return self.fit(aside.entry(reference), ctx)


def changes(start: EpochScore, end: EpochScore) -> tuple[int, int]:
    """(held-out samples ``end`` predicts as the ANN does and ``start`` does not, the reverse)."""
    if start.agrees is None or end.agrees is None:
        raise ValueError("changes() needs the per-sample agreement of both scores")
    return int(np.sum(end.agrees & ~start.agrees)), int(np.sum(start.agrees & ~end.agrees))


GUARD_LEVEL = 0.05
"""The sign test's level below which the guard takes the held-out samples a distillation lost as
evidence that it hurt. Stricter than the readout refit's (:data:`~snnconvert.passes.judge.SIGNIFICANCE`,
0.16), because the burden lies the other way: the refit is a change that must earn its place on
modest evidence, the distillation a step the default runs because it helps (stop 35: kept, the 12
distillations an older guard dropped would have gained 2.85 pt of test accuracy in all), so
refusing it takes evidence at the usual level. At 0.16 the decision turned with the float order:
ResNet-20 at T=16 on two threads lost 15 held-out samples against 8 won (p 0.105) while its
divergence fell, was dropped and fitted again (540 s, 77.90 %); kept, it scores 78.60 % after 300 s.
What the guard refuses still: resnet_2b at T=16 (4 won, 13 lost: p 0.025) and any distillation whose
divergence rose (cifar_base_kw at T=8, `full` at T=32)."""


def keeps(start: EpochScore, end: EpochScore) -> bool:
    """Whether the distilled network scored ``end`` replaces the one scored ``start``: where it
    agrees with the ANN on at least as many held-out samples; where on fewer, only if the
    samples it lost outnumber those it won by no more than chance (at :data:`GUARD_LEVEL`) and its
    divergence from the ANN fell. Why not agreement alone: on a few hundred samples it
    moves by a sample or two with any change of the weights (ResNet-20 at T=16 dropped two epochs
    that lifted its accuracy 77.9 → 79.3 % on 88.5 → 88.0 % of 200 held-out samples, 13 won and 14
    lost, while the divergence fell 1.83 → 1.58); why not divergence alone: it fell where a
    distillation lost 13 samples against 4 won (resnet_2b at T=16: 92.0 → 87.5 % agreement,
    divergence 0.032 → 0.029; docs/benchmarks.md, "The distillation's guard")."""
    wins, losses = changes(start, end)
    if wins >= losses:
        return True
    return not significant(losses, wins, GUARD_LEVEL) and end.divergence < start.divergence


def rank(score: EpochScore, select: str) -> tuple[float, ...]:
    """How an epoch's held-out score ranks (higher is better): by "agreement" with the ANN's
    predictions, ties broken by the lower divergence; by the lower "divergence" alone; or the
    "last" epoch first."""
    if select == "last":
        return (score.epoch,)
    if select == "agreement":
        return (score.agreement, -score.divergence)
    return (-score.divergence,)


def average_from(epochs: int, share: float) -> int:
    """The first epoch (1-based) of the last ``share`` of ``epochs`` (0: ``share`` rounds to no
    epoch): from it on the distillation keeps the mean of the weights over the steps."""
    count = min(epochs, int(round(share * epochs)))
    return epochs + 1 - count if count > 0 else 0


def distill_loss(out: torch.Tensor, target: torch.Tensor, kind: str, temperature: float = 1.0
                 ) -> torch.Tensor:
    """Mean squared difference of the outputs ("mse"), or the KL divergence of the SNN's softmax
    from the ANN's at ``temperature``, times its square ("kl"); per sample, averaged."""
    out, target = out.reshape(len(out), -1), target.reshape(len(target), -1)
    if kind == "mse":
        return torch.mean((out - target) ** 2)
    log_p = torch.log_softmax(target / temperature, 1)
    log_q = torch.log_softmax(out / temperature, 1)
    return torch.sum(log_p.exp() * (log_p - log_q), 1).mean() * temperature ** 2


def _score(net: SpikingNetwork, x: np.ndarray, target: np.ndarray, steps: int, batch: int,
           temperature: float, device: torch.device) -> dict:
    """:class:`EpochScore`'s measures at ``steps``: per sample whether the argmax is ``target``'s,
    and their share; the mean squared output difference; the KL divergence of the output's softmax
    from the target's at ``temperature`` (times its square, as the loss)."""
    with torch.no_grad():
        out = torch.cat([net(torch.from_numpy(x[i:i + batch]).to(device), steps).cpu()
                         for i in range(0, len(x), batch)])
    out, ref = out.reshape(len(x), -1), torch.from_numpy(target.reshape(len(x), -1))
    agrees = (out.argmax(1) == ref.argmax(1)).numpy()
    return dict(agreement=float(np.mean(agrees)), error=float(torch.mean((out - ref) ** 2)),
                divergence=float(distill_loss(out, ref, "kl", temperature)), agrees=agrees)


def distill(model: onnx.ModelProto, teacher: onnx.ModelProto, train: np.ndarray, hold: np.ndarray,
            steps: int, epochs: int = 4, lr: float = 1e-4, batch_size: int = 16,
            per_epoch: int | None = None, mixup: float = 1.0, loss: str = "mse",
            temperature: float = 1.0, layers: float = 0.0, method: str = "bptt",
            ema: float = 0.0, average_from: int = 0, select: str = "divergence", surrogate: str = "atan",
            alpha: float = 2.0, seed: int = 0, step_budget: int = STEP_BUDGET, potentials: bool = True,
            device: str | torch.device = "cpu", progress: bool = False,
            on_epoch: Callable[[EpochScore, SpikingNetwork], None] | None = None
            ) -> tuple[onnx.ModelProto, list[EpochScore]]:
    """Train ``model`` at ``steps`` to match ``teacher``'s output on ``train`` (and mixup blends;
    each epoch reads ``per_epoch`` of them, drawn afresh, or all: None);
    returns the network after the epoch that ranked best on ``hold`` (:func:`rank` by ``select``;
    epoch 0: ``model`` as it came) and the held-out scores of every epoch
    (``on_epoch`` sees each score and the network after that epoch). The network after an epoch
    has the weights' exponential moving average at ``ema`` (0: the weights themselves) or, from
    epoch ``average_from`` on (0: never), their plain mean over the steps since it began.
    With ``method`` "bptt" a batch is backpropagated in parts of at most ``step_budget`` samples × T
    (at least one sample), the gradients summed: the batch's gradient, in memory that stops
    growing with T once T × batch_size passes the budget; parts (of either method) and held-out
    batches also stay within :data:`~snnconvert.runtime.memory.BATCH_BYTES` of tensors. ``potentials``: False keeps the
    neurons' initial potentials fixed. ``device``: where the network trains and is scored (the
    teacher runs in onnxruntime on the CPU)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    ir.drop_derived(work)
    device = torch_device(device)
    net = SpikingNetwork(work, surrogate=surrogate, alpha=alpha).to(device)
    floors = threshold_floors(net, threshold_keys(net))
    fixed = set() if potentials else {param_key(n.node.input[2]) for n in ir.neurons(work)}
    params = [p for key, p in net.params.items() if key not in fixed]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [p], "lr": lr * scale_for(p)} for p in params], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    output = teacher.graph.output[0].name
    acts = {n.name: n.output for n in ir.neurons(work)} if layers else {}
    names = [output] + [o for o in acts.values() if o != output]
    sess = onnxrt.session(teacher, outputs=names)
    feed = sess.get_inputs()[0].name

    def run_teacher(xb: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(names, {feed: np.ascontiguousarray(xb, np.float32)})))

    def label(xb: np.ndarray) -> np.ndarray:
        return run_teacher(xb)[output]

    rates: dict[str, torch.Tensor] = {}

    def record(name, current, lead, fire):
        spikes = fire(current)
        rates[name] = spikes.sum(0) / steps
        return spikes

    thresholds = {n.name: param_key(n.node.input[1]) for n in ir.neurons(work)}

    def straight_through(xb: torch.Tensor) -> torch.Tensor:
        """The SNN's rates forward (a no-grad run at T), clip(current, 0, θ)'s gradient backward."""
        net.record = True
        with torch.no_grad():
            net(xb, steps)
        counts, net.record = dict(net.spike_counts), False

        def hook(name, current, lead, fire):
            theta = net.params[thresholds[name]]
            act = torch.minimum(torch.relu(current), theta)
            rate = theta.detach() * counts[name].reshape(act.shape) / steps
            rates[name] = act + (rate - act).detach()
            return rates[name]

        net.neuron_hook = hook
        try:
            return net(xb, 1)
        finally:
            net.neuron_hook = None

    def through_steps(xb: torch.Tensor) -> torch.Tensor:
        """The SNN's readout at T, the surrogate gradient backward through every step (each
        layer's rate recorded when the layer terms need it)."""
        net.neuron_hook, net.time_chunk = (record, None) if layers else (None, "auto")
        try:
            return net(xb, steps)
        finally:
            net.neuron_hook, net.time_chunk = None, "auto"

    forward = straight_through if method == "rates" else through_steps
    # samples per backward pass: straight-through memory does not grow with T, BPTT's does
    # (and, on networks with large activations, fewer: within BATCH_BYTES of tensors)
    per_sample = sample_bytes(work)[1]
    part = samples_within(per_sample, batch_size) if method == "rates" else \
        samples_within(per_sample * steps, max(1, step_budget // steps))
    size, label_size = samples_within(per_sample, 64), samples_within(per_sample, 256)
    hold_target = np.concatenate([label(hold[i:i + label_size]) for i in range(0, len(hold), label_size)])
    t0 = time.perf_counter()
    history = [EpochScore(0, **_score(net, hold, hold_target, steps, size, temperature, device),
                          train_loss=None, seconds=time.perf_counter() - t0)]
    best = model
    if on_epoch is not None:
        on_epoch(history[0], net)
    rng = np.random.default_rng(seed)
    shadow = {k: p.detach().clone() for k, p in net.params.items()} if ema else {}
    mean: dict[str, torch.Tensor] = {}
    averaged = 0
    drawn = len(train) if per_epoch is None else min(len(train), per_epoch)
    batches = math.ceil(drawn / batch_size)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(train))[:drawn]
        total, seen = 0.0, 0
        bar = tqdm(range(batches), desc=f"distilling T={steps}, epoch {epoch}/{epochs}", unit="batch",
                   disable=not progress, leave=False)
        for b in bar:
            xb = train[order[b * batch_size:(b + 1) * batch_size]]
            mixed = int(round(mixup * len(xb)))
            if mixed:
                lam = rng.uniform(0.0, 1.0, size=(mixed,) + (1,) * (xb.ndim - 1)).astype(np.float32)
                other = train[rng.integers(0, len(train), size=mixed)]
                xb = np.concatenate([xb[mixed:], lam * xb[:mixed] + (1 - lam) * other])
            ref = run_teacher(xb)
            target = torch.from_numpy(ref[output].reshape(len(xb), -1)).to(device)
            xt = torch.from_numpy(np.ascontiguousarray(xb, np.float32)).to(device)
            # the scales of the relative terms are the whole batch's, so that the gradients
            # summed over its parts are the whole batch's gradient
            out_scale = float(target.pow(2).mean().clamp(min=1e-12)) if loss == "mse" else 1.0
            act_scale = {o: float(np.mean(ref[o] ** 2) + 1e-12) for o in acts.values()}
            opt.zero_grad(set_to_none=True)
            value = torch.zeros((), device=device)
            for lo in range(0, len(xb), part):
                hi = min(len(xb), lo + part)
                piece = distill_loss(forward(xt[lo:hi]), target[lo:hi], loss, temperature)
                if layers:
                    piece = piece / out_scale  # relative for "mse", as the layer terms
                    terms = [torch.mean((rates[name] - torch.from_numpy(ref[o][lo:hi]).to(device)) ** 2) / act_scale[o]
                             for name, o in acts.items()]
                    piece = piece + layers * torch.stack(terms).mean()
                    rates.clear()
                piece = piece * ((hi - lo) / len(xb))
                piece.backward()
                value = value + piece.detach()
            opt.step()
            keep_thresholds_positive(net, floors)
            if ema:
                with torch.no_grad():
                    for k, p in net.params.items():
                        shadow[k].mul_(ema).add_(p.detach(), alpha=1 - ema)
            if average_from and epoch >= average_from:
                averaged += 1
                with torch.no_grad():
                    for k, p in net.params.items():
                        m = mean.setdefault(k, torch.zeros_like(p))
                        m.add_(p.detach() - m, alpha=1.0 / averaged)
            total += float(value.detach()) * len(xb)
            seen += len(xb)
            bar.set_postfix(loss=f"{total / seen:.4g}")
        bar.close()
        sched.step()
        scored = mean if averaged else shadow
        if scored:  # score (and keep) the averaged weights; training goes on from its own
            live = {k: p.detach().clone() for k, p in net.params.items()}
            _load(net, scored)
        history.append(EpochScore(epoch, **_score(net, hold, hold_target, steps, size, temperature, device),
                                  train_loss=total / max(seen, 1), seconds=time.perf_counter() - t0))
        if on_epoch is not None:
            on_epoch(history[-1], net)
        if rank(history[-1], select) > max(rank(h, select) for h in history[:-1]):
            best = net.export()
        if scored:
            _load(net, live)
    return best, history


@torch.no_grad()
def _load(net: SpikingNetwork, values: dict[str, torch.Tensor]) -> None:
    for k, p in net.params.items():
        p.copy_(values[k])
