"""Write time-varying datasets whose ``x`` is ``[N, T, 2, H, W]`` (axis 1 = time), with labels ``y``:
one ``.npz``, or a folder of ``x.npy`` + ``y.npy`` that readers memory-map.

Samples are binned one at a time and streamed to disk, so memory stays flat however many
samples there are; the output appears whole or not at all.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from typing import IO

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError, OptionError
from .frames import FitMode, fit_events, to_frames
from .nmnist import NMNIST_SENSOR, read_nmnist
from .records import SensorSize
from .saccade import SaccadeConfig, iter_saccades


def write_frames(path: str | os.PathLike, frames: Iterable[np.ndarray], n: int, frame_shape: Sequence[int],
                 y: np.ndarray | None = None, *, dtype: type = np.uint8, compress: bool = True,
                 progress: bool = True, desc: str = "writing frames") -> None:
    """Write ``n`` samples of shape ``frame_shape`` (from ``frames``) as ``x`` [n, *frame_shape] and
    labels ``y`` (int64): into one ``.npz`` when ``path`` ends so (deflated unless not ``compress``),
    otherwise into a new folder holding ``x.npy`` and ``y.npy``, which readers memory-map batch by
    batch. Refuses a sample count or shape that does not match, and an existing non-empty folder."""
    path = os.fspath(path)
    frame_shape = tuple(int(d) for d in frame_shape)
    dtype = np.dtype(dtype)
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
            raise DataError(f"{path}: labels must be {n} integers, got dtype {y.dtype} shape {list(y.shape)}")
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n, *frame_shape)}

    def write_x(f: IO[bytes]) -> None:
        np.lib.format.write_array_header_1_0(f, header)
        filled = 0
        for sample in tqdm(frames, total=n, desc=desc, unit="sample", disable=not progress, leave=False):
            if filled == n:
                raise DataError(f"{path}: more than the {n} announced samples")
            if tuple(sample.shape) != frame_shape:
                raise DataError(f"{path}: sample {filled} has shape {list(sample.shape)}, expected "
                                f"{list(frame_shape)}")
            f.write(np.ascontiguousarray(sample, dtype).tobytes())
            filled += 1
        if filled != n:
            raise DataError(f"{path}: got {filled} samples, {n} announced")

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if path.endswith(".npz"):
        _write_npz(path, folder, write_x, y, compress)
    else:
        _write_folder(path, folder, write_x, y)


def _write_npz(path: str, folder: str, write_x: Callable[[IO[bytes]], None], y: np.ndarray | None,
               compress: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED,
                             allowZip64=True) as zf:
            with zf.open("x.npy", "w", force_zip64=True) as f:
                write_x(f)
            if y is not None:
                with zf.open("y.npy", "w") as f:
                    np.lib.format.write_array(f, y.astype(np.int64), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_folder(path: str, folder: str, write_x: Callable[[IO[bytes]], None], y: np.ndarray | None) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise DataError(f"{path} already exists and is not an empty folder",
                        hint="Remove it or name a new folder (or a .npz file).")
    tmp = tempfile.mkdtemp(dir=folder, prefix=".tmp-frames-")
    try:
        with open(os.path.join(tmp, "x.npy"), "wb") as f:
            write_x(f)
        if y is not None:
            np.save(os.path.join(tmp, "y.npy"), y.astype(np.int64), allow_pickle=False)
        if os.path.isdir(path):
            os.rmdir(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _binner(sensor: SensorSize, timesteps: int, duration_us: int | None, size: SensorSize | None,
            fit: FitMode, dtype: type) -> Callable[[np.ndarray, str], np.ndarray]:
    def frames(events: np.ndarray, source: str) -> np.ndarray:
        t_stop = duration_us if duration_us is not None else (int(events["t"].max()) + 1 if len(events) else 1)
        grid = sensor
        if size is not None and tuple(size) != tuple(sensor):
            events, grid = fit_events(events, sensor, size, fit, source=source), tuple(size)
        return to_frames(events, grid, n_time_bins=timesteps, t_start=0, t_stop=t_stop, dtype=dtype,
                         source=source)
    return frames


def images_to_dataset(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None, timesteps: int,
                      *, config: SaccadeConfig = SaccadeConfig(), seed: int = 0, size: SensorSize | None = None,
                      fit: FitMode = "crop", dtype: type = np.uint8, compress: bool = True,
                      progress: bool = True) -> None:
    """Emulate saccade recordings of grey ``images`` [N, H, W] and write them (see :func:`write_frames`)
    binned into ``timesteps`` equal windows over the recording: ``x`` [N, T, 2, h, w] (``size``
    (h, w) crops or scales the sensor; default: the emulated sensor), ``y`` = ``labels``."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise DataError(f"images must be [N, H, W] grey images, got shape {list(images.shape)}")
    if timesteps <= 0:
        raise OptionError(f"timesteps must be positive, got {timesteps}")
    sensor = config.sensor_for(images.shape[1:])
    grid = tuple(size) if size is not None else sensor
    binner = _binner(sensor, timesteps, config.duration_us, size, fit, dtype)
    samples = (binner(ev, f"image {i}") for i, ev in
               enumerate(iter_saccades(images, config, seed, progress=progress)))
    write_frames(path, samples, len(images), (timesteps, 2, *grid), labels, dtype=dtype,
                 compress=compress, progress=False)


def event_files_to_dataset(path: str | os.PathLike, files: Sequence[str | os.PathLike],
                           labels: np.ndarray | None, timesteps: int, *,
                           reader: Callable[[str], np.ndarray] = read_nmnist,
                           sensor_size: SensorSize = NMNIST_SENSOR, duration_us: int | None = None,
                           size: SensorSize | None = None, fit: FitMode = "crop", dtype: type = np.uint8,
                           compress: bool = True, progress: bool = True) -> None:
    """Read event recordings (N-MNIST ``.bin`` by default) and write them (see :func:`write_frames`)
    binned into ``timesteps`` equal windows from 0 to ``duration_us`` (default: each recording's
    last event)."""
    if timesteps <= 0:
        raise OptionError(f"timesteps must be positive, got {timesteps}")
    grid = tuple(size) if size is not None else tuple(sensor_size)
    binner = _binner(tuple(sensor_size), timesteps, duration_us, size, fit, dtype)
    samples = (binner(reader(os.fspath(f)), os.fspath(f)) for f in
               tqdm(files, desc="binning event files", unit="file", disable=not progress, leave=False))
    write_frames(path, samples, len(files), (timesteps, 2, *grid), labels, dtype=dtype,
                 compress=compress, progress=False)
