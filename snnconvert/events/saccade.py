"""Emulate DVS recordings of static images, the way N-MNIST was recorded (Orchard et al., 2015).

The image moves across the sensor in three saccades along a triangle (100 ms each, velocity
rising and falling like a pan-tilt unit's). Every pixel keeps a reference log intensity; when
the log intensity it sees moves one contrast threshold away, it emits an event at the
interpolated crossing time and its reference moves by one threshold. After an event the pixel
is held in reset for the refractory period: changes during it are not seen (the reference
follows the input), as in a DVS pixel. Optional per-pixel threshold mismatch and uniform noise
events are drawn from a seeded generator.

Defaults are fitted to the one real recording in the shared folder (4,325 events): the path
(down-right, up-right, back left; sides of ~5 px) to the motion of its event centroid per
saccade, the threshold to a mean of ~4,200 events per MNIST test image. That recording also
fixes the polarity: in all three saccades its p = 1 events lie on the side of the bright
strokes that trails the motion (cosine -0.99 between the motion and the p=1-minus-p=0 centroid
offset), i.e. where a white-on-black digit gets darker; the physical DVS convention (p = 1 for
brighter) gives +0.99. Whether the display showed dark digits or the sensor's bit means OFF,
``polarity="nmnist"`` (default) reproduces the files, ``"dvs"`` the physical convention.

The sub-pixel shift interpolates the log image bilinearly (one log per pixel and image, not per
step), which keeps the emulator at a few milliseconds per MNIST image on one core.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError, OptionError
from .records import EVENT_DTYPE, SensorSize

NMNIST_PATH: tuple[tuple[float, float], ...] = ((0.0, 0.0), (2.0, 4.25), (5.0, 0.0))


@dataclass(frozen=True)
class SaccadeConfig:
    """How an image is moved and sensed. Offsets are (dx, dy) in pixels, times in µs."""

    vertices: tuple[tuple[float, float], ...] = NMNIST_PATH
    """Image offsets the saccades visit in order, returning to the first (a triangle)."""
    saccade_us: int = 100_000
    sensor_size: SensorSize | None = None
    """(height, width); default: the image plus a 6-pixel margin (28x28 -> N-MNIST's 34x34)."""
    threshold: float = 0.28
    """Contrast threshold in log intensity, for rises and falls alike."""
    threshold_sigma: float = 0.0
    """Per-pixel threshold mismatch, relative standard deviation (seeded)."""
    refractory_us: int = 1000
    """How long a pixel stays blind after an event."""
    noise_hz: float = 0.0
    """Noise events per pixel per second, uniform in time (seeded). The real recording holds ~150
    events at pixels that fire at most twice (~0.4 Hz per pixel), 80 % of them with p = 1."""
    noise_p1: float = 0.5
    """Share of the noise events with p = 1."""
    log_eps: float = 0.1
    """Intensity offset inside the log: log(I + eps) for I in [0, 1] (the display's black level)."""
    background: float = 0.0
    """Intensity [0, 1] the sensor sees around the image."""
    blur_sigma: float = 0.5
    """Gaussian blur [px] of the image before sensing (the optics and display of a real recording)."""
    step_us: int = 1000
    """Simulation step; event times are interpolated within it."""
    polarity: Literal["nmnist", "dvs"] = "nmnist"
    """Which change p = 1 marks: "dvs" a rise in log intensity (a DVS ON event); "nmnist" a fall,
    the relation N-MNIST's files show (module docstring), so emulated and real data agree."""

    @property
    def duration_us(self) -> int:
        return self.saccade_us * len(self.vertices)

    def sensor_for(self, image_shape: tuple[int, int]) -> SensorSize:
        if self.sensor_size is not None:
            return self.sensor_size
        return image_shape[0] + 6, image_shape[1] + 6

    def check(self) -> None:
        """Raise an OptionError naming the first invalid setting."""
        if len(self.vertices) < 2:
            raise OptionError(f"the saccade path needs at least 2 vertices, got {len(self.vertices)}")
        for name in ("saccade_us", "step_us"):
            if getattr(self, name) <= 0:
                raise OptionError(f"{name} must be positive, got {getattr(self, name)}")
        if self.saccade_us % self.step_us:
            raise OptionError(f"saccade_us ({self.saccade_us}) must be a multiple of step_us ({self.step_us})")
        if self.threshold <= 0:
            raise OptionError(f"threshold must be positive, got {self.threshold}")
        if self.log_eps <= 0:
            raise OptionError(f"log_eps must be positive, got {self.log_eps}")
        for name in ("threshold_sigma", "refractory_us", "noise_hz", "blur_sigma"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.polarity not in ("nmnist", "dvs"):
            raise OptionError(f"polarity must be 'nmnist' or 'dvs', got {self.polarity!r}")
        if not 0.0 <= self.noise_p1 <= 1.0:
            raise OptionError(f"noise_p1 must lie in [0, 1], got {self.noise_p1}")
        if not 0.0 <= self.background <= 1.0:
            raise OptionError(f"background must lie in [0, 1], got {self.background}")


def saccade_offsets(config: SaccadeConfig, image_shape: tuple[int, int]) -> np.ndarray:
    """Image top-left position on the sensor (x, y) at every step: an array [steps + 1, 2]."""
    config.check()
    verts = np.asarray(config.vertices, np.float64)
    n = config.saccade_us // config.step_us
    tau = np.arange(n) / n
    progress = (1.0 - np.cos(np.pi * tau)) / 2.0
    legs = [verts[i] + progress[:, None] * (verts[(i + 1) % len(verts)] - verts[i]) for i in range(len(verts))]
    path = np.concatenate(legs + [verts[:1]])
    height, width = config.sensor_for(image_shape)
    lo, hi = verts.min(0), verts.max(0)
    margin = np.array([width - image_shape[1], height - image_shape[0]], np.float64)
    base = (margin - (hi - lo)) / 2.0 - lo
    return path + base


@numba.njit(cache=True, nogil=True)
def _emulate(canvas, margin, height, width, offsets, step_us, thr_on, thr_off, refractory,
             out_x, out_y, out_t, out_p):  # pragma: no cover - compiled
    npix = height * width
    prev = np.empty(npix)
    ref = np.empty(npix)
    last = np.full(npix, -1e18)
    cap = out_x.shape[0]
    count = 0
    for k in range(offsets.shape[0]):
        ox = offsets[k, 0]
        oy = offsets[k, 1]
        ix = math.floor(ox)
        iy = math.floor(oy)
        fx = ox - ix
        fy = oy - iy
        ta = (k - 1) * step_us
        tb = k * step_us
        for yy in range(height):
            r0 = yy - iy - 1 + margin
            for xx in range(width):
                c0 = xx - ix - 1 + margin
                top = fx * canvas[r0, c0] + (1.0 - fx) * canvas[r0, c0 + 1]
                bottom = fx * canvas[r0 + 1, c0] + (1.0 - fx) * canvas[r0 + 1, c0 + 1]
                cur = fy * top + (1.0 - fy) * bottom
                i = yy * width + xx
                if k == 0:
                    prev[i] = cur
                    ref[i] = cur
                    continue
                lp = prev[i]
                prev[i] = cur
                ts = ta
                ls = lp
                reference = ref[i]
                free = last[i] + refractory
                if free > ta:
                    if free >= tb:
                        ref[i] = cur
                        continue
                    ls = lp + (cur - lp) * (free - ta) / step_us
                    ts = free
                    reference = ls
                while True:
                    if cur - reference >= thr_on[i]:
                        level = reference + thr_on[i]
                        polarity = 1
                    elif reference - cur >= thr_off[i]:
                        level = reference - thr_off[i]
                        polarity = 0
                    else:
                        break
                    te = ts + (level - ls) / (cur - ls) * (tb - ts)
                    if count >= cap:
                        return -1
                    out_x[count] = xx
                    out_y[count] = yy
                    out_t[count] = math.floor(te)
                    out_p[count] = polarity
                    count += 1
                    last[i] = te
                    reference = level
                    if refractory > 0:
                        free = te + refractory
                        if free >= tb:
                            reference = cur
                            break
                        ls = lp + (cur - lp) * (free - ta) / step_us
                        ts = free
                        reference = ls
                    else:
                        ls = level
                        ts = te
                ref[i] = reference
    return count


def _intensity(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise DataError(f"the saccade emulator takes one grey image [H, W], got shape {list(image.shape)}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype.kind not in "fiu":
        raise DataError(f"images must be uint8 or float in [0, 1], got dtype {image.dtype}")
    image = image.astype(np.float64)
    if image.size and (not np.all(np.isfinite(image)) or image.min() < 0.0 or image.max() > 1.0):
        raise DataError("float images must hold intensities in [0, 1]",
                        hint="Pass uint8 images, or divide by 255.")
    return image


def emulate_saccades(image: np.ndarray, config: SaccadeConfig = SaccadeConfig(),
                     rng: np.random.Generator | int | Sequence[int] | None = 0) -> np.ndarray:
    """DVS events (EVENT_DTYPE, time order) of a grey image (uint8, or float in [0, 1]) moved in saccades.

    ``rng`` seeds the threshold mismatch and the noise events; without either the result is
    deterministic.
    """
    intensity = _intensity(image)
    offsets = saccade_offsets(config, intensity.shape)
    height, width = config.sensor_for(intensity.shape)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    npix = height * width
    thr_on = np.full(npix, config.threshold)
    thr_off = np.full(npix, config.threshold)
    if config.threshold_sigma > 0:
        floor = 0.05 * config.threshold
        thr_on = np.maximum(thr_on * (1 + config.threshold_sigma * rng.standard_normal(npix)), floor)
        thr_off = np.maximum(thr_off * (1 + config.threshold_sigma * rng.standard_normal(npix)), floor)
    if config.blur_sigma > 0:
        intensity = _blur(intensity, config.blur_sigma, config.background)
    margin = int(np.ceil(np.abs(offsets).max())) + max(height, width) + 2
    canvas = np.pad(np.log(intensity + config.log_eps), margin,
                    constant_values=math.log(config.background + config.log_eps))
    cap = max(4096, 8 * npix)
    while True:
        buf = (np.empty(cap, np.uint16), np.empty(cap, np.uint16), np.empty(cap, np.int64),
               np.empty(cap, np.uint8))
        n = _emulate(canvas, margin, height, width, offsets, float(config.step_us), thr_on, thr_off,
                     float(config.refractory_us), *buf)
        if n >= 0:
            break
        cap *= 4
    events = np.empty(n, EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = (b[:n] for b in buf)
    if config.polarity == "nmnist":
        events["p"] ^= 1
    if config.noise_hz > 0:
        events = np.concatenate([events, _noise(config, height, width, rng)])
    return events[np.argsort(events["t"], kind="stable")]


def _blur(image: np.ndarray, sigma: float, background: float) -> np.ndarray:
    """Separable Gaussian blur (radius 3 sigma), the surround taken as ``background``."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, radius, constant_values=background)
    h, w = image.shape
    rows = sum(tap * padded[:, j:j + w] for j, tap in enumerate(taps))
    return sum(tap * rows[i:i + h, :] for i, tap in enumerate(taps))


def _noise(config: SaccadeConfig, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    n = rng.poisson(config.noise_hz * height * width * config.duration_us * 1e-6)
    noise = np.empty(n, EVENT_DTYPE)
    noise["x"] = rng.integers(0, width, n)
    noise["y"] = rng.integers(0, height, n)
    noise["t"] = rng.integers(0, config.duration_us, n)
    noise["p"] = rng.random(n) < config.noise_p1
    return noise


def iter_saccades(images: np.ndarray, config: SaccadeConfig = SaccadeConfig(), seed: int = 0, *,
                  progress: bool = True, desc: str = "emulating saccades") -> Iterator[np.ndarray]:
    """Events of every image in turn; image i draws from a generator seeded with (seed, i), so a
    sample's events do not depend on which other images are emulated with it."""
    config.check()
    for i in tqdm(range(len(images)), desc=desc, unit="img", disable=not progress, leave=False):
        yield emulate_saccades(images[i], config, np.random.default_rng((seed, i)))
