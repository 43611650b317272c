"""Read and write the N-MNIST binary event format (Orchard et al., 2015; also N-Caltech101).

Each event is 40 bits, big-endian: byte 0 = x, byte 1 = y, bit 7 of byte 2 = polarity p,
the remaining 23 bits = timestamp [µs]. A record with y = 240 is not an event but a timestamp
overflow marker: every later timestamp grows by 2**13 µs (as in the dataset authors' reader).
The sensor is 34 x 34 pixels. (Which change p = 1 marks: see :mod:`.saccade`.)
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ..errors import DataError
from .records import EVENT_DTYPE, SensorSize, check_events

NMNIST_SENSOR: SensorSize = (34, 34)
"""N-MNIST's sensor (height, width): the 28 x 28 digits plus the saccades' motion."""

_RECORD_BYTES = 5
_OVERFLOW_Y = 240
_OVERFLOW_STEP_US = 2 ** 13
_MAX_T = 2 ** 23 - 1


def read_nmnist(path: str | os.PathLike, sensor_size: SensorSize = NMNIST_SENSOR) -> np.ndarray:
    """Events of one N-MNIST ``.bin`` recording as EVENT_DTYPE records, in time order.

    Raises a DataError naming the file if it is missing, truncated, or holds events outside
    ``sensor_size`` (height, width).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"event file not found: {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) % _RECORD_BYTES:
        raise DataError(f"{path}: {len(raw)} bytes is not a whole number of 5-byte N-MNIST events "
                        f"(truncated or not an N-MNIST .bin file)")
    rec = raw.reshape(-1, _RECORD_BYTES).astype(np.int64)
    y = rec[:, 1]
    t = ((rec[:, 2] & 0x7F) << 16) | (rec[:, 3] << 8) | rec[:, 4]
    overflow = y == _OVERFLOW_Y
    if overflow.any():
        t = t + _OVERFLOW_STEP_US * np.cumsum(overflow)
    keep = ~overflow
    events = np.empty(int(keep.sum()), EVENT_DTYPE)
    events["x"] = rec[keep, 0]
    events["y"] = y[keep]
    events["t"] = t[keep]
    events["p"] = rec[keep, 2] >> 7
    if np.any(np.diff(events["t"]) < 0):
        events = events[np.argsort(events["t"], kind="stable")]
    return check_events(events, sensor_size, source=path)


def write_nmnist(path: str | os.PathLike, events: np.ndarray) -> None:
    """Write events in the N-MNIST binary format, whole or not at all (a temporary file, then a rename).

    Refuses (DataError) coordinates above 255, y = 240 (the overflow marker) and timestamps
    beyond the format's 23 bits (8.39 s).
    """
    path = os.fspath(path)
    events = check_events(events, source=path)
    if len(events):
        if events["x"].max() > 255 or events["y"].max() > 255:
            raise DataError(f"{path}: N-MNIST stores x and y in 8 bits; got x up to {events['x'].max()}, "
                            f"y up to {events['y'].max()}")
        if np.any(events["y"] == _OVERFLOW_Y):
            raise DataError(f"{path}: y = {_OVERFLOW_Y} is N-MNIST's overflow marker and cannot be an event row")
        if events["t"].max() > _MAX_T:
            raise DataError(f"{path}: timestamp {events['t'].max()} µs exceeds N-MNIST's 23-bit field "
                            f"({_MAX_T} µs)")
    rec = np.empty((len(events), _RECORD_BYTES), np.uint8)
    t = events["t"]
    rec[:, 0] = events["x"]
    rec[:, 1] = events["y"]
    rec[:, 2] = (events["p"].astype(np.int64) << 7) | (t >> 16)
    rec[:, 3] = (t >> 8) & 0xFF
    rec[:, 4] = t & 0xFF
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(rec.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
