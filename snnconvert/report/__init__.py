"""Resource, energy and diagnostics report of a converted network: per-layer neurons, synapses,
firing rates, synaptic operations vs the ANN's MACs, SNN/ANN rate correlation, fit on a
hardware profile, an energy estimate, and accuracy-vs-T / firing-rate plots.

The profile and its fit are passed in (loaded and computed by :mod:`snnconvert.profiles`; the API
composes the two), so the report and the profiles do not import each other."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .. import ir, onnxrt
from ..data import ann_input
from ..datasets import Data, batches
from ..errors import DataError
from ..ops.synapses import READOUT, ann_macs, layers, synapses, synaptic_events, tensor_shapes

__all__ = ["Report", "build_report"]


@dataclass
class Report:
    """Everything the report says, as a JSON-able dict in ``data``; ``plots`` are PNG paths."""

    data: dict[str, Any]
    plots: list[Path] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2)


def _curve_ts(t: int) -> list[int]:
    ts = [1]
    while ts[-1] * 2 < t:
        ts.append(ts[-1] * 2)
    return sorted(set(ts + [t]))


def _plots(data: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    curve = data["accuracy_vs_T"]
    ts = [int(t) for t in curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(ts, [100 * curve[str(t)] for t in ts], "o-", label="SNN")
    if data.get("ann_accuracy") is not None:
        ax.axhline(100 * data["ann_accuracy"], color="gray", ls="--",
                   label=f"ANN (rate limit) {100 * data['ann_accuracy']:.2f}%")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("accuracy (%)" if data["labels"] else "agreement with ANN (%)")
    ax.set_title(f"{data['model']}: accuracy vs T")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(out_dir / "accuracy_vs_T.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    rows = [r for r in data["layers"] if r["name"] != READOUT]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4.2), dpi=120)
    idx = np.arange(len(rows))
    ax.bar(idx, [r["firing_rate"] for r in rows], color="tab:blue")
    ax.set_xticks(idx, [f"{i + 1}" for i in idx])
    ax.set_xlabel("neuron layer (graph order; names in the JSON report)")
    ax.set_ylabel("spikes per neuron per step")
    ax.set_title(f"{data['model']}: firing rate per layer at T={data['timesteps']}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "firing_rates.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


@dataclass
class _LayerSums:
    """Running sums over samples of one neuron layer: spikes, and the moments of the ANN
    activation a and the SNN rate s that give their correlation and mean absolute error."""

    spikes: float = 0.0
    elements: int = 0
    a: float = 0.0
    s: float = 0.0
    aa: float = 0.0
    ss: float = 0.0
    as_: float = 0.0
    abs_err: float = 0.0

    def add(self, a: np.ndarray, s: np.ndarray, count: np.ndarray) -> None:
        a, s = a.astype(np.float64).ravel(), s.astype(np.float64).ravel()
        self.spikes += float(count.sum())
        self.elements += a.size
        self.a, self.s = self.a + a.sum(), self.s + s.sum()
        self.aa, self.ss, self.as_ = self.aa + a @ a, self.ss + s @ s, self.as_ + a @ s
        self.abs_err += float(np.abs(a - s).sum())

    def correlation(self) -> float | None:
        n = self.elements
        va, vs = n * self.aa - self.a ** 2, n * self.ss - self.s ** 2
        if va <= 1e-12 * max(n * self.aa, 1e-300) or vs <= 1e-12 * max(n * self.ss, 1e-300):
            return None
        return float((n * self.as_ - self.a * self.s) / np.sqrt(va * vs))


def build_report(model: onnx.ModelProto, x: Data, y: np.ndarray | None, timesteps: int,
                 profile: Any, fitted: Any, out_dir: str | os.PathLike | None = None,
                 batch_size: int = 128, name: str = "model") -> Report:
    """Simulate ``model`` on ``x`` (labels ``y`` optional; or any data stream, see
    :mod:`snnconvert.datasets`) and measure everything per layer, batch by batch: memory does
    not grow with the number of samples.

    ``profile``: a :class:`snnconvert.profiles.Profile`; ``fitted``: its
    :class:`~snnconvert.profiles.FitReport` for ``model``."""
    from ..runtime import SpikingNetwork

    prof = profile
    shapes = tensor_shapes(model)
    lays = layers(model, shapes)
    syn = synapses(model, shapes)
    macs = ann_macs(model, shapes)

    net = SpikingNetwork(model)
    ts = _curve_ts(timesteps)
    neuron_list = ir.neurons(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    ir.ensure_domain(probe)
    out_name = model.graph.output[0].name
    names = [out_name] + [n.output for n in neuron_list]
    sess = onnxrt.session(probe, outputs=names)
    input_name = sess.get_inputs()[0].name
    rank = len(sess.get_inputs()[0].shape)
    n_samples, labelled, ann_correct = 0, False, 0
    correct = {t: 0 for t in ts}
    spikes_at: dict[str, float] = {}
    sizes: dict[str, int] = {}
    events = {lay.name: 0.0 for lay in lays}
    sums = {n.name: _LayerSums() for n in neuron_list}
    data = (np.asarray(x, np.float32), y) if isinstance(x, np.ndarray) and y is not None else x
    for xb, yb in batches(data, batch_size, shard=False):
        sim = net.simulate(xb, ts, batch_size=batch_size, record=True)
        counts = {k: v.to(torch.float64) for k, v in net.spike_counts.items()}
        for lay, value in synaptic_events(model, shapes, counts).items():
            events[lay] += value * len(xb)
        arrays = dict(zip(names, sess.run(names, {input_name: ann_input(xb, rank, timesteps)})))
        ann_pred = arrays[out_name].reshape(len(xb), -1).argmax(1)
        labelled = yb is not None
        ref = yb if labelled else ann_pred
        ann_correct += int(np.sum(ann_pred == ref))
        for t in ts:
            correct[t] += int(np.sum(sim.predictions(t) == ref))
        for k, v in sim.spikes[timesteps].items():
            spikes_at[k] = spikes_at.get(k, 0.0) + v
        sizes.update(sim.sizes)
        for neuron in neuron_list:
            c = counts[neuron.name].numpy()
            rate_snn = c * np.broadcast_to(neuron.threshold, c.shape[1:]) / timesteps
            sums[neuron.name].add(arrays[neuron.output], rate_snn, c)
        n_samples += len(xb)
    if n_samples == 0:
        raise DataError("the report data is empty")
    curve = {str(t): correct[t] / n_samples for t in ts}
    total_neurons = sum(sizes.values())

    per_layer = []
    for lay in lays:
        row: dict[str, Any] = {"name": lay.name, "shape": list(lay.shape), "neurons": lay.neurons,
                               "synapses": syn[lay.name], "ann_macs": macs[lay.name],
                               "input": "analog" if lay.analog else "spikes"}
        if lay.name in sums:
            st = sums[lay.name]
            row.update(firing_rate=st.spikes / st.elements / timesteps,
                       spikes_per_inference=st.spikes / n_samples,
                       ann_rate_correlation=st.correlation(),
                       rate_mae=st.abs_err / st.elements)
        # events arriving at the layer: MACs for analog input, synaptic ops for spike input
        row["sops" if not lay.analog else "macs"] = events[lay.name] / n_samples
        cores = next(f.cores for f in fitted.layers if f.name == lay.name)
        row["cores"] = cores
        per_layer.append(row)

    e_ac = prof.energy["synaptic_op_pj"]
    e_mac = prof.energy.get("mac_pj", e_ac)
    e_nu = prof.energy.get("neuron_update_pj", 0.0)
    sops = sum(r.get("sops", 0.0) for r in per_layer)
    snn_macs = sum(r.get("macs", 0.0) for r in per_layer)
    n_neurons = sum(r["neurons"] for r in per_layer if r["name"] != READOUT)
    total_ann_macs = sum(macs.values())
    e_snn = (sops * e_ac + snn_macs * e_mac + n_neurons * timesteps * e_nu) * 1e-12
    e_ann = total_ann_macs * prof.energy["ann_mac_pj"] * 1e-12
    data = {
        "model": name, "timesteps": timesteps, "samples": n_samples, "labels": labelled,
        "profile": prof.name,
        "snn_accuracy": curve[str(timesteps)],
        "ann_accuracy": ann_correct / n_samples if labelled else None,
        "accuracy_vs_T": curve,
        "firing_rate": (sum(spikes_at.values()) / (n_samples * total_neurons * timesteps)
                        if total_neurons else 0.0),
        "layers": per_layer,
        "totals": {"neurons": n_neurons, "synapses": int(sum(syn.values())),
                   "ann_macs": int(total_ann_macs), "snn_sops": sops, "snn_macs": snn_macs,
                   "sops_per_ann_mac": sops / total_ann_macs if total_ann_macs else None},
        "energy": {
            "snn_joules": e_snn, "ann_joules": e_ann,
            "snn_over_ann": e_snn / e_ann if e_ann else None,
            "assumptions": [
                f"SNN: {e_ac} pJ per spike-driven synaptic op, {e_mac} pJ per MAC of layers fed "
                "by the analog input (computed once per inference: the input is constant), "
                f"{e_nu} pJ per neuron update per step",
                f"ANN: {prof.energy['ann_mac_pj']} pJ per MAC (Conv/Gemm/MatMul only)",
                "memory access, data movement and static power are ignored",
                f"figures from profile '{prof.name}' ({prof.path.name}); sources listed there",
            ],
        },
        "fit": fitted.to_dict(),
    }
    report = Report(data)
    if out_dir is not None:
        report.plots = _plots(data, Path(out_dir))
        data["plots"] = [str(p) for p in report.plots]
    return report
