"""Layer step of `--calibration refit` (and `full`): the synaptic weights refitted by ridge least squares on rates.

The SNN layer's input is not the ANN's: the layers before it spike with quantization and
clipping errors, so W applied to their rates misses the ANN pre-activation even where every
neuron is right on average. Label-free and in closed form, the step solves, for the Conv/Gemm
feeding the neuron layer, W' = argmin Σ ‖W'·r̄ + o − a‖² + λ‖W' − W‖², where r̄ is the time-mean
of the Conv/Gemm's actual spiking input (as the fitted layers before it fire), o the mean of
the rest of the neuron's current (a residual branch) and a the ANN pre-activation (also where
it is negative: measured on ResNet-20 at T=8, fitting only where the ANN fires did worse); λ is
``ridge`` times the mean diagonal of the normal matrix. One pass over the calibration chunks
accumulates the normal equations (features: C_in·k·k, plus 1 for the bias). An output channel
keeps its new weights only where they lower that channel's measured layer error. With fewer
than :data:`ROWS_PER_FEATURE` rows of the design matrix (samples × positions) per feature, one
ridge would follow the calibration samples, not the layer (a 576-input Gemm fitted on 512
samples lost 1.2 pt on cifar10_small's 1,000 test images at T=16): there each output channel
chooses its ridge among :data:`RIDGES`, or keeps its weights, by cross-validation over
:data:`FOLDS` folds of the samples (the fit on the other folds scored on each one). Not
everywhere: on ResNet-20's convolutions (many rows) it chose strong ridges in the deep layers
and cost 1.8 pt at T=16 (0.5 pt with the folds dealt by hash) — the layer's own least-squares
error is not the network's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .. import graph as g
from .judge import significant
from .layer_state import LayerState


@dataclass
class Synapse:
    """The Conv/Gemm feeding a neuron layer under calibration, and how to read and change it."""

    node: onnx.NodeProto
    weight: torch.Tensor              # the network's parameter (changed in place)
    bias: torch.Tensor | None
    rate: Callable[[int], torch.Tensor]          # chunk -> time-mean of the node's input
    ann_current: Callable[[int], torch.Tensor]   # chunk -> ANN pre-activation of the neuron
    refresh: Callable[[], None]                  # rebuild the layer's current after a change
    write: Callable[[np.ndarray, np.ndarray | None], None]  # into the model's initializers

    def features(self, r: torch.Tensor) -> torch.Tensor:
        """[rows, features] design matrix of the input rates (rows: sample × output position)."""
        if self.node.op_type == "Gemm":
            x = r.reshape(len(r), -1)
        else:
            a = g.attrs(self.node)
            k = self.weight.shape[2:]
            pads = list(a.get("pads", [0] * 2 * len(k)))
            x = F.unfold(r, k, dilation=list(a.get("dilations", [1] * len(k))),
                         padding=pads[:len(k)], stride=list(a.get("strides", [1] * len(k))))
            x = x.transpose(1, 2).reshape(-1, x.shape[1])
        if self.bias is not None:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        return x

    def matrix(self) -> torch.Tensor:
        """Current weights (and bias) as a [features, out] matrix matching :meth:`features`."""
        w = self.weight.detach()
        if self.node.op_type == "Gemm":
            w = w.T if g.attrs(self.node).get("transB", 0) else w
        else:
            w = w.reshape(len(w), -1).T
        if self.bias is not None:
            w = torch.cat([w, torch.broadcast_to(self.bias.detach(), (w.shape[1],))[None]], 0)
        return w

    def set_matrix(self, m: torch.Tensor) -> None:
        w, b = (m[:-1], m[-1]) if self.bias is not None else (m, None)
        if self.node.op_type == "Gemm":
            w = w.T if g.attrs(self.node).get("transB", 0) else w
        else:
            w = w.T.reshape(self.weight.shape)
        with torch.no_grad():
            self.weight.copy_(w.reshape(self.weight.shape).to(self.weight.dtype))
            if b is not None:
                self.bias.copy_(b.reshape(self.bias.shape).to(self.bias.dtype))
        self.write(self.weight.detach().numpy().copy(),
                   None if self.bias is None else self.bias.detach().numpy().copy())

    @staticmethod
    def supports(node: onnx.NodeProto, weight: np.ndarray) -> bool:
        a = g.attrs(node)
        if node.op_type == "Gemm":
            return a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0 and not a.get("transA", 0) \
                and weight.ndim == 2
        if node.op_type != "Conv" or weight.ndim != 4 or a.get("group", 1) != 1:
            return False
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = a.get("auto_pad", b"NOTSET")
        return pads[:2] == pads[2:] and auto in (b"NOTSET", "NOTSET")


ROWS_PER_FEATURE = 2
"""Design-matrix rows per feature below which a refit is cross-validated (see module doc)."""


FOLDS = 2
"""Folds of the calibration samples (dealt by :func:`deal`) that cross-validate the ridge."""


def deal(first: int, count: int, folds: int) -> torch.Tensor:
    """The folds of samples ``first`` .. ``first + count - 1``, dealt by a multiplicative hash of
    the sample's index: a calibration set ordered by class (0, 1, ..., 9, 0, 1, ...) dealt in
    turn would put the even classes in one of two folds and the odd ones in the other."""
    index = torch.arange(first, first + count, dtype=torch.int64)
    return ((index * 2654435761) % (1 << 32) >> 16) % folds

NORMAL_BYTES = 1 << 28
"""Largest normal matrix XᵀX (float64 bytes) a weight refit builds. About nine matrices of its
size are alive at once (the folds, their sums, the solves): on a Gemm with F inputs fed by spikes
(4 samples, T=4) the conversion's peak grows as 68 bytes × F² (1.4 / 4.1 GB at F = 4,000 / 8,000),
so VGG's 25,088-input Gemm would need about 41 GB (the out-of-memory kill measured on a 24 GB
machine). A synapse with more inputs (here 5,792) keeps its weights (:data:`WIDE`), and so does
a readout (:class:`FitReadout` holds 8 folds' matrices: a 16,384-input readout was killed for
memory on a 24 GB machine before this bound applied to it)."""
WIDE = "fit-weights: kept, too many inputs to refit in memory"
"""The history step (:class:`LayerState`) of a layer whose synapse :class:`FitWeights` left as it came."""


def too_wide(syn: Synapse) -> bool:
    """Whether the synapse's normal matrix would exceed :data:`NORMAL_BYTES`."""
    features = len(syn.matrix())
    return features * features * 8 > NORMAL_BYTES


