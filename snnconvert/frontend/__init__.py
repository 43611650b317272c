"""The front-end: load any ONNX classifier into one normalized ANN form and report what can be converted."""
from __future__ import annotations

from .coverage import NodeMapping, check_supported, coverage
from .pipeline import load_model

__all__ = ["NodeMapping", "check_supported", "coverage", "load_model"]
