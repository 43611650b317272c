"""Joint A-SNN (Guo et al., Pattern Recognition 2023): an ANN and an SNN branch trained together.

Every synapse weight of the IR (Conv, Gemm, MatMul) is factorized per spatial tap by an SVD,
W = U·diag(s)·Vᵀ; U and V are shared by both branches, the singular values are separate
(``s_ann``, ``s_snn``, equal at the start). Each synapse that feeds a neuron gets a BatchNorm per
branch, re-introduced after the IR folded the original one and initialised to the identity on
the first training batch. The ANN branch is the network's rate limit (every neuron replaced by
clip(x, 0, θ), one step on the mean input); the SNN branch is the IR simulated for T steps with
surrogate gradients. Auxiliary classifiers on intermediate neuron layers (one per branch, fresh
linear heads on channel-pooled features) give the multi-branch self-distillation. Loss, with
α = 0.1, β = 1e-6 and KD temperature τ = 3 as in the paper's code:

    (1-α)·Σ_k [CE(ANN_k) + CE(SNN_k)]
    + α·τ²·[Σ_aux KD(ANN_aux ← ANN_final) + Σ_k KD(SNN_k ← ANN_k)]     (teachers detached)
    + β·Σ_taps Σ (f_SNN - f_ANN)²·1[f_SNN > 0 ∨ f_ANN > 0] / batch

The SNN branch is what is deployed: its weights U·diag(s_snn)·Vᵀ with its BatchNorm (running
statistics) folded back are written into the IR's initializers.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from .. import ir
from ..errors import OptionError
from ..graph import attrs as graph_attrs
from ..runtime import SpikingNetwork, param_key
from .methods import NeuronParams, _clip

BRANCHES = ("ann", "snn")
SYNAPSE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Synapse:
    """One factorized weight: the node, its weight and bias initializers and their layout."""

    node: str
    op: str
    weight: str
    bias: str | None
    out_axis: int
    """Axis of the weight that indexes output channels (Conv 0; Gemm 0 if transB else 1)."""
    bias_gain: float
    """Gemm's beta (the bias enters as beta·C); 1 otherwise."""
    norm: bool
    """Whether a BatchNorm per branch follows (the synapse feeds a neuron and has a bias)."""


