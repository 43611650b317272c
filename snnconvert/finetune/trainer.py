"""The fine-tuning loop: BPTT, SNN2ANN or Joint A-SNN on a converted network, optional pipe-S pre-stage,
per-epoch checkpoints and resume; the result is written back into the IR."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import distributed, graph, ir
from ..data import input_shape
from ..datasets import ArraySource, Data, as_source, batches, head, head_labelled, loader
from ..datasets import check as check_source
from ..errors import DataError, OptionError
from ..runtime import SpikingNetwork
from ..runtime.device import torch_device
from ..runtime.training import keep_thresholds_positive, scale_for, threshold_floors
from ..passes.add_delays import add_delays
from . import checkpoint as ckpt
from . import delays as dcls
from . import joint as joint_mod
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
    return SpikingNetwork(work, surrogate=cfg.surrogate, alpha=cfg.alpha).to(torch_device(cfg.device))


@torch.no_grad()
def accuracy(net: SpikingNetwork, x: Data, y: np.ndarray | None, timesteps: int,
             batch_size: int = 256, precision: str = "fp32") -> float:
    """SNN accuracy at ``timesteps`` (no-grad simulation) on inputs ``x`` with labels ``y``, or
    on any labelled data; under torch.distributed each rank runs its batches, counts are summed."""
    device = next(iter(net.params.values())).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for xb, yb in batches((x, y) if y is not None else x, batch_size):
        with _autocast(device, precision):
            out = net(torch.from_numpy(xb).to(device, non_blocking=True), timesteps)
        target = torch.from_numpy(yb).to(device, non_blocking=True)
        correct += (out.argmax(1) == target).sum()
        seen += len(xb)
    right, total = (int(v) for v in distributed.all_sum(np.array([int(correct), seen])))
    return right / total


def _autocast(device: torch.device, precision: str):
    """bf16 autocast (matmuls and convolutions in bfloat16, neuron state in float32) or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


PROGRESS_EVERY = 50
"""Steps between progress-bar loss/accuracy updates (each one reads the device's counters)."""

