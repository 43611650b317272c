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
from ..ops.events import READOUT, ann_macs, layers, synapses, synaptic_events, tensor_shapes

__all__ = ["Report", "build_report"]


@dataclass
class Report:
    """Everything the report says, as a JSON-able dict in ``data``; ``plots`` are PNG paths."""

    data: dict[str, Any]
    plots: list[Path] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2)


def _ann_activations(model: onnx.ModelProto, x: np.ndarray, names: list[str]
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rate-limit ANN (onnxruntime on the IR: IF = clip(x, 0, θ)) output and neuron outputs."""
    
    m = onnx.ModelProto()
    m.CopyFrom(model)
    ir.ensure_domain(m)
    out = model.graph.output[0].name
    arrays = onnxrt.collect(m, x, [out] + names)
    return arrays[out], {n: arrays[n] for n in names}


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


def build_report(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, timesteps: int,
                 profile: Any, fitted: Any, out_dir: str | os.PathLike | None = None,
                 batch_size: int = 128, name: str = "model") -> Report:
    """Simulate ``model`` on ``x`` (labels ``y`` optional) and measure everything per layer.

    ``profile``: a :class:`snnconvert.profiles.Profile`; ``fitted``: its
    :class:`~snnconvert.profiles.FitReport` for ``model``."""
    from ..runtime import SpikingNetwork

    prof = profile
    x = np.asarray(x, np.float32)
    shapes = tensor_shapes(model)
    lays = layers(model, shapes)
    syn = synapses(model, shapes)
    macs = ann_macs(model, shapes)

    net = SpikingNetwork(model)
    ts = _curve_ts(timesteps)
    sim = net.simulate(x, ts, batch_size=batch_size, record=True)
    counts = {k: v.to(torch.float64) for k, v in net.spike_counts.items()}
    events = synaptic_events(model, shapes, counts)

    neuron_list = ir.neurons(model)
    ann_out, acts = _ann_activations(model, x, [n.output for n in neuron_list])
    ann_pred = ann_out.argmax(1)
    ref = y if y is not None else ann_pred
    curve = {str(t): float(np.mean(sim.predictions(t) == ref)) for t in ts}

    per_layer = []
    for lay in lays:
        row: dict[str, Any] = {"name": lay.name, "shape": list(lay.shape), "neurons": lay.neurons,
                               "synapses": syn[lay.name], "ann_macs": macs[lay.name],
                               "input": "analog" if lay.analog else "spikes"}
        neuron = next((n for n in neuron_list if n.name == lay.name), None)
        if neuron is not None:
            c = counts[lay.name].numpy()
            rate_snn = c * np.broadcast_to(neuron.threshold, c.shape[1:]) / timesteps
            a = acts[neuron.output].reshape(len(x), -1)
            s = rate_snn.reshape(len(x), -1)
            corr = (float(np.corrcoef(a.ravel(), s.ravel())[0, 1])
                    if a.std() > 0 and s.std() > 0 else None)
            row.update(firing_rate=float(c.mean() / timesteps),
                       spikes_per_inference=float(c.sum() / len(x)),
                       ann_rate_correlation=corr,
                       rate_mae=float(np.abs(a - s).mean()))
        # events arriving at the layer: MACs for analog input, synaptic ops for spike input
        row["sops" if not lay.analog else "macs"] = events[lay.name]
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
        "model": name, "timesteps": timesteps, "samples": int(len(x)), "labels": y is not None,
        "profile": prof.name,
        "snn_accuracy": curve[str(timesteps)],
        "ann_accuracy": float(np.mean(ann_pred == y)) if y is not None else None,
        "accuracy_vs_T": curve,
        "firing_rate": float(sim.firing_rate[timesteps]),
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
