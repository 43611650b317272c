"""Lava target: emit the spiking IR as Lava processes (lava-nc 0.10.0, CPU simulator).

``compile(model, out, fixed_point=False, calib=None)`` writes a directory artifact holding the
IR (with ``lava_fx.*`` integer initializers when fixed point); ``load(path)`` rebuilds it as a
:class:`LavaNetwork`; ``evaluate(source, x, timesteps, fixed_point=False, batch_size=100)``
simulates it in Lava and returns a :class:`~snnconvert.targets.SimResult`.

Input: analog (one current per sample), or one input per step: frames/spike trains x [N, T, ...]
and rate codes (drawn by the torch runtime's encoder), injected as per-step bias banks of the
populations the graph input feeds (:mod:`.inputs`). Readouts: membrane, last, window:K (the
read-out sink), spikes (the output neurons' counts); what is run is declared in :mod:`.support`
(``ENCODINGS``, ``READOUTS``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import compat

compat.install()
with compat.tolerate_fork_start_method():
    import lava.magma.core.process.process  # noqa: E402,F401  (sets the fork start method)

from ... import ir  # noqa: E402
from ...errors import TargetError  # noqa: E402
from ...results import SimResult  # noqa: E402
from .fixed import PREFIX as FIXED_PREFIX  # noqa: E402
from .fixed import FixedLayer, load_layers  # noqa: E402
from .lowering import LayerGraph, lower  # noqa: E402
from .quantize import quantize  # noqa: E402
from .inputs import step_input  # noqa: E402
from .support import check_io, supports  # noqa: E402
from ..support import refuse_unsupported  # noqa: E402
from .reference import RefResult, simulate  # noqa: E402
from .runner import run_lava  # noqa: E402

TIME_VARYING_INPUT = True
"""Frames x [N, T, ...] run one input per step (as do rate codes of static input)."""

STEP_BIAS = True
"""A neuron step bias runs as per-step bias banks of its IF process (float and fixed point)."""

IR_FILE = "model.snn.onnx"
META_FILE = "lava.json"


@dataclass
class LavaNetwork:
    """A loaded Lava artifact: the IR, its layer graph and (optionally) fixed-point parameters."""

    model: onnx.ModelProto
    graph: LayerGraph
    fixed: dict[str, FixedLayer] | None

    def run(self, x: np.ndarray, timesteps: int, fixed_point: bool | None = None,
            batch_size: int = 100, progress: bool = False, neuron_counts: bool = False
            ) -> RefResult:
        """Simulate in Lava (read-out; spike counts per sample, or per neuron if asked).
        ``x``: [N, *input] (encoded as the IR says) or [N, T, *input] (one input per step)."""
        return run_lava(self.graph, step_input(self.model, x, timesteps), timesteps,
                        self._fixed(fixed_point), batch_size, progress, neuron_counts,
                        self._readout_steps(timesteps), self._count_readout())

    def reference(self, x: np.ndarray, timesteps: int, fixed_point: bool | None = None) -> RefResult:
        """The same simulation with the zero-delay numpy/torch reference (fast)."""
        return simulate(self.graph, step_input(self.model, x, timesteps), timesteps,
                        self._fixed(fixed_point), self._readout_steps(timesteps), self._count_readout())

    def _readout_steps(self, timesteps: int) -> tuple[int, int]:
        return ir.readout(self.model).span(timesteps)

    def _count_readout(self) -> str | None:
        """The output neuron population whose spike counts are the ``spikes`` readout."""
        return ir.output_neuron(self.model).name if ir.readout(self.model).kind == "spikes" else None

    def _fixed(self, fixed_point: bool | None) -> dict[str, FixedLayer] | None:
        if fixed_point is None:
            return self.fixed
        if fixed_point and self.fixed is None:
            raise TargetError("this model carries no fixed-point parameters",
                              hint="Compile it with fixed_point=True (and calibration data).")
        return self.fixed if fixed_point else None


STALE_HINT = ("Compile again with fixed_point=True and calibration data (--fixed-point --calib) "
              "to derive them from the current weights.")


def _refuse_stale(model: onnx.ModelProto) -> None:
    if ir.derived_state(model, FIXED_PREFIX) == "stale":
        stamped = ir.derived_prefixes(model).get(FIXED_PREFIX)
        raise TargetError(
            f"the fixed-point parameters '{FIXED_PREFIX}*' were derived from other float parameters "
            f"than this model carries (stamp {stamped or 'missing'}, weights now "
            f"{ir.source_digest(model)}); deploying them would run the old network",
            hint=STALE_HINT)


def network(model: onnx.ModelProto) -> LavaNetwork:
    """Lower an IR model (with its fixed-point data, if any) to a :class:`LavaNetwork`;
    refuses fixed-point data derived from other float parameters."""
    _refuse_stale(model)
    refuse_unsupported(model, supports, "lava")
    check_io(ir.encoding(model), ir.readout(model))
    lg = lower(model)
    try:
        fx = load_layers(model, lg)
    except KeyError as exc:
        raise TargetError(f"inconsistent fixed-point data: {exc}", hint=STALE_HINT) from None
    return LavaNetwork(model, lg, fx)


def prepare(model: onnx.ModelProto, fixed_point: bool, calib: np.ndarray | None) -> onnx.ModelProto:
    """The model a run or an artifact uses: fixed-point data derived now when asked for and
    absent or stale (with ``calib``), stale data dropped from a float run."""
    state = ir.derived_state(model, FIXED_PREFIX)
    if fixed_point and state != "fresh":
        if state == "stale" and calib is None:
            _refuse_stale(model)
        return quantize(model, calib)
    if not fixed_point and state == "stale":
        model = onnx.ModelProto.FromString(model.SerializeToString())
        ir.drop_derived(model, (FIXED_PREFIX,))
    return model


def compile(model: onnx.ModelProto, out: str | Path, fixed_point: bool = False,
            calib: np.ndarray | None = None, **options) -> Path:
    """Write the artifact directory ``out`` (IR + lava.json); checks that the graph maps."""
    if options:
        raise TargetError(f"unknown lava option(s): {', '.join(sorted(options))}")
    net = network(prepare(model, fixed_point, calib))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ir.save(net.model, out / IR_FILE)
    meta = {"format": 1, "fixed_point": net.fixed is not None,
            "populations": {n: {"shape": list(p.shape), "depth": p.depth}
                            for n, p in net.graph.populations.items()}}
    ir.atomic_write_bytes(out / META_FILE, json.dumps(meta, indent=1).encode())
    return out


def load(path: str | Path) -> LavaNetwork:
    """Load what :func:`compile` wrote (a directory, or a bare IR file)."""
    path = Path(path)
    return network(ir.load(path / IR_FILE if path.is_dir() else path))


def evaluate(source, x: np.ndarray, timesteps, fixed_point: bool = False, batch_size: int = 100,
             calib: np.ndarray | None = None, progress: bool = False, **options) -> SimResult:
    """Simulate ``source`` (IR model, artifact path or LavaNetwork) in Lava for each T."""
    if options:
        raise TargetError(f"unknown lava option(s): {', '.join(sorted(options))}")
    if isinstance(source, LavaNetwork):
        net = source
    elif isinstance(source, onnx.ModelProto):
        net = network(prepare(source, fixed_point, calib if calib is not None else np.asarray(x)[:256]))
    else:
        net = load(source)
    ts = [timesteps] if isinstance(timesteps, int) else list(timesteps)
    res = SimResult(readout={})
    for t in ts:
        r = net.run(x, t, fixed_point=fixed_point, batch_size=batch_size, progress=progress)
        res.readout[t] = r.readout
        sizes = {k: int(np.prod(p.shape)) for k, p in net.graph.populations.items()
                 if not p.is_output and p.relay_of is None}
        res.add_rates(t, {k: float(r.counts[k].sum()) for k in sizes}, sizes, len(x))
    return res


__all__ = ["LavaNetwork", "TIME_VARYING_INPUT", "check_io", "compile", "evaluate", "load", "network",
           "prepare", "quantize", "step_input", "supports"]


def read_ir(path: str | Path) -> onnx.ModelProto:
    """The IR inside an artifact written by :func:`compile` (or a bare .snn.onnx)."""
    path = Path(path)
    return ir.load(path / IR_FILE if path.is_dir() else path)
