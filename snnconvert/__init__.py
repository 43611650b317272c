"""snnconvert: compile trained ANNs (ONNX) into spiking networks for PyTorch, Lava and NIR.

The top-level names are imported lazily so that ``import snnconvert.frontend`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "convert": "api", "evaluate": "api", "EvalReport": "api",
    "load": "ir", "save": "ir",
    "PassContext": "passes", "Pipeline": "passes", "default_pipeline": "passes",
    "open_data": "datasets",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'snnconvert' has no attribute {name!r}")
