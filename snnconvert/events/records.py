"""Event records: one structured numpy dtype for every event stream, and its validation.

An event is ``(x, y, t, p)``: pixel column and row, time in microseconds, polarity bit (1 = ON,
a brightness increase, in the DVS convention; N-MNIST files use the bit the other way round for
their white digits, see :mod:`.saccade`). Sensor sizes are ``(height, width)`` throughout, the
order of the frames' last two axes.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError

EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
"""x, y: pixel coordinates; t: time [µs]; p: polarity bit (0 or 1)."""

SensorSize = tuple[int, int]


def make_events(x, y, t, p) -> np.ndarray:
    """Event records from four equal-length sequences (converted to EVENT_DTYPE's field types)."""
    x = np.asarray(x)
    n = len(x)
    for name, a in (("y", y), ("t", t), ("p", p)):
        if len(a) != n:
            raise ValueError(f"make_events: '{name}' has {len(a)} entries, 'x' has {n}")
    events = np.empty(n, EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = x, y, t, p
    return events


def check_events(events: np.ndarray, sensor_size: SensorSize | None = None, *,
                 source: str = "events", sorted_time: bool = False) -> np.ndarray:
    """Return ``events`` as EVENT_DTYPE records, or raise a DataError naming ``source`` and the fault.

    Checks: fields x, y, t, p are present and integer (p may be bool); coordinates are
    non-negative and inside ``sensor_size`` (height, width) when given; p is 0 or 1; t >= 0;
    with ``sorted_time``, t never decreases.
    """
    names = getattr(getattr(events, "dtype", None), "names", None)
    if names is None or not {"x", "y", "t", "p"} <= set(names):
        raise DataError(f"{source}: expected event records with fields x, y, t, p, got "
                        f"{'fields ' + ', '.join(names) if names else type(events).__name__}",
                        hint="Build them with snnconvert.events.make_events(x, y, t, p).")
    if events.ndim != 1:
        raise DataError(f"{source}: event records must be one-dimensional, got shape {list(events.shape)}")
    for name in "xytp":
        kind = events.dtype[name].kind
        if kind not in "iub":
            raise DataError(f"{source}: field '{name}' must be integer, got {events.dtype[name]}")
    if events.dtype != EVENT_DTYPE:
        for name in "xyt":
            if len(events) and events[name].min() < 0:
                raise DataError(f"{source}: field '{name}' holds negative values "
                                f"(min {events[name].min()})")
            if name != "t" and len(events) and events[name].max() > np.iinfo(EVENT_DTYPE[name]).max:
                raise DataError(f"{source}: field '{name}' = {events[name].max()} exceeds "
                                f"{np.iinfo(EVENT_DTYPE[name]).max}")
        converted = np.empty(len(events), EVENT_DTYPE)
        for name in "xytp":
            converted[name] = events[name]
        events = converted
    if len(events) == 0:
        return events
    if events["p"].max() > 1:
        bad = sorted(set(np.unique(events["p"]).tolist()) - {0, 1})
        raise DataError(f"{source}: polarity must be 0 (OFF) or 1 (ON), found {bad[:5]}")
    if events["t"].min() < 0:
        raise DataError(f"{source}: timestamps must be >= 0 µs, min is {events['t'].min()}")
    if sensor_size is not None:
        height, width = sensor_size
        for name, limit, axis in (("x", width, "width"), ("y", height, "height")):
            top = int(events[name].max())
            if top >= limit:
                raise DataError(f"{source}: {name} = {top} lies outside the {height}x{width} sensor "
                                f"({axis} {limit})", hint="Pass the recording's sensor size (height, width).")
    if sorted_time and np.any(np.diff(events["t"]) < 0):
        first = int(np.flatnonzero(np.diff(events["t"]) < 0)[0]) + 1
        raise DataError(f"{source}: timestamps decrease at event {first} "
                        f"({events['t'][first - 1]} -> {events['t'][first]} µs)",
                        hint="Sort the events by time: events[np.argsort(events['t'], kind='stable')].")
    return events
