"""Read and validate ``.npz`` data files: ``x`` (float32, preprocessed, model input layout, or
uint8/integer counts) and ``y`` (integer labels; optional for calibration).

An ``x`` with one more axis than the model input, axis 1 being time ([N, T, *input]), is
time-varying input (one input per step): :func:`sample_fits` accepts both forms."""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import DataError


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None
    path: str

    def limit(self, n: int | None) -> "Dataset":
        if n is None:
            return self
        return Dataset(self.x[:n], None if self.y is None else self.y[:n], self.path)


def input_shape(model: onnx.ModelProto) -> list[int | None]:
    """Per-sample input shape of ``model`` (None for unknown dims), batch axis excluded."""
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = inp.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]


def load_npz(path: str | os.PathLike, *, labels: bool, shape: list[int | None] | None = None,
             what: str = "data") -> Dataset:
    """Load and check a data file; every problem becomes one DataError line naming the file."""
    path = str(path)
    if not os.path.exists(path):
        raise DataError(f"{what} file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{what} file {path} is not a readable .npz archive ({type(exc).__name__})",
                        hint="Save it with numpy.savez(path, x=..., y=...).") from None
    if "x" not in arrays:
        raise DataError(f"{what} file {path} has no array 'x' (found: {', '.join(arrays) or 'none'})",
                        hint="Store the preprocessed inputs under the key 'x'.")
    x = arrays["x"]
    if x.dtype.kind not in "fiu" or x.ndim < 1:
        raise DataError(f"{what} file {path}: 'x' must be a numeric array, got dtype {x.dtype}")
    if len(x) == 0:
        raise DataError(f"{what} file {path}: 'x' is empty")
    if x.dtype.kind == "f":  # integer counts stay compact; sources cast each batch to float32
        x = x.astype(np.float32, copy=False)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{what} file {path}: 'x' holds NaN or Inf values")
    if shape is not None:
        _check_shape(x, shape, path, what)
    y = arrays.get("y")
    if y is not None:
        if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{what} file {path}: 'y' must be {len(x)} integer labels, got dtype "
                            f"{y.dtype} shape {list(y.shape)}")
        y = y.astype(np.int64)
    elif labels:
        raise DataError(f"{what} file {path} has no labels 'y'", hint="Add integer labels under 'y'.")
    return Dataset(x, y, path)


def sample_fits(got: list[int], shape: list[int | None]) -> bool:
    """Whether samples of shape ``got`` fit a model input of per-sample ``shape``: the same
    shape, or a time axis in front of it ([T, *shape])."""
    if len(got) == len(shape) + 1:
        got = got[1:]
    return len(got) == len(shape) and all(s is None or s == g for s, g in zip(shape, got))


def sample_steps(got: list[int] | tuple[int, ...], shape: list[int | None] | int) -> int | None:
    """T of time-varying samples of shape ``got`` for a model input of per-sample ``shape`` (or
    its rank), None for static samples."""
    rank = shape if isinstance(shape, int) else len(shape)
    return int(got[0]) if len(got) == rank + 1 else None


def ann_input(x: np.ndarray, rank: int, timesteps: int) -> np.ndarray:
    """What a reference ANN (of input ``rank`` axes) sees of a batch: the batch itself, or for
    time-varying input [N, T, ...] its mean over the first ``timesteps`` steps, the rate the
    SNN integrates."""
    return x[:, :timesteps].mean(1, dtype=np.float32) if x.ndim == rank + 1 else x


def run_timesteps(got: list[int] | tuple[int, ...], shape: list[int | None] | int | None,
                  asked: list[int] | None, default: list[int], where: str) -> list[int]:
    """The T values of a run on samples of shape ``got``: ``asked``, or by default the data's
    own length T for time-varying samples and ``default`` for static ones. Refuses (DataError,
    naming ``where`` and both lengths) a T longer than time-varying data."""
    from .ir import check_steps

    steps = sample_steps(got, shape) if shape is not None else None
    if asked is None:
        return [steps] if steps is not None else sorted(set(default))
    for t in asked:
        check_steps(t, steps, where)
    return sorted(set(asked))


def _check_shape(x: np.ndarray, shape: list[int | None], path: str, what: str) -> None:
    check_sample_shape(list(x.shape[1:]), shape, f"{what} file {path}")


def check_sample_shape(got: list[int], shape: list[int | None], where: str) -> None:
    """One DataError naming ``where`` when per-sample shape ``got`` does not fit the model's
    ``shape`` (see :func:`sample_fits`), with a hint when only the order of the dimensions differs."""
    if sample_fits(got, shape):
        return
    hint = None
    if sorted(got) == sorted(s for s in shape if s is not None) and len(got) == len(shape):
        hint = "The dimensions match in another order: check the layout (NCHW vs NHWC)."
    raise DataError(f"{where}: samples have shape {got}, the model expects "
                    f"{['?' if s is None else s for s in shape]}", hint=hint)
