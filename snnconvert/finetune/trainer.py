"""The fine-tuning loop: BPTT or SNN2ANN on a converted network, optional pipe-S pre-stage,
per-epoch checkpoints and resume; the result is written back into the IR."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import graph, ir
from ..errors import DataError, OptionError
from ..runtime import SpikingNetwork
from . import checkpoint as ckpt
from . import methods
from .config import FinetuneConfig
from .validate import check_arrays, check_labels, check_model


@dataclass
class EpochRecord:
    epoch: int
    phase: str
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    seconds: float


@dataclass
class History:
    """Validation accuracy before training and one record per finished epoch."""

    initial_val_accuracy: float | None = None
    epochs: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"initial_val_accuracy": self.initial_val_accuracy,
                "epochs": [dataclasses.asdict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(d["initial_val_accuracy"], [EpochRecord(**e) for e in d["epochs"]])


def build_network(model: onnx.ModelProto, cfg: FinetuneConfig) -> SpikingNetwork:
    """A SpikingNetwork on a copy of ``model`` (with the LIF leak set when asked) on cfg.device.

    Target data derived from the float parameters (fixed-point integers) is dropped: training
    changes the floats, so a target derives it again from the tuned ones."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    ir.drop_derived(work)
    if cfg.leak is not None:
        for node in work.graph.node:
            if ir.is_neuron(node):
                graph.set_attr(node, "leak", float(cfg.leak))
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise OptionError(f"unknown torch device '{cfg.device}'", hint="Use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda asked for but no CUDA device is available")
    return SpikingNetwork(work, surrogate=cfg.surrogate, alpha=cfg.alpha).to(device)


@torch.no_grad()
def accuracy(net: SpikingNetwork, x: np.ndarray, y: np.ndarray, timesteps: int,
             batch_size: int = 256) -> float:
    """SNN accuracy at ``timesteps`` (no-grad simulation)."""
    device = next(iter(net.params.values())).device
    correct = 0
    for i in range(0, len(x), batch_size):
        out = net(torch.from_numpy(x[i:i + batch_size]).to(device), timesteps)
        correct += int((out.argmax(1).cpu() == torch.from_numpy(y[i:i + batch_size])).sum())
    return correct / len(x)


LR_REFERENCE_RMS = 0.05


def scale_for(param: torch.Tensor) -> float:
    """Learning-rate factor min(1, rms(param) / 0.05): Adam steps are ~lr in absolute size, so
    small weights (e.g. a bias-free net fed raw x/255) need proportionally smaller steps."""
    rms = float(param.detach().pow(2).mean().sqrt())
    return min(1.0, max(rms, 1e-8) / LR_REFERENCE_RMS)


