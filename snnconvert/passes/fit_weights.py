"""Layer step of `--calibration full`: the synaptic weights refitted by ridge least squares on rates.

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
than :data:`ROWS_PER_FEATURE` rows of the design matrix (samples × positions) per feature the
layer is left as it is: the fit would follow the calibration samples, not the layer (a 576-input
Gemm fitted on 512 samples lost 1.2 pt on cifar10_small's 1,000 test images at T=16).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .. import graph as g
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
"""Design-matrix rows per feature a weight refit needs (fewer: the layer keeps its weights)."""


def normal_equations(syn: Synapse, chunks: int, total: Callable[[int, torch.Tensor], torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(current matrix W, XᵀX, XᵀY, per output the sum of Y², rows of X) over ``chunks`` chunks, float64: X the design matrix of the
    synapse's input rates, Y the goal of W·x: the ANN value less what else adds to the synapse's
    output (a residual branch), i.e. ANN − total + W·x, ``total(c, W·x)`` being the time-mean of
    the whole sum on chunk c ([b, C, ...] like the ANN value, the layout W·x is given in)."""
    old = syn.matrix().to(torch.float64)
    gram = torch.zeros(len(old), len(old), dtype=torch.float64)
    cross = torch.zeros_like(old)
    squares = torch.zeros(old.shape[1], dtype=torch.float64)
    rows = 0
    for c in range(chunks):
        x = syn.features(syn.rate(c)).to(torch.float64)
        ann = syn.ann_current(c)
        mine = (x @ old).reshape(ann.shape[0], -1, ann.shape[1]).transpose(1, 2).reshape(ann.shape)
        goal = ann.to(torch.float32) - total(c, mine) + mine
        y = goal.reshape(ann.shape[0], ann.shape[1], -1).transpose(1, 2).reshape(-1, ann.shape[1])
        gram += x.T @ x
        cross += x.T @ y.to(torch.float64)
        squares += (y.to(torch.float64) ** 2).sum(0)
        rows += len(x)
    return old, gram, cross, squares, rows


def ridge_solve(old: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin ‖XW − Y‖² + λ‖W − W_old‖², λ = ``ridge`` × the mean diagonal of XᵀX."""
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    return torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=torch.float64), cross + lam * old)


class FitWeights:
    """Ridge least squares of the feeding Conv/Gemm on the layer's actual input rates."""

    name = "fit-weights"

    def __init__(self, ridge: float = 1e-2) -> None:
        self.ridge = ridge

    def __call__(self, layer: LayerState) -> None:
        syn: Synapse | None = getattr(layer, "synapse", None)
        if syn is None or layer.current[0].dim() == len(layer.sample_shape) + 1:
            return  # no refittable synapse, or an analog input the ANN's own (nothing to fix)

        def total(c: int, mine: torch.Tensor) -> torch.Tensor:  # the layer's mean input current
            cur = layer.current[c]
            return cur.mean(0) if cur.dim() > len(layer.sample_shape) + 1 else cur

        old, gram, cross, _, rows = normal_equations(syn, len(layer.current), total)
        if rows < ROWS_PER_FEATURE * len(gram):
            return
        new = ridge_solve(old, gram, cross, self.ridge)
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


class FitReadout:
    """`full`'s last step: the same ridge least squares for the Conv/Gemm that computes the
    network's output from the last spiking layers (the readout averages it over T, so its mean is
    W·r̄ + b exactly), fitted to the ANN's output; a class keeps its new weights only where its
    squared error on the calibration samples drops (measured from the normal equations)."""

    name = "fit-readout"

    def __init__(self, ridge: float = 1e-2) -> None:
        self.ridge = ridge

    def __call__(self, syn: Synapse, chunks: int) -> tuple[float, float]:
        """Refit ``syn`` on ``chunks`` chunks; (mean squared output error before, after) per
        sample, summed over the outputs."""
        old, gram, cross, squares, _ = normal_equations(syn, chunks, lambda c, mine: mine)
        new = ridge_solve(old, gram, cross, self.ridge)
        err = lambda w: ((gram @ w) * w).sum(0) - 2 * (cross * w).sum(0) + squares  # ‖Xw − y‖²
        before, after = err(old), err(new)
        better = after < before
        syn.set_matrix(torch.where(better[None, :], new, old).to(torch.float32))
        return float(before.sum()), float(torch.minimum(before, after).sum())