RIDGES = (1e-3, 1e-2, 1e-1, 1.0)
"""Ridge strengths (× the mean diagonal of XᵀX) each output channel chooses from by
cross-validation; keeping the old weights is the last choice."""


@dataclass
class NormalEquations:
    """XᵀX, XᵀY and the sum of Y² per output over each fold's design-matrix rows (float64), the
    current matrix W, the number of rows of X (and per fold) and of samples."""

    old: torch.Tensor
    gram: list[torch.Tensor]
    cross: list[torch.Tensor]
    squares: list[torch.Tensor]
    rows: int
    fold_rows: list[int] | None = None
    samples: int = 0

    def _select(self, groups: list[list[int]]) -> "NormalEquations":
        fold_rows = self.fold_rows or [0] * len(self.gram)
        part = lambda terms: [sum((terms[i] for i in grp[1:]), terms[grp[0]].clone()) for grp in groups]
        rows = [sum(fold_rows[i] for i in grp) for grp in groups]
        return NormalEquations(self.old, part(self.gram), part(self.cross), part(self.squares),
                               sum(rows), rows, self.samples)

    def without(self, fold: int) -> "NormalEquations":
        """The equations of every fold but ``fold``, summed into one (in the order :meth:`total`
        sums them: the same solve, one matrix instead of a copy of each fold's)."""
        return self._select([[i for i in range(len(self.gram)) if i != fold]])

    def merged(self, folds: int) -> "NormalEquations":
        """The same rows in ``folds`` folds: fold i joins fold i mod ``folds`` (with
        :func:`deal`'s folds, the folds it deals for ``folds``)."""
        return self._select([list(range(f, len(self.gram), folds)) for f in range(folds)])

    def total(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return sum(self.gram[1:], self.gram[0].clone()), sum(self.cross[1:], self.cross[0].clone()), \
            sum(self.squares[1:], self.squares[0].clone())

    @staticmethod
    def error(gram: torch.Tensor, cross: torch.Tensor, squares: torch.Tensor, w: torch.Tensor
              ) -> torch.Tensor:
        """‖Xw − y‖² per output, from the normal equations."""
        return ((gram @ w) * w).sum(0) - 2 * (cross * w).sum(0) + squares

    def cross_validated(self, ridges: tuple[float, ...] = RIDGES) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, per output the index into ``ridges`` chosen, len(ridges) for the old weights): per
        output, the ridge (or none: the old weights) whose fit on the other folds has the lowest
        squared error on each held-out fold, summed over the folds; W solved on every row."""
        k = len(self.gram)
        gram, cross, squares = self.total()
        scores = torch.zeros(len(ridges) + 1, self.old.shape[1], dtype=torch.float64)
        for f in range(k):
            rest = (gram - self.gram[f], cross - self.cross[f])
            for i, r in enumerate(ridges):
                w = ridge_solve(self.old, *rest, r)
                scores[i] += self.error(self.gram[f], self.cross[f], self.squares[f], w)
            scores[-1] += self.error(self.gram[f], self.cross[f], self.squares[f], self.old)
        choice = scores.argmin(0)
        return self.solve_chosen(choice, ridges), choice

    def solve_chosen(self, choice: torch.Tensor, ridges: tuple[float, ...] = RIDGES) -> torch.Tensor:
        """W solved on every row, each output at the ridge ``choice`` gives it (an index into
        ``ridges``; len(ridges): its old weights)."""
        gram, cross, _ = self.total()
        new = self.old.clone()
        for i, r in enumerate(ridges):
            cols = choice == i
            if bool(cols.any()):  # only the outputs this ridge serves: their right-hand sides alone
                new[:, cols] = ridge_solve(self.old[:, cols], gram, cross[:, cols], r)
        return new


def normal_equations(syn: Synapse, chunks: int, total: Callable[[int, torch.Tensor], torch.Tensor],
                     folds: int = 1) -> NormalEquations:
    """The normal equations of the synapse's refit over ``chunks`` chunks, the samples dealt
    into ``folds`` folds (:func:`deal`): X the design matrix of the synapse's input rates, Y the goal
    of W·x: the ANN value less what else adds to the synapse's output (a residual branch), i.e.
    ANN − total + W·x, ``total(c, W·x)`` being the time-mean of the whole sum on chunk c ([b, C,
    ...] like the ANN value, the layout W·x is given in)."""
    old = syn.matrix().to(torch.float64)
    gram = [torch.zeros(len(old), len(old), dtype=torch.float64) for _ in range(folds)]
    cross = [torch.zeros_like(old) for _ in range(folds)]
    squares = [torch.zeros(old.shape[1], dtype=torch.float64) for _ in range(folds)]
    rows, seen, fold_rows, per = 0, 0, [0] * folds, 0
    for c in range(chunks):
        r, ann = syn.rate(c), syn.ann_current(c)
        b = ann.shape[0]
        per = per or design_samples(syn, r)  # the same for every chunk: found on the first
        parts = [(s, min(s + per, b)) for s in range(0, b, per)]
        x, mine = None, []
        for s, e in parts:  # W·x, part by part (the design matrix of the whole chunk kept if one part)
            xp = syn.features(r[s:e]).to(torch.float64)
            mine.append((xp @ old).reshape(e - s, -1, ann.shape[1]).transpose(1, 2)
                        .reshape(e - s, *ann.shape[1:]))
            x = xp if len(parts) == 1 else None
        mine_all = mine[0] if len(mine) == 1 else torch.cat(mine)
        goal = ann.to(torch.float32) - total(c, mine_all) + mine_all
        y = goal.reshape(b, ann.shape[1], -1).transpose(1, 2).reshape(-1, ann.shape[1]).to(torch.float64)
        per_sample = len(y) // b
        fold_all = deal(seen, b, folds)
        for s, e in parts:
            xp = x if x is not None else syn.features(r[s:e]).to(torch.float64)
            yp = y[s * per_sample:e * per_sample]
            fold = fold_all[s:e].repeat_interleave(per_sample)
            for f in range(folds):
                xf, yf = (xp, yp) if folds == 1 else (xp[fold == f], yp[fold == f])
                gram[f] += xf.T @ xf
                fold_rows[f] += len(xf)
                cross[f] += xf.T @ yf
                squares[f] += (yf ** 2).sum(0)
            rows += len(xp)
        seen += b
    return NormalEquations(old, gram, cross, squares, rows, fold_rows, seen)


DESIGN_BYTES = 1 << 29
"""Bytes of the float64 design matrix a refit builds at once: a chunk whose samples need more is
taken in parts of samples (VGG-19's 64-channel 3×3 convolutions at 224×224: 231 MB a sample).
ResNet-20's chunks at T ≥ 4 (256 samples, 300 MB) stay whole."""


def design_samples(syn: Synapse, rates: torch.Tensor, budget: int | None = None) -> int:
    """Samples of ``rates`` whose design matrix (:meth:`Synapse.features`, float64) fits in
    ``budget`` (default: :data:`DESIGN_BYTES`)."""
    rows, features = syn.features(rates[:1]).shape
    return max(1, (DESIGN_BYTES if budget is None else budget) // max(1, 8 * rows * features))


def ridge_solve(old: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin ‖XW − Y‖² + λ‖W − W_old‖², λ = ``ridge`` × the mean diagonal of XᵀX."""
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    return torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=torch.float64), cross + lam * old)


class FitWeights:
    """Ridge least squares of the feeding Conv/Gemm on the layer's actual input rates."""

    name = "fit-weights"

    def __init__(self, ridge: float = 1e-2) -> None:
        self.ridge = ridge
        self.choice: torch.Tensor | None = None
        """The last cross-validated refit's choice per output channel (index into :data:`RIDGES`;
        len(RIDGES): the old weights kept); None where the rows sufficed for ``ridge``."""

    def __call__(self, layer: LayerState) -> None:
        syn: Synapse | None = getattr(layer, "synapse", None)
        if syn is None or layer.current[0].dim() == len(layer.sample_shape) + 1:
            return  # no refittable synapse, or an analog input the ANN's own (nothing to fix)
        if too_wide(syn):  # recorded, so that the calibration can say which layers kept their weights
            before, _ = layer.stats()
            self.choice = None
            layer.update(WIDE, before[0], before[0])
            return

        def total(c: int, mine: torch.Tensor) -> torch.Tensor:  # the layer's mean input current
            cur = layer.current[c]
            return cur.mean(0) if cur.dim() > len(layer.sample_shape) + 1 else cur

        eq = normal_equations(syn, len(layer.current), total, FOLDS)
        if eq.rows < ROWS_PER_FEATURE * len(eq.old):
            new, self.choice = eq.cross_validated()
        else:
            gram, cross, _ = eq.total()
            new, self.choice = ridge_solve(eq.old, gram, cross, self.ridge), None
        old = eq.old
        before, _ = layer.stats()
        syn.set_matrix(new.to(torch.float32))
        syn.refresh()
        after, _ = layer.stats()
        worse = (after[0] >= before[0])
        if bool(worse.any()):
            keep = torch.where(worse[None, :], old, new)
            syn.set_matrix(keep.to(torch.float32))
            syn.refresh()
            after = torch.minimum(after, before)
        layer.update(self.name, before[0], after[0])


JUDGE_FOLDS = 8
"""Folds of the fit samples over which :class:`FitReadout` judges its refit (each fold scored by
the refit on the other seven)."""

@dataclass
class ReadoutFit:
    """What :class:`FitReadout` did: squared output error per sample (summed over the outputs)
    on the fit samples before and after; cross-validated, the samples whose prediction the refit
    gets right (the ANN's) where the readout as it came gets it wrong, and the reverse; whether
    the refit was kept."""

    before: float
    after: float
    wins: int = 0
    losses: int = 0
    kept: bool = True


class FitReadout:
    """`refit`'s last step: the same ridge least squares for the Conv/Gemm that computes the
    network's output from the last spiking layers (the readout averages it over T, so its mean is
    W·r̄ + b exactly), fitted to the ANN's output; a class keeps its new weights only where its
    squared error on the calibration samples drops (measured from the normal equations), or, with
    fewer than :data:`ROWS_PER_FEATURE` rows per feature, chooses by cross-validation as
    :class:`FitWeights` does.

    With ``judge`` the refit is kept only where it agrees with the ANN's predictions more often,
    label-free and without taking samples from the fit: over :data:`JUDGE_FOLDS` folds of the fit
    samples, each fold is predicted by the refit on the other folds and by the readout as it came,
    and the samples one of the two gets right and the other wrong must favour the refit below
    :data:`~snnconvert.passes.judge.SIGNIFICANCE` by a one-sided sign test
    (:mod:`~snnconvert.passes.judge`). Why not output error: the refit lowers it
    almost everywhere, while the few predictions it changes are near ties. Measured (rates of the
    default conversion, offline): ResNet-20 at T=8 23 wins against 12 losses (p 0.045: kept), at
    T=16 12 / 10 and at T=32 1 / 7 (dropped); the bundled example and the sinabs CNN at most 3 wins
    against 2 losses, or 2 against none (p ≥ 0.25: dropped)."""

    name = "fit-readout"

    def __init__(self, ridge: float = 1e-2, judge: bool = True) -> None:
        self.ridge, self.judge = ridge, judge

    def _solve(self, eq: NormalEquations, choice: torch.Tensor | None = None,
               validate: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, per output the ridge chosen by cross-validation, or None where ``ridge`` served);
        cross-validated where the rows are few (or as ``validate`` says); with ``choice``, those
        ridges (and kept weights) are taken as given."""
        if choice is not None:
            return eq.solve_chosen(choice), choice
        old, (gram, cross, squares) = eq.old, eq.total()
        if eq.rows < ROWS_PER_FEATURE * len(old) if validate is None else validate:
            return eq.cross_validated()
        err = lambda w: NormalEquations.error(gram, cross, squares, w)
        new = ridge_solve(old, gram, cross, self.ridge)
        return torch.where((err(new) < err(old))[None, :], new, old), None

    def __call__(self, syn: Synapse, chunks: int) -> ReadoutFit:
        """Refit ``syn`` on ``chunks`` chunks (or, with ``judge``, keep it as it came where the
        refit does not agree with the ANN more often)."""
        folds = JUDGE_FOLDS if self.judge else FOLDS
        eq = normal_equations(syn, chunks, lambda c, mine: mine, folds)
        old, (gram, cross, squares) = eq.old, eq.total()
        # the refit itself reads the folds two by two (its ridge cross-validated as FitWeights does)
        new, choice = self._solve(eq.merged(FOLDS) if self.judge else eq)
        err = lambda w: float(NormalEquations.error(gram, cross, squares, w).sum())
        wins = losses = 0
        if self.judge:
            fold_w = [self._solve(eq.without(f), choice, validate=False)[0] for f in range(folds)]
            wins, losses = _cross_validated_wins(syn, chunks, old, fold_w)
        kept = not self.judge or significant(wins, losses)
        if kept:
            syn.set_matrix(new.to(torch.float32))
        samples = max(1, eq.samples)
        return ReadoutFit(err(old) / samples, err(new if kept else old) / samples, wins, losses, kept)


def _cross_validated_wins(syn: Synapse, chunks: int, old: torch.Tensor, fold_w: list[torch.Tensor]
                          ) -> tuple[int, int]:
    """(samples whose prediction by the fold's own refit ``fold_w[fold]`` is the ANN's and by
    ``old`` is not, the reverse) over ``chunks`` chunks, the samples dealt into ``len(fold_w)``
    folds as :func:`normal_equations` deals them."""
    wins = losses = seen = 0
    for c in range(chunks):
        x = syn.features(syn.rate(c)).to(torch.float64)
        ann = syn.ann_current(c)
        b = ann.shape[0]
        fold = deal(seen, b, len(fold_w))
        per_sample = lambda out: out.reshape(b, -1)  # rows: sample x output position
        target = ann.reshape(b, ann.shape[1], -1).transpose(1, 2).reshape(b, -1).argmax(1)
        pred_old = per_sample(x @ old).argmax(1)
        pred_new = torch.stack([per_sample(x @ w).argmax(1) for w in fold_w], 1)
        pred_new = pred_new.gather(1, fold[:, None])[:, 0]
        wins += int(((pred_new == target) & (pred_old != target)).sum())
        losses += int(((pred_old == target) & (pred_new != target)).sum())
        seen += b
    return wins, losses
