"""Hardware target profiles (``targets/*.toml``): numeric formats, neuron limits, capacity and
energy figures with sources, and a check of whether an IR network fits on the target."""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from . import ir
from .errors import OptionError
from .ops.synapses import layers, synapses, tensor_shapes

PROFILE_DIR = Path(__file__).resolve().parents[1] / "targets"
REQUIRED = {
    "target": ("name",),
    "capacity": ("cores_per_chip", "neurons_per_core", "synapses_per_core"),
    "neuron": ("reset_modes",),
    "energy": ("synaptic_op_pj", "ann_mac_pj"),
}


@dataclass
class Profile:
    """A hardware target. Capacity figures of 0 mean unlimited."""

    name: str
    description: str
    chips: int
    cores_per_chip: int
    neurons_per_core: int
    synapses_per_core: int
    formats: dict[str, Any]
    neuron: dict[str, Any]
    energy: dict[str, float]
    sources: dict[str, str]
    path: Path

    @property
    def limited(self) -> bool:
        return self.cores_per_chip > 0


@dataclass
class LayerFit:
    name: str
    neurons: int
    synapses: int
    cores: int


@dataclass
class FitReport:
    """Cores per layer and in total on ``profile``; ``fits`` with the reasons when it does not."""

    profile: str
    layers: list[LayerFit]
    total_cores: int
    available_cores: int | None
    fits: bool
    reasons: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"profile": self.profile, "total_cores": self.total_cores,
                "available_cores": self.available_cores, "fits": self.fits,
                "reasons": self.reasons, "issues": self.issues,
                "layers": [vars(x) for x in self.layers]}


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load a bundled profile by name (``loihi2``) or any TOML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or path.exists()):
        path = PROFILE_DIR / f"{text}.toml"
        if not path.exists():
            raise OptionError(f"unknown target profile '{text}'",
                              hint=f"Use one of: {', '.join(available())}, or a .toml file path.")
    if not path.exists():
        raise OptionError(f"profile file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"profile {path} is not valid TOML ({exc})") from None
    for section, keys in REQUIRED.items():
        table = data.get(section)
        if not isinstance(table, dict):
            raise OptionError(f"profile {path} lacks the [{section}] table",
                              hint=f"It needs keys: {', '.join(keys)}.")
        for key in keys:
            if key not in table:
                raise OptionError(f"profile {path} lacks the key '{section}.{key}'")
    cap = data["capacity"]
    for key in REQUIRED["capacity"]:
        if not isinstance(cap[key], int) or cap[key] < 0:
            raise OptionError(f"profile {path}: 'capacity.{key}' must be a non-negative integer, "
                              f"got {cap[key]!r}")
    for key, value in data["energy"].items():
        if not isinstance(value, (int, float)) or value < 0:
            raise OptionError(f"profile {path}: 'energy.{key}' must be a non-negative number")
    bad = [m for m in data["neuron"]["reset_modes"] if m not in ir.RESET_MODES]
    if bad:
        raise OptionError(f"profile {path}: unknown reset mode(s) {bad}",
                          hint=f"Use {', '.join(ir.RESET_MODES)}.")
    t = data["target"]
    return Profile(name=t["name"], description=t.get("description", ""),
                   chips=int(t.get("chips", 1)), cores_per_chip=cap["cores_per_chip"],
                   neurons_per_core=cap["neurons_per_core"],
                   synapses_per_core=cap["synapses_per_core"],
                   formats=dict(data.get("formats", {})), neuron=dict(data["neuron"]),
                   energy={k: float(v) for k, v in data["energy"].items()},
                   sources=dict(data.get("sources", {})), path=path)


def _cores(count: int, per_core: int) -> int:
    return math.ceil(count / per_core) if per_core > 0 else 0


def fit(model: onnx.ModelProto, profile: Profile | str, shapes: dict | None = None) -> FitReport:
    """Cores each neuron layer (and the readout) needs on ``profile``: the larger of its
    neurons / neurons_per_core and its fan-in synapses / synapses_per_core, rounded up."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    shapes = shapes or tensor_shapes(model)
    syn = synapses(model, shapes)
    rows = []
    for lay in layers(model, shapes):
        cores = max(_cores(lay.neurons, prof.neurons_per_core),
                    _cores(syn[lay.name], prof.synapses_per_core))
        rows.append(LayerFit(lay.name, lay.neurons, syn[lay.name], max(cores, 1)))
    total = sum(r.cores for r in rows)
    report = FitReport(prof.name, rows, total,
                       prof.cores_per_chip * prof.chips if prof.limited else None, True)
    if prof.limited and total > prof.cores_per_chip * prof.chips:
        report.fits = False
        worst = max(rows, key=lambda r: r.cores)
        report.reasons.append(
            f"needs {total} cores, the target has {prof.cores_per_chip * prof.chips} "
            f"({prof.chips} chip(s) x {prof.cores_per_chip}); largest layer '{worst.name}' "
            f"needs {worst.cores} ({worst.neurons} neurons, {worst.synapses} synapses)")
    for n in ir.neurons(model):
        if n.reset not in prof.neuron["reset_modes"]:
            report.issues.append(f"{n.name}: reset '{n.reset}' is not a stock mode on "
                                 f"{prof.name} ({', '.join(prof.neuron['reset_modes'])})")
        if n.threshold.size > 1 and not prof.neuron.get("per_channel_threshold", True):
            report.issues.append(f"{n.name}: per-channel thresholds are not supported")
        if n.leak > 0 and not prof.neuron.get("leak", True):
            report.issues.append(f"{n.name}: leak is not supported")
    return report
