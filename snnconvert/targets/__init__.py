"""Back-ends. Each target is a sub-package exposing the same two functions:

``compile(model, out, **options) -> Path``
    write the target's artifact for the IR ``model`` (an ``onnx.ModelProto``) at ``out``.
``evaluate(source, x, timesteps, **options) -> SimResult``
    simulate ``source`` (an IR model, or a path to the artifact ``compile`` wrote) on inputs
    ``x`` (float32, model input layout) for each T in ``timesteps``.

A target may also expose ``read_ir(path) -> onnx.ModelProto``, the IR inside its artifact.
Targets import nothing from each other; optional dependencies (lava, nir) are imported
lazily so that ``import snnconvert`` never needs them.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import OptionError, TargetError
from ..results import SimResult

TARGETS = ("torch", "lava", "nir")

__all__ = ["TARGETS", "SimResult", "get_target"]


def get_target(name: str) -> ModuleType:
    """Import the target ``name``; a missing optional dependency becomes a TargetError."""
    if name not in TARGETS:
        raise OptionError(f"unknown target '{name}'", hint=f"Choose one of: {', '.join(TARGETS)}.")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise TargetError(f"the '{name}' target needs a package that is not installed ({exc.name})",
                          hint=f"Install it with: pip install 'snnconvert[{name}]'.") from None
