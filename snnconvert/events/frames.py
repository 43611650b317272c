"""Bin event streams into frames ``[T, 2, H, W]`` (channel c counts the events with p = c).

Four ways to cut time, exactly one per call: ``n_time_bins`` equal windows over a span,
``time_window_us`` fixed windows, ``event_count`` events per frame, ``n_event_bins`` equal
shares of the events. :func:`fit_events` crops or scales a stream to a model's input size first.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import OptionError
from .records import SensorSize, check_events

FitMode = Literal["crop", "scale"]


def fit_events(events: np.ndarray, sensor_size: SensorSize, size: SensorSize,
               mode: FitMode = "crop", *, source: str = "events") -> np.ndarray:
    """Map a ``sensor_size`` stream onto a ``size`` (height, width) sensor.

    ``crop``: keep the centred ``size`` window (a larger ``size`` pads around the stream);
    events outside are dropped. ``scale``: pixel (y, x) goes to (y*h // H, x*w // W), so
    counts of merged pixels add up (``size`` must not exceed the sensor).
    """
    events = check_events(events, sensor_size, source=source)
    (big_h, big_w), (h, w) = sensor_size, size
    if h <= 0 or w <= 0:
        raise OptionError(f"output size must be positive, got {h}x{w}")
    out = events.copy()
    if mode == "crop":
        top, left = (big_h - h) // 2, (big_w - w) // 2
        y = events["y"].astype(np.int64) - top
        x = events["x"].astype(np.int64) - left
        keep = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        out = out[keep]
        out["y"], out["x"] = y[keep], x[keep]
        return out
    if mode == "scale":
        if h > big_h or w > big_w:
            raise OptionError(f"cannot scale a {big_h}x{big_w} sensor up to {h}x{w}",
                              hint="Use mode='crop' to pad around a smaller stream.")
        out["y"] = events["y"].astype(np.int64) * h // big_h
        out["x"] = events["x"].astype(np.int64) * w // big_w
        return out
    raise OptionError(f"unknown fit mode {mode!r}", hint="Use 'crop' or 'scale'.")


def to_frames(events: np.ndarray, sensor_size: SensorSize, *, n_time_bins: int | None = None,
              time_window_us: int | None = None, event_count: int | None = None,
              n_event_bins: int | None = None, t_start: int | None = None, t_stop: int | None = None,
              timesteps: int | None = None, dtype: type = np.float32,
              source: str = "events") -> np.ndarray:
    """Event counts per frame, polarity and pixel: an array ``[T, 2, H, W]`` of ``dtype``.

    Only events with ``t_start <= t < t_stop`` count (defaults: the first event's time, the
    last event's time + 1 µs). ``n_time_bins`` splits that span into T equal windows (give
    both ends to bin every sample of a dataset alike); ``time_window_us`` and ``event_count``
    make as many frames as the stream needs, the last one possibly partial, or exactly
    ``timesteps`` frames (empty frames appended, later events dropped). ``n_event_bins``
    splits the events into T consecutive groups whose sizes differ by at most one.
    uint8 counts saturate at 255.
    """
    modes = {"n_time_bins": n_time_bins, "time_window_us": time_window_us,
             "event_count": event_count, "n_event_bins": n_event_bins}
    chosen = [name for name, value in modes.items() if value is not None]
    if len(chosen) != 1:
        raise OptionError(f"give exactly one of {', '.join(modes)}; got {', '.join(chosen) or 'none'}")
    mode = chosen[0]
    if int(modes[mode]) <= 0:
        raise OptionError(f"{mode} must be positive, got {modes[mode]}")
    if timesteps is not None and mode in ("n_time_bins", "n_event_bins"):
        raise OptionError(f"timesteps goes with time_window_us or event_count; {mode} already fixes T")
    if timesteps is not None and timesteps <= 0:
        raise OptionError(f"timesteps must be positive, got {timesteps}")
    events = check_events(events, sensor_size, source=source,
                          sorted_time=mode in ("event_count", "n_event_bins"))
    t = events["t"]
    t0 = int(t_start if t_start is not None else (t.min() if len(t) else 0))
    t1 = int(t_stop if t_stop is not None else (t.max() + 1 if len(t) else t0))
    if t1 < t0 or (mode == "n_time_bins" and t1 == t0 and t_stop is not None):
        raise OptionError(f"empty time span: t_start {t0} µs, t_stop {t1} µs")
    inside = (t >= t0) & (t < t1)
    if not inside.all():
        events, t = events[inside], t[inside]
    n = len(events)
    if mode == "n_time_bins":
        frames = n_time_bins
        index = (t - t0) * n_time_bins // max(t1 - t0, 1)
    elif mode == "time_window_us":
        frames = -(-(t1 - t0) // time_window_us)
        index = (t - t0) // time_window_us
    elif mode == "event_count":
        frames = -(-n // event_count)
        index = np.arange(n, dtype=np.int64) // event_count
    else:
        frames = n_event_bins
        index = np.arange(n, dtype=np.int64) * n_event_bins // max(n, 1)
    if timesteps is not None:
        frames = timesteps
        keep = index < timesteps
        events, index = events[keep], index[keep]
    height, width = sensor_size
    flat = ((index * 2 + events["p"]) * height + events["y"]) * width + events["x"]
    counts = np.bincount(flat, minlength=frames * 2 * height * width)
    counts = counts.reshape(frames, 2, height, width)
    if np.dtype(dtype) == np.uint8:
        return np.minimum(counts, 255).astype(np.uint8)
    return counts.astype(dtype)


def accumulate_frames(x: np.ndarray, steps: int | None = None, *, block: int = 1024) -> np.ndarray:
    """The static input an ANN is trained on for a network that will run on the frames ``x``
    ``[N, T, ...]`` (axis 1 = time): the mean frame over the first ``steps`` steps (default all),
    float32 ``[N, ...]``. This is the rate a converted network integrates from ``x`` one frame per
    step (the IR's ``frames`` encoding), so the ANN's activations are the SNN's rate limit
    (a sum over time would need the first layer scaled by 1/T). Reads ``x`` (e.g. a memory map)
    ``block`` samples at a time."""
    if x.ndim < 3:
        raise OptionError(f"frames must be [N, T, ...] with a time axis, got shape {list(x.shape)}")
    total = x.shape[1]
    steps = total if steps is None else int(steps)
    if not 1 <= steps <= total:
        raise OptionError(f"steps must be in 1..{total} (the frames' T), got {steps}")
    out = np.empty((x.shape[0], *x.shape[2:]), np.float32)
    for i in range(0, len(x), block):
        out[i:i + block] = x[i:i + block, :steps].mean(1, dtype=np.float32)
    return out
