"""Checks on the model and the training arrays, raised as one-line user errors."""
from __future__ import annotations

import numpy as np
import onnx

from .. import ir
from ..data import input_shape, sample_fits
from ..errors import DataError, ModelLoadError


def check_model(model: object) -> onnx.ModelProto:
    """The model must be a converted network (the spiking IR) with at least one neuron."""
    if not isinstance(model, onnx.ModelProto):
        raise ModelLoadError(f"expected an onnx.ModelProto of the spiking IR, got {type(model).__name__}")
    if not ir.is_snn(model):
        raise ModelLoadError("the model is an ONNX model but not a converted SNN",
                             hint="Convert it first with 'snnconvert convert' (or snnconvert.convert).")
    if not any(ir.is_neuron(n) for n in model.graph.node):
        raise ModelLoadError("the model holds no spiking neuron to fine-tune")
    return model


def check_arrays(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, what: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs must match the model's per-sample shape; labels must be given, one integer per
    sample."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.ndim < 1 or len(x) == 0:
        raise DataError(f"{what}: 'x' must be a non-empty numeric array, got dtype {x.dtype} "
                        f"shape {list(x.shape)}")
    shape = input_shape(model)
    got = list(x.shape[1:])
    if not sample_fits(got, shape):
        raise DataError(f"{what}: samples have shape {got}, the model expects "
                        f"{['?' if s is None else s for s in shape]} (or [T, ...] for one input per step)")
    if y is None:
        raise DataError(f"{what}: labels 'y' are missing", hint="Fine-tuning needs integer labels.")
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{what}: 'y' must be {len(x)} integer labels, got dtype {y.dtype} "
                        f"shape {list(y.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def check_labels(y: np.ndarray, n_classes: int, what: str) -> None:
    """Labels index the network's outputs: integers in [0, n_classes)."""
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"{what}: labels must lie in [0, {n_classes}) for a network with "
                        f"{n_classes} outputs, got [{y.min()}, {y.max()}]")