def _feeds_neuron(model: onnx.ModelProto) -> set[str]:
    """Names of nodes from whose output some neuron is reachable."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    memo: dict[str, bool] = {}

    def reaches(node: onnx.NodeProto) -> bool:
        if node.name not in memo:
            memo[node.name] = False
            memo[node.name] = any(ir.is_neuron(c) or reaches(c)
                                  for o in node.output for c in consumers.get(o, []))
        return memo[node.name]

    return {n.name for n in model.graph.node if reaches(n)}


def find_synapses(net: SpikingNetwork) -> list[Synapse]:
    """The IR's synapses whose weight is a float initializer, in graph order."""
    model = net._model
    upstream = _feeds_neuron(model)
    out = []
    for node in model.graph.node:
        if node.op_type not in SYNAPSE_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        if param_key(weight) not in net.params or net.params[param_key(weight)].dim() < 2:
            continue
        a = graph_attrs(node)
        if node.op_type == "Gemm" and (a.get("transA", 0) or net.params[param_key(weight)].dim() != 2):
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and (param_key(bias) not in net.params or a.get("beta", 1.0) == 0):
            bias = None
        out_axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and a.get("transB", 0)) else \
            net.params[param_key(weight)].dim() - 1
        out.append(Synapse(node.name, node.op_type, weight, bias, out_axis,
                           float(a.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0,
                           node.name in upstream and bias is not None and node.op_type != "MatMul"))
    return out


class Factorized(nn.Module):
    """W = U·diag(s_branch)·Vᵀ per spatial tap (conv kernels) or for the whole matrix."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.conv = weight.dim() > 2
        m = weight.detach().float()
        if self.conv:  # [co, ci, *k] -> [*k, co, ci]: one matrix per tap
            m = m.permute(*range(2, m.dim()), 0, 1)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        self.u, self.v = nn.Parameter(u.contiguous()), nn.Parameter(vh.contiguous())
        self.s_ann, self.s_snn = nn.Parameter(s.clone()), nn.Parameter(s.clone())

    def weight(self, branch: str) -> torch.Tensor:
        s = self.s_ann if branch == "ann" else self.s_snn
        m = (self.u * s.unsqueeze(-2)) @ self.v
        if self.conv:
            k = m.dim() - 2
            m = m.permute(k, k + 1, *range(k))
        return m


class BranchNorm(nn.Module):
    """BatchNorm over every axis but ``axis``, set by :meth:`calibrate` to the identity on a first
    batch. ``frozen``: the statistics stay those of that batch, in training too (γ, β train), so
    training sees exactly the deployed affine map; otherwise batch statistics in training and
    running ones in eval (the paper's BN)."""

    def __init__(self, channels: int, axis: int, frozen: bool = True, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.axis, self.frozen, self.eps, self.momentum = axis, frozen, eps, momentum
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def _view(self, t: torch.Tensor, dims: int) -> torch.Tensor:
        shape = [1] * dims
        shape[self.axis] = -1
        return t.reshape(shape)

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [d for d in range(z.dim()) if d != self.axis]
        return z.mean(dims), z.var(dims, unbiased=False)

    @torch.no_grad()
    def calibrate(self, z: torch.Tensor) -> None:
        mean, var = self._stats(z.float())
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)
        self.gamma.copy_((var + self.eps).sqrt())
        self.beta.copy_(mean)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, h) with eval-mode output z·g + h (for folding into the synapse)."""
        g = self.gamma / (self.running_var + self.eps).sqrt()
        return g, self.beta - self.running_mean * g

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.training and not self.frozen:
            mean, var = self._stats(z)
            with torch.no_grad():
                n = z.numel() / z.shape[self.axis]
                self.running_mean.lerp_(mean.detach().float(), self.momentum)
                self.running_var.lerp_(var.detach().float() * n / max(n - 1, 1), self.momentum)
            g = self.gamma / (var + self.eps).sqrt()
            h = self.beta - mean * g
        else:
            g, h = self.scale_shift()
        return z * self._view(g, z.dim()) + self._view(h, z.dim())


def _pooled(y: torch.Tensor, steps: int) -> torch.Tensor:
    """[steps·B, C, ...] -> the time- and space-mean per channel, [B, C]."""
    y = y.reshape(steps, y.shape[0] // steps, *y.shape[1:]).mean(0)
    return y.flatten(2).mean(2) if y.dim() > 2 else y


def kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/τ) ‖ softmax(student/τ)), batch mean (the teacher is not detached here)."""
    return F.kl_div(F.log_softmax(student / temperature, 1), F.log_softmax(teacher / temperature, 1),
                    reduction="batchmean", log_target=True)


class JointModel(nn.Module):
    """The factors, branch norms and auxiliary heads around a :class:`SpikingNetwork`; the
    network's own parameters for the factorized weights and their biases become read-only
    deployment copies, refreshed by :meth:`write_back`."""

    def __init__(self, net: SpikingNetwork, table: dict[str, NeuronParams], sample: torch.Tensor,
                 timesteps: int, branches: int = 3, alpha: float = 0.1, beta: float = 1e-6,
                 temperature: float = 3.0, seed: int = 0, norm: str = "frozen") -> None:
        super().__init__()
        object.__setattr__(self, "net", net)  # not a submodule: its parameters are the trainer's
        self.table, self.timesteps = table, timesteps
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.synapses = find_synapses(net)
        self.factors = nn.ModuleDict()
        self.biases = nn.ParameterDict()
        self.norms = nn.ModuleDict()
        for syn in self.synapses:
            w = net.params[param_key(syn.weight)]
            self.factors[param_key(syn.node)] = Factorized(w)
            w.requires_grad_(False)
            if syn.bias is not None:
                b = net.params[param_key(syn.bias)]
                self.biases[param_key(syn.node)] = nn.Parameter(b.detach().clone())
                b.requires_grad_(False)
            if syn.norm and norm != "none":
                channels = w.shape[syn.out_axis]
                self.norms[param_key(syn.node)] = nn.ModuleDict(
                    {b: BranchNorm(channels, 1, frozen=norm == "frozen") for b in BRANCHES})
        neurons = list(net.neuron_names)
        candidates = neurons[:-1]
        picks = sorted({(i + 1) * len(candidates) // (branches + 1) for i in range(branches)}) \
            if candidates and branches else []
        self.aux = [candidates[i] for i in picks]
        self.taps = self.aux + neurons[-1:]
        self.register_buffer("calibrated", torch.tensor(False))
        self._branch: str | None = None
        self._mode = "run"
        self._features: dict[str, torch.Tensor] = {}
        self._unfolded: set[str] = set()
        self.heads = nn.ModuleDict()
        self.to(sample.device)  # the new norms and buffers beside the network's own parameters
        self.eval()
        with torch.no_grad():  # the tapped layers' widths and the number of classes
            n_classes = int(self._ann(sample).shape[1])
        self.train()
        gen = torch.Generator().manual_seed(seed)
        for name in self.aux:
            channels = self._features[name].shape[1]
            bound = 1.0 / channels ** 0.5
            weight = torch.rand((n_classes, channels), generator=gen) * 2 * bound - bound
            pair = nn.ModuleDict({b: nn.Linear(channels, n_classes) for b in BRANCHES})
            with torch.no_grad():
                for head in pair.values():  # both branches start from the same head
                    head.weight.copy_(weight)
                    head.bias.zero_()
            self.heads[param_key(name)] = pair

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set every branch norm to the identity on ``x`` (its statistics there); a norm that is
        the identity on its own input leaves the next layer's input unchanged, so one pass per
        branch sets them all."""
        self._mode = "calibrate"
        try:
            self._ann(x)
            self._snn(x)
        finally:
            self._mode = "run"
        self.calibrated.fill_(True)

    # ------------------------------------------------------------ forward
    def _hook(self, node: onnx.NodeProto, y: torch.Tensor, steps: int) -> torch.Tensor:
        key = param_key(node.name)
        if key in self._unfolded:
            norm = self.norms[key][self._branch]
            if self._mode == "calibrate":
                norm.calibrate(y)
            else:
                y = norm(y)
        if node.name in self.taps:
            self._features[node.name] = _pooled(y, steps)
        return y

    def effective(self, syn: Synapse, branch: str, fold: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The branch's (weight, bias) of a synapse in the IR's layout, with its BatchNorm folded
        in (the affine map of its running statistics) when ``fold``."""
        key = param_key(syn.node)
        w = self.factors[key].weight(branch)
        b = self.biases[key] if syn.bias is not None else None
        if fold and key in self.norms:
            g, h = self.norms[key][branch].scale_shift()
            shape = [1] * w.dim()
            shape[syn.out_axis] = -1
            w = w * g.reshape(shape)
            b = b * g + h / syn.bias_gain
        return w, b

    def _install(self, branch: str) -> None:
        """Substitute the branch's weights. A norm that acts as a fixed affine map (frozen, or
        in eval mode) is folded into them, which costs no activation memory; batch-statistics
        norms in training, and every norm while calibrating, run on the synapse's output."""
        net = self.net
        net.substitutes = {}
        self._unfolded = set()
        for syn in self.synapses:
            key = param_key(syn.node)
            fold = self._mode == "run" and key in self.norms and (
                self.norms[key][branch].frozen or not self.training)
            if key in self.norms and not fold:
                self._unfolded.add(key)
            w, b = self.effective(syn, branch, fold)
            net.substitutes[syn.weight] = w
            if b is not None:
                net.substitutes[syn.bias] = b
        self._branch = branch
        self._features = {}
        net.value_hook = self._hook

    def _uninstall(self) -> None:
        self.net.substitutes = {}
        self.net.value_hook = None
        self.net.neuron_hook = None

    def _ann(self, x: torch.Tensor) -> torch.Tensor:
        """The ANN branch's logits: one step on the mean input, neurons replaced by clip(x, 0, θ)
        with θ detached (the thresholds are the SNN's)."""
        net = self.net
        x = net.mean_input(x, self.timesteps)

        def neuron(name, current, lead, fire):
            return _clip(current, net.params[self.table[name].threshold].detach())

        self._install("ann")
        net.neuron_hook = neuron
        try:
            return net(x, 1)
        finally:
            self._uninstall()

    def _snn(self, x: torch.Tensor) -> torch.Tensor:
        """The SNN branch's readout after T steps. Norms that run on activations take their
        statistics over all T steps and the batch (one time chunk); otherwise the runtime
        chunks time as in BPTT (one chunk of all T steps held 1.6x BPTT's memory at T=32)."""
        net = self.net
        previous = net.time_chunk
        self._install("snn")
        if self._unfolded:
            net.time_chunk = None
        try:
            return net(x, self.timesteps)
        finally:
            net.time_chunk = previous
            self._uninstall()

    def snn_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The SNN branch as trained (in eval mode: what :meth:`write_back` deploys)."""
        return self._snn(x)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Both branches on ``x``: (logits per (branch, head), pooled features per (branch, tap)).
        Keys: 'ann', 'snn' for the IR's readout, 'ann:<neuron>', 'snn:<neuron>' for the heads."""
        logits, features = {}, {}
        for branch, run in (("ann", self._ann), ("snn", self._snn)):
            logits[branch] = run(x)
            for name, f in self._features.items():
                features[f"{branch}:{name}"] = f
            for name in self.aux:
                logits[f"{branch}:{name}"] = self.heads[param_key(name)][branch](self._features[name])
        return logits, features

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor, logit_scale: float = 1.0
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The paper's loss terms (unweighted) and the SNN readout's logits (scaled).

        ce_ann, ce_snn: Σ over the heads of CE in each branch; kd_ann: Σ_aux KD(ANN_aux ← ANN_final);
        kd_snn: Σ_heads KD(SNN_k ← ANN_k); feature: Σ_taps masked squared distance per sample."""
        if not bool(self.calibrated):
            self.calibrate(x)
        logits, features = self(x)
        logits["ann"] = logits["ann"].float() * logit_scale
        logits["snn"] = logits["snn"].float() * logit_scale
        heads = [""] + [f":{n}" for n in self.aux]
        tau = self.temperature
        ce = {b: sum(F.cross_entropy(logits[b + h].float(), y) for h in heads) for b in BRANCHES}
        zero = logits["snn"].new_zeros(())
        kd_ann = sum((kd(logits[f"ann:{n}"].float(), logits["ann"].detach(), tau) for n in self.aux), zero)
        kd_snn = sum(kd(logits["snn" + h].float(), logits["ann" + h].detach().float(), tau) for h in heads)
        feature = zero
        for name in self.taps:
            fs, fa = features[f"snn:{name}"].float(), features[f"ann:{name}"].float()
            mask = ((fs > 0) | (fa > 0)).float()
            feature = feature + ((fs - fa) ** 2 * mask).sum() / len(x)
        return {"ce_ann": ce["ann"], "ce_snn": ce["snn"], "kd_ann": kd_ann, "kd_snn": kd_snn, "feature": feature}, logits["snn"]

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted total of :meth:`loss_terms`."""
        a = self.alpha
        return ((1 - a) * (terms["ce_ann"] + terms["ce_snn"]) + a * self.temperature ** 2 * (terms["kd_ann"] + terms["kd_snn"])
                + self.beta * terms["feature"])

    # --------------------------------------------------------- write-back
    @torch.no_grad()
    def write_back(self) -> None:
        """The SNN branch's effective weights (U·diag(s_snn)·Vᵀ, its BatchNorm folded with the
        running statistics) into the network's parameters, hence into the exported IR."""
        for syn in self.synapses:
            w, b = self.effective(syn, "snn", fold=True)
            self.net.params[param_key(syn.weight)].copy_(w)
            if b is not None:
                self.net.params[param_key(syn.bias)].copy_(b)


def check_supported(net: SpikingNetwork) -> None:
    """Joint training needs at least one factorizable synapse."""
    if not find_synapses(net):
        raise OptionError("method 'joint' found no Conv/Gemm/MatMul with a weight initializer to factorize",
                          hint="Use --method bptt for this network.")