class Trainer:
    """State of one fine-tuning run (network, optimizer, schedule, history)."""

    def __init__(self, model: onnx.ModelProto, cfg: FinetuneConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.net = build_network(check_model(model), cfg)
        self.device = next(iter(self.net.params.values())).device
        self.table = methods.neuron_table(self.net)
        thresholds = {p.threshold for p in self.table.values()}
        for key, param in self.net.params.items():
            param.requires_grad_(cfg.train_thresholds or key not in thresholds)
        self.floors = {k: 1e-3 * self.net.params[k].detach().abs().mean().clamp(min=1e-8)
                       for k in thresholds}
        groups = [{"params": [p], "lr": cfg.lr * scale_for(p)}
                  for p in self.net.params.values() if p.requires_grad]
        self.opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, cfg.sharpen_epochs + cfg.epochs)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total)
        self.history = History()
        self.epoch = 0
        self.logit_scale = cfg.logit_scale or 1.0

    # ------------------------------------------------------------ state
    def n_outputs(self, x: np.ndarray) -> int:
        with torch.no_grad():
            return int(self.net(torch.from_numpy(x[:1]).to(self.device), 1).shape[1])

    @torch.no_grad()
    def fit_logit_scale(self, x: np.ndarray, y: np.ndarray, n: int = 512) -> float:
        """Temperature scaling: the factor on the readout that minimises the cross-entropy of
        the untrained network on up to ``n`` training samples (log-grid search)."""
        out = torch.cat([self.net(torch.from_numpy(x[i:i + 256]).to(self.device), self.cfg.timesteps)
                         for i in range(0, min(n, len(x)), 256)])
        target = torch.from_numpy(y[:len(out)]).to(self.device)
        scales = torch.logspace(-3, 5, 161).tolist()
        losses = [float(F.cross_entropy(out * s, target)) for s in scales]
        self.logit_scale = scales[int(np.argmin(losses))]
        return self.logit_scale

    def state(self) -> dict:
        return {"epoch": self.epoch, "logit_scale": self.logit_scale, "params": self.net.params.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "history": self.history.to_dict(), "config": self.cfg.to_dict()}

    def restore(self, state: dict) -> None:
        mine = set(self.net.params.keys())
        theirs = set(state["params"].keys())
        if mine != theirs:
            raise DataError("the checkpoint was written for a different network "
                            f"({len(theirs ^ mine)} parameter names differ)",
                            hint="Resume with the same MODEL the run started from.")
        self.net.params.load_state_dict(state["params"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.history = History.from_dict(state["history"])
        self.epoch = int(state["epoch"])
        self.logit_scale = float(state["logit_scale"])

    # ----------------------------------------------------------- training
    def phase(self, epoch: int) -> str:
        return "sharpen" if epoch < self.cfg.sharpen_epochs else self.cfg.method

    def logits(self, phase: str, xb: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        if phase == "sharpen":
            s = cfg.sharpen_to * (epoch + 1) / cfg.sharpen_epochs
            return methods.sharpen_logits(self.net, xb, s, self.table), {}
        if phase == "snn2ann":
            return methods.snn2ann_logits(self.net, xb, cfg.timesteps, cfg.snn_chunk, self.table)
        return methods.bptt_logits(self.net, xb, cfg.timesteps), {}

    def run_epoch(self, x: np.ndarray, y: np.ndarray, progress: bool) -> tuple[float, float]:
        cfg, epoch = self.cfg, self.epoch
        phase = self.phase(epoch)
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(x))
        total_loss, correct, seen = 0.0, 0, 0
        total = cfg.sharpen_epochs + cfg.epochs
        bar = tqdm(range(0, len(x), cfg.batch_size), desc=f"epoch {epoch + 1}/{total} ({phase})",
                   unit="batch", disable=not progress, leave=False)
        self.net.train()
        for start in bar:
            idx = order[start:start + cfg.batch_size]
            xb = torch.from_numpy(x[idx]).to(self.device)
            yb = torch.from_numpy(y[idx]).to(self.device)
            out, noisy = self.logits(phase, xb, epoch)
            loss = F.cross_entropy(out * self.logit_scale, yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if phase == "snn2ann" and cfg.ata:
                methods.adjust_thresholds(self.net, noisy, self.table, cfg.ata_tolerance, cfg.ata_step)
            methods.keep_thresholds_positive(self.net, self.floors)
            total_loss += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        bar.close()
        self.sched.step()
        return total_loss / seen, correct / seen

    def export(self) -> onnx.ModelProto:
        model = self.net.export()
        ir.set_meta(model, "timesteps", str(self.cfg.timesteps))
        last = self.history.epochs[-1] if self.history.epochs else None
        ir.set_meta(model, "finetune", {"method": self.cfg.method, "epochs": self.epoch,
                                        "surrogate": self.cfg.surrogate,
                                        "sharpen_epochs": self.cfg.sharpen_epochs,
                                        "val_accuracy": last.val_accuracy if last else None})
        return model


def finetune(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None = None,
             y_val: np.ndarray | None = None, *, config: FinetuneConfig | None = None,
             checkpoint: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
             progress: bool = False, **options) -> tuple[onnx.ModelProto, History]:
    """Fine-tune a converted SNN on (x, y); returns the tuned IR and the training history.

    ``options`` are :class:`FinetuneConfig` fields (timesteps, epochs, lr, method, ...).
    A checkpoint is written to ``checkpoint`` after every epoch; ``resume`` continues from one.
    """
    try:
        cfg = dataclasses.replace(config or FinetuneConfig(), **options)
    except TypeError as exc:
        raise OptionError(f"unknown fine-tuning option: {exc}") from None
    trainer = Trainer(model, cfg)
    x, y = check_arrays(trainer.net._model, x, y, "training data")
    n_out = trainer.n_outputs(x)
    check_labels(y, n_out, "training data")
    if x_val is not None:
        x_val, y_val = check_arrays(trainer.net._model, x_val, y_val, "validation data")
        check_labels(y_val, n_out, "validation data")
    if resume is not None:
        trainer.restore(ckpt.load(resume))
    else:
        if cfg.logit_scale is None:
            trainer.fit_logit_scale(x, y)
        if x_val is not None:
            trainer.history.initial_val_accuracy = accuracy(trainer.net, x_val, y_val, cfg.timesteps,
                                                            cfg.eval_batch_size)
    total = cfg.sharpen_epochs + cfg.epochs
    while trainer.epoch < total:
        t0 = time.perf_counter()
        phase = trainer.phase(trainer.epoch)
        loss, acc = trainer.run_epoch(x, y, progress)
        seconds = time.perf_counter() - t0
        val = accuracy(trainer.net, x_val, y_val, cfg.timesteps, cfg.eval_batch_size) \
            if x_val is not None else None
        trainer.epoch += 1
        trainer.history.epochs.append(EpochRecord(trainer.epoch, phase, loss, acc, val, seconds))
        if progress:
            tqdm.write(f"epoch {trainer.epoch}/{total} ({phase}): loss {loss:.4f} train acc {acc:.4f}"
                       + (f" val acc {val:.4f}" if val is not None else "") + f" ({seconds:.1f} s)")
        if checkpoint is not None:
            ckpt.save(checkpoint, trainer.state())
    return trainer.export(), trainer.history