class Trainer:
    """State of one fine-tuning run (network, optimizer, schedule, history).

    Under torch.distributed the network is wrapped in DistributedDataParallel: every rank
    trains on its slice of each global batch of ``cfg.batch_size`` samples, and the loss is
    scaled so that the all-reduced gradient is the global batch's mean, so a step (hence the
    tuned network) is the same whatever the process count, up to float reduction order.
    """

    def __init__(self, model: onnx.ModelProto, cfg: FinetuneConfig, workers: int | None = None) -> None:
        cfg.validate()
        self.cfg, self.workers = cfg, workers
        model = check_model(model)
        if cfg.delays:  # delay synapses already in the network learn their delays too
            model, added = add_delays(model, cfg.delays, cfg.delay_init, cfg.seed)
            if not added and not any(ir.is_delay_dense(n) for n in model.graph.node):
                raise OptionError("--delays found no dense layer (Gemm/MatMul on flat activations) "
                                  "to give delays to", hint="Delays are learned on dense layers.")
        if cfg.method != "bptt" and any(ir.is_delay_dense(n) for n in model.graph.node):
            raise OptionError(f"this network has delay synapses; method '{cfg.method}' runs one step, "
                              "where delays do nothing", hint="Use --method bptt.")
        self.net = build_network(model, cfg)
        self.device = next(iter(self.net.params.values())).device
        self.table = methods.neuron_table(self.net)
        thresholds = {p.threshold for p in self.table.values()}
        for key, param in self.net.params.items():
            param.requires_grad_(cfg.train_thresholds or key not in thresholds)
        for param in self.net.leaks.values():
            param.requires_grad_(cfg.train_leak)
        self.floors = threshold_floors(self.net, thresholds)
        self.joint: joint_mod.JointModel | None = None
        extra: list[dict] = []
        if cfg.method == "joint":
            if distributed.world_size() > 1:
                raise OptionError("method 'joint' runs in one process", hint="Run it without torchrun.")
            joint_mod.check_supported(self.net)
            sample = torch.zeros((1, *self._sample_shape()), device=self.device)
            self.joint = joint_mod.JointModel(
                self.net, self.table, sample, cfg.timesteps, cfg.joint_branches, cfg.joint_alpha,
                cfg.joint_beta, cfg.joint_temperature, cfg.seed, cfg.joint_norm).to(self.device)
            heads = {id(p) for p in self.joint.heads.parameters()}
            extra = [{"params": [p], "lr": cfg.lr * (10 if id(p) in heads else scale_for(p))}
                     for p in self.joint.parameters()]
        groups = [{"params": [p], "lr": cfg.lr * scale_for(p)}
                  for p in self.net.params.values() if p.requires_grad] + extra
        groups += [{"params": [p], "lr": cfg.lr} for p in self.net.leaks.values() if p.requires_grad]
        self.delay_tops = dcls.max_delays(self.net)
        for param in self.net.delay_positions.values():
            param.requires_grad_(bool(cfg.delays) and cfg.train_delays)
        groups += [{"params": [p], "lr": cfg.lr * cfg.delay_lr_scale, "weight_decay": 0.0}
                   for p in dcls.learnable(self.net)]
        self.opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, cfg.sharpen_epochs + cfg.epochs)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total)
        self.history = History()
        self.epoch = 0
        self.step = 0
        """Global batches done in the current epoch (a mid-epoch checkpoint resumes there)."""
        self.partial = np.zeros(3)
        """(loss sum, correct, samples) of the current epoch's finished steps, over all ranks."""
        self.logit_scale = cfg.logit_scale or 1.0
        self.forward = self.net
        if distributed.world_size() > 1:
            from torch.nn.parallel import DistributedDataParallel

            # ANN-branch phases (snn2ann, sharpen) leave v_init without a gradient.
            unused = cfg.method != "bptt" or cfg.sharpen_epochs > 0
            self.forward = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused)

    # ------------------------------------------------------------ state
    def _sample_shape(self) -> list[int]:
        """One sample's input shape (free dimensions taken as 1)."""
        return [d if isinstance(d, int) and d > 0 else 1 for d in input_shape(self.net._model)]

    def n_outputs(self, x: Data) -> int:
        with torch.no_grad():
            return int(self.net(torch.from_numpy(head(x, 1)).to(self.device), 1).shape[1])

    @torch.no_grad()
    def fit_logit_scale(self, x: Data, y: np.ndarray | None = None, n: int = 512) -> float:
        """Temperature scaling: the factor on the readout that minimises the cross-entropy of
        the untrained network on up to ``n`` training samples (log-grid search; every rank uses
        the same first samples, so the scale does not depend on the process count)."""
        xs, ys = head_labelled((x, y) if y is not None else x, n)
        out = torch.cat([self.net(torch.from_numpy(xs[i:i + 256]).to(self.device), self.cfg.timesteps)
                         for i in range(0, len(xs), 256)])
        target = torch.from_numpy(ys[:len(out)]).to(self.device)
        scales = torch.logspace(-3, 5, 161).tolist()
        losses = [float(F.cross_entropy(out * s, target)) for s in scales]
        self.logit_scale = scales[int(np.argmin(losses))]
        return self.logit_scale

    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "partial": self.partial.tolist(),
                "logit_scale": self.logit_scale, "params": self.net.params.state_dict(),
                "leaks": self.net.leaks.state_dict(),
                "delay_positions": self.net.delay_positions.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "history": self.history.to_dict(), "config": self.cfg.to_dict(),
                "processes": distributed.world_size(),
                "joint": self.joint.state_dict() if self.joint is not None else None}

    def restore(self, state: dict) -> None:
        mine = set(self.net.params.keys())
        theirs = set(state["params"].keys())
        if mine != theirs:
            raise DataError("the checkpoint was written for a different network "
                            f"({len(theirs ^ mine)} parameter names differ)",
                            hint="Resume with the same MODEL the run started from.")
        if state.get("step") and state["config"]["batch_size"] != self.cfg.batch_size:
            raise OptionError(f"the checkpoint stopped inside an epoch of batch size "
                              f"{state['config']['batch_size']}, not {self.cfg.batch_size}",
                              hint="Resume with the same --batch-size (the global batch).")
        with torch.no_grad():
            self.net.params.load_state_dict(state["params"])
            if "leaks" in state:
                self.net.leaks.load_state_dict(state["leaks"])
            if "delay_positions" in state:
                self.net.delay_positions.load_state_dict(state["delay_positions"])
            if (self.joint is None) != (state.get("joint") is None):
                raise DataError("the checkpoint was written with another --method "
                                f"({state['config']['method']})",
                                hint="Resume with the --method the run started with.")
            if self.joint is not None:
                self.joint.load_state_dict(state["joint"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.history = History.from_dict(state["history"])
        self.epoch = int(state["epoch"])
        self.step = int(state.get("step", 0))
        self.partial = np.asarray(state.get("partial", [0.0, 0.0, 0.0]), np.float64)
        self.logit_scale = float(state["logit_scale"])

    # ----------------------------------------------------------- training
    def phase(self, epoch: int) -> str:
        return "sharpen" if epoch < self.cfg.sharpen_epochs else self.cfg.method

    def logits(self, phase: str, xb: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        if phase == "sharpen":
            s = cfg.sharpen_to * (epoch + 1) / cfg.sharpen_epochs
            return methods.sharpen_logits(self.net, xb, s, self.table, self.forward), {}
        if phase == "snn2ann":
            return methods.snn2ann_logits(self.net, xb, cfg.timesteps, cfg.snn_chunk, self.table,
                                          self.forward)
        return methods.bptt_logits(self.forward, xb, cfg.timesteps), {}

    def _epoch_batches(self, data: Data) -> tuple[Iterable, list[int] | None]:
        """This rank's batches of the epoch from ``self.step`` on, and each global batch's size."""
        source = as_source(data)
        if source is None:  # a user's loader: taken as this rank's batches, as they come
            it = iter(batches(data))
            for _ in range(self.step):
                next(it, None)
            return ((torch.from_numpy(x), None if y is None else torch.from_numpy(y)) for x, y in it), None
        cfg = self.cfg
        order = source.permutation(np.random.default_rng(cfg.seed + self.epoch))
        sizes = [min(cfg.batch_size, len(order) - b) for b in range(0, len(order), cfg.batch_size)]
        it = loader(source, cfg.batch_size, order=order, split="within", skip=self.step,
                    workers=self.workers, pin_memory=self.device.type == "cuda")
        return it, sizes  # (x, y) tensors, pinned for CUDA

    def _sync_noisy(self, noisy: dict[str, torch.Tensor], n_local: int, n_global: int
                    ) -> dict[str, torch.Tensor]:
        """Noisy-spike fractions over the global batch (each rank's weighted by its samples),
        reduced on the device."""
        if distributed.world_size() == 1 or not noisy:
            return noisy
        names = sorted(noisy)
        packed = distributed.all_sum_tensor(torch.stack([noisy[k].float() for k in names]) * float(n_local))
        return {k: packed[i] / float(n_global) for i, k in enumerate(names)}

    def epoch_totals(self, sums: torch.Tensor, seen: int) -> np.ndarray:
        """(loss sum, correct, samples) of the epoch so far, over all ranks (a collective)."""
        mine = np.concatenate([sums.cpu().numpy(), [float(seen)]])
        return self.partial + distributed.all_sum(mine)

    def run_epoch(self, x: Data, y: np.ndarray | None = None, progress: bool = False,
                  on_step: Callable[["Trainer", torch.Tensor, int], None] | None = None
                  ) -> tuple[float, float]:
        """One epoch (or its rest after a mid-epoch resume). The step loop stays on the device:
        losses and counts accumulate in a device tensor, read once at the end of the epoch
        (and every :data:`PROGRESS_EVERY` steps for the progress bar)."""
        cfg, epoch = self.cfg, self.epoch
        phase = self.phase(epoch)
        world = distributed.world_size()
        data = (x, y) if y is not None else x
        parts, sizes = self._epoch_batches(data)
        total = cfg.sharpen_epochs + cfg.epochs
        bar = tqdm(total=len(sizes) if sizes else None, initial=self.step, unit="batch", leave=False,
                   desc=f"epoch {epoch + 1}/{total} ({phase})",
                   disable=not progress or not distributed.is_main())
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, correct
        seen = 0
        self.net.train()
        positions = dcls.learnable(self.net)
        if self.joint is not None:
            self.joint.train()
        for xb, yb in parts:
            if positions:
                done = epoch - cfg.sharpen_epochs + (self.step / len(sizes) if sizes else 0.0)
                progress_done = done / max(cfg.epochs, 1)
                self.net.delay_sigma = dcls.sigma_at(progress_done, cfg.delays)
                self.net.delay_rounded = cfg.delay_ste and progress_done >= dcls.ANNEAL_FRACTION
            if yb is None:
                raise DataError("training data: a batch has no labels", hint="Fine-tuning needs labels.")
            n_local = len(xb)
            n_global = sizes[self.step] if sizes else n_local * world
            if n_local == 0:  # fewer samples than ranks in the last global batch: take part, add 0
                xb, yb = torch.zeros((1, *xb.shape[1:])), torch.zeros(1, dtype=torch.int64)
            xb = xb.to(self.device, non_blocking=True)
            yb = yb.to(self.device, non_blocking=True)
            if phase == "joint":
                with _autocast(self.device, cfg.precision):
                    terms, out = self.joint.loss_terms(xb, yb, self.logit_scale)
                ce, noisy = self.joint.combine(terms) * n_local, {}
            else:
                with _autocast(self.device, cfg.precision):
                    out, noisy = self.logits(phase, xb, epoch)
                ce = F.cross_entropy(out.float() * self.logit_scale, yb, reduction="sum")
            # DDP averages gradients over ranks: scale so the result is the global-batch mean.
            loss = ce * (world / n_global) if n_local else ce * 0.0
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if phase == "snn2ann" and cfg.ata:
                methods.adjust_thresholds(self.net, self._sync_noisy(noisy, n_local, n_global),
                                          self.table, cfg.ata_tolerance, cfg.ata_step)
            keep_thresholds_positive(self.net, self.floors)
            if positions:
                dcls.clamp_positions(self.net, self.delay_tops)
            if n_local:
                sums += torch.stack([ce.detach().double(), (out.argmax(1) == yb).sum().double()])
                seen += n_local
            self.step += 1
            bar.update(1)
            if progress and self.step % PROGRESS_EVERY == 0 and world == 1:
                loss_sum, correct, total_seen = self.epoch_totals(sums, seen)
                bar.set_postfix(loss=f"{loss_sum / total_seen:.4f}", acc=f"{correct / total_seen:.4f}")
            if on_step is not None:
                on_step(self, sums, seen)
        bar.close()
        self.net.delay_sigma = None  # validation and export see the integer (rounded) delays
        if self.joint is not None:
            self.joint.write_back()
        loss_sum, correct, seen = self.epoch_totals(sums, seen)
        self.step, self.partial = 0, np.zeros(3)
        self.sched.step()
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def export(self) -> onnx.ModelProto:
        if self.joint is not None:
            self.joint.write_back()
        model = self.net.export()
        ir.set_meta(model, "timesteps", str(self.cfg.timesteps))
        last = self.history.epochs[-1] if self.history.epochs else None
        ir.set_meta(model, "finetune", {"method": self.cfg.method, "epochs": self.epoch,
                                        "surrogate": self.cfg.surrogate,
                                        "sharpen_epochs": self.cfg.sharpen_epochs,
                                        "delays": self.cfg.delays,
                                        "train_delays": self.cfg.train_delays,
                                        "val_accuracy": last.val_accuracy if last else None})
        return model


def _training_data(model: onnx.ModelProto, x: Data, y: np.ndarray | None, what: str) -> Data:
    """Checked training or validation data: arrays become an ArraySource; a Source is checked
    against the model; other iterables are taken as they come."""
    if isinstance(x, np.ndarray) or (y is not None and as_source(x) is None):
        xs, ys = check_arrays(model, x, y, what)
        return ArraySource(xs, ys, what)
    source = as_source(x)
    if source is None:
        return x
    check_source(source, shape=input_shape(model), labels=True, what=what)
    return source


def finetune(model: onnx.ModelProto, x: Data, y: np.ndarray | None = None, x_val: Data | None = None,
             y_val: np.ndarray | None = None, *, config: FinetuneConfig | None = None,
             checkpoint: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
             checkpoint_every: int | None = None, workers: int | None = None,
             progress: bool = False, **options) -> tuple[onnx.ModelProto, History]:
    """Fine-tune a converted SNN on (x, y), or on any labelled data (a Source from
    :func:`snnconvert.datasets.open_data`, a DataLoader, an iterable of (x, y) batches);
    returns the tuned IR and the training history.

    ``options`` are :class:`FinetuneConfig` fields (timesteps, epochs, lr, method, ...).
    A checkpoint is written to ``checkpoint`` after every epoch (and every ``checkpoint_every``
    global batches); ``resume`` continues from one, with any number of processes. Under
    torchrun every rank calls this; rank 0 alone writes the checkpoints.
    """
    try:
        cfg = dataclasses.replace(config or FinetuneConfig(), **options)
    except TypeError as exc:
        raise OptionError(f"unknown fine-tuning option: {exc}") from None
    if checkpoint_every is not None and checkpoint_every < 1:
        raise OptionError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    trainer = Trainer(model, cfg, workers=workers)
    train = _training_data(trainer.net._model, x, y, "training data")
    n_out = trainer.n_outputs(train)
    source = as_source(train)
    if source is not None:
        check_labels(source.labels(), n_out, "training data")
    val = None
    if x_val is not None:
        val = _training_data(trainer.net._model, x_val, y_val, "validation data")
        if as_source(val) is not None:
            check_labels(as_source(val).labels(), n_out, "validation data")

    def evaluate() -> float | None:
        return None if val is None else accuracy(trainer.net, val, None, cfg.timesteps,
                                                 cfg.eval_batch_size, cfg.precision)

    def save(state: dict) -> None:
        if checkpoint is not None and distributed.is_main():
            ckpt.save(checkpoint, state)

    def on_step(tr: Trainer, sums: torch.Tensor, seen: int) -> None:
        if checkpoint is not None and checkpoint_every and tr.step % checkpoint_every == 0:
            totals = tr.epoch_totals(sums, seen).tolist()  # a collective: every rank, before anything else
            state = tr.state()
            state["partial"] = totals
            save(state)

    if resume is not None:
        trainer.restore(ckpt.load(resume))
    else:
        if cfg.logit_scale is None:
            trainer.fit_logit_scale(train)
        trainer.history.initial_val_accuracy = evaluate()
    total = cfg.sharpen_epochs + cfg.epochs
    while trainer.epoch < total:
        t0 = time.perf_counter()
        phase = trainer.phase(trainer.epoch)
        loss, acc = trainer.run_epoch(train, None, progress, on_step)
        seconds = time.perf_counter() - t0
        val_acc = evaluate()
        trainer.epoch += 1
        trainer.history.epochs.append(EpochRecord(trainer.epoch, phase, loss, acc, val_acc, seconds))
        if progress and distributed.is_main():
            tqdm.write(f"epoch {trainer.epoch}/{total} ({phase}): loss {loss:.4f} train acc {acc:.4f}"
                       + (f" val acc {val_acc:.4f}" if val_acc is not None else "") + f" ({seconds:.1f} s)")
        save(trainer.state())
    return trainer.export(), trainer.history
