"""The NIR target: write the IR as a NIR graph (``nir.write``) and simulate NIR files.

NIR cannot state reset by subtraction or an initial potential; ``compile`` folds what it can
(thresholds, pooling divisors, output scales) and warns about each remaining loss, or refuses
with ``strict=True``. See :mod:`.export` for the exact mapping.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import nir
import numpy as np
import onnx

from ... import ir
from ...errors import TargetError
from ...results import SimResult
from .export import POOL_MODES, Loss, to_nir
from .simulate import NirSimulator
from ..support import refuse_unsupported
from .support import supports

__all__ = ["compile", "evaluate", "export", "Loss", "NirSimulator", "POOL_MODES", "supports"]

TIME_VARYING_INPUT = True
"""The NIR graph takes one input per step: x [N, T, ...] is simulated frame by frame."""

STEP_BIAS = False
"""NIR biases are constant in time: a neuron step bias (``ir``) cannot be held (refused by node;
``convert`` then calibrates without one)."""


def export(model: onnx.ModelProto, strict: bool = False, pool: str = "sum"
           ) -> tuple[nir.NIRGraph, list[Loss]]:
    """The NIR graph of ``model`` and the list of what it does not reproduce exactly.

    With ``strict=True`` any loss raises a TargetError naming every lossy layer."""
    refuse_unsupported(model, supports, "nir")
    ir.check_constant_input(model, "nir", per_step_input=True)
    graph, losses = to_nir(model, pool=pool)
    if strict and losses:
        raise TargetError("the NIR graph would not reproduce the network exactly: "
                          + "; ".join(str(x) for x in losses),
                          hint="Convert with reset='zero' and v_init='zero', or pass "
                               "strict=False to accept these losses.")
    return graph, losses


def compile(model: onnx.ModelProto, out: str | os.PathLike, strict: bool = False,
            pool: str = "sum") -> Path:
    """Write ``model`` as a NIR HDF5 file at ``out``; each loss is also a ``UserWarning``."""
    graph, losses = export(model, strict=strict, pool=pool)
    for loss in losses:
        warnings.warn(f"NIR export: {loss}", UserWarning, stacklevel=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:  # written whole or not at all
        nir.write(tmp, graph)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def evaluate(source, x: np.ndarray, timesteps: list[int] | int, batch_size: int = 256,
             pool: str = "sum", **_: object) -> SimResult:
    """Simulate a NIR file (or graph, or an IR model exported on the fly, losses accepted)
    with NIR semantics: reset to v_reset, no initial potential, dt = 1."""
    if isinstance(source, onnx.ModelProto):
        graph, _losses = export(source, pool=pool)
    elif isinstance(source, nir.NIRGraph):
        graph = source
    else:
        path = Path(source)
        if not path.exists():
            raise TargetError(f"NIR file not found: {path}")
        graph = nir.read(str(path))
    result, _counts = NirSimulator(graph).simulate(np.asarray(x, np.float32), timesteps,
                                                  batch_size=batch_size)
    return result
