"""Event data layer: records, the N-MNIST format, binning, the saccade emulator, dataset writers."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from snnconvert.data import load_npz
from snnconvert.errors import DataError, OptionError
from snnconvert.datasets import open_data
from snnconvert.events import (EVENT_DTYPE, NMNIST_SENSOR, SaccadeConfig, check_events, emulate_saccades,
                               event_files_to_dataset, fit_events, images_to_dataset, iter_saccades,
                               make_events, read_nmnist, saccade_offsets, to_frames, write_frames, write_nmnist)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny_nmnist.bin"
# (x, y, p, t) of tests/fixtures/tiny_nmnist.bin, packed by hand: byte0 x, byte1 y, byte2 = p<<7 | t>>16, t mid, t low.
TINY_EVENTS = [(3, 4, 1, 100), (33, 0, 0, 65280), (0, 33, 1, 1_000_000), (17, 9, 0, 1_000_000),
               (17, 9, 1, 8_388_607)]
CLEAN = SaccadeConfig(blur_sigma=0.0, polarity="dvs")  # p = 1: brighter


def _events(rows):
    x, y, p, t = zip(*rows) if rows else ((), (), (), ())
    return make_events(x, y, t, p)


def _record(x, y, p, t) -> bytes:
    return bytes([x, y, (p << 7) | (t >> 16), (t >> 8) & 0xFF, t & 0xFF])


# --- records -------------------------------------------------------------------------------------------------

def test_check_events_names_the_source_and_the_fault():
    with pytest.raises(DataError, match=r"^rec.bin: x = 40 lies outside the 34x34 sensor \(width 34\)"):
        check_events(_events([(40, 1, 0, 5)]), NMNIST_SENSOR, source="rec.bin")
    with pytest.raises(DataError, match=r"rec.bin: polarity must be 0 \(OFF\) or 1 \(ON\), found \[2\]"):
        check_events(_events([(1, 1, 2, 5)]), source="rec.bin")
    with pytest.raises(DataError, match=r"rec.bin: timestamps decrease at event 1 \(9 -> 5 µs\)"):
        check_events(_events([(1, 1, 0, 9), (1, 1, 0, 5)]), source="rec.bin", sorted_time=True)
    with pytest.raises(DataError, match=r"rec.bin: expected event records with fields x, y, t, p"):
        check_events(np.zeros((3, 4)), source="rec.bin")
    signed = np.array([(-1, 0, 0, 0)], dtype=[("x", "i4"), ("y", "i4"), ("t", "i8"), ("p", "?")])
    with pytest.raises(DataError, match=r"field 'x' holds negative values"):
        check_events(signed)


def test_check_events_converts_other_integer_layouts():
    tonic_like = np.array([(3, 4, 7, True)], dtype=[("x", "i2"), ("y", "i2"), ("t", "i8"), ("p", "?")])
    ev = check_events(tonic_like, (10, 10))
    assert ev.dtype == EVENT_DTYPE and ev.tolist() == [(3, 4, 7, 1)]


# --- N-MNIST format ------------------------------------------------------------------------------------------

def test_read_nmnist_decodes_the_shipped_file_exactly():
    ev = read_nmnist(TINY)
    assert ev.dtype == EVENT_DTYPE
    assert [(int(e["x"]), int(e["y"]), int(e["p"]), int(e["t"])) for e in ev] == TINY_EVENTS
    assert TINY.read_bytes() == b"".join(_record(*e) for e in TINY_EVENTS)


def test_write_nmnist_round_trips_and_reproduces_the_bytes(tmp_path):
    out = tmp_path / "copy.bin"
    write_nmnist(out, read_nmnist(TINY))
    assert out.read_bytes() == TINY.read_bytes()
    rng = np.random.default_rng(1)
    ev = make_events(rng.integers(0, 34, 500), rng.integers(0, 34, 500), np.sort(rng.integers(0, 2**23, 500)),
                     rng.integers(0, 2, 500))
    write_nmnist(out, ev)
    assert os.path.getsize(out) == 5 * 500
    np.testing.assert_array_equal(read_nmnist(out), ev)


def test_read_nmnist_applies_overflow_markers(tmp_path):
    path = tmp_path / "overflow.bin"
    path.write_bytes(_record(1, 2, 1, 500) + _record(0, 240, 0, 0) + _record(3, 4, 0, 200)
                     + _record(0, 240, 0, 0) + _record(5, 6, 1, 100))
    ev = read_nmnist(path)
    assert ev["t"].tolist() == [500, 200 + 8192, 100 + 2 * 8192]
    assert ev["y"].tolist() == [2, 4, 6]


def test_read_nmnist_refuses_bad_files_by_name(tmp_path):
    with pytest.raises(DataError, match=r"event file not found: .*missing.bin"):
        read_nmnist(tmp_path / "missing.bin")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(TINY.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"cut.bin: 23 bytes is not a whole number of 5-byte N-MNIST events"):
        read_nmnist(cut)
    wide = tmp_path / "wide.bin"
    wide.write_bytes(_record(50, 2, 1, 10))
    with pytest.raises(DataError, match=r"wide.bin: x = 50 lies outside the 34x34 sensor"):
        read_nmnist(wide)
    assert read_nmnist(wide, sensor_size=(64, 64))["x"].tolist() == [50]


def test_write_nmnist_refuses_what_the_format_cannot_hold(tmp_path):
    out = tmp_path / "out.bin"
    with pytest.raises(DataError, match=r"exceeds N-MNIST's 23-bit field"):
        write_nmnist(out, _events([(1, 1, 0, 2**23)]))
    with pytest.raises(DataError, match=r"stores x and y in 8 bits"):
        write_nmnist(out, _events([(300, 1, 0, 5)]))
    assert not out.exists() and os.listdir(tmp_path) == []


# --- binning -------------------------------------------------------------------------------------------------

def _stream():
    # (x, y, p, t) on a 3 (high) x 4 (wide) sensor
    return _events([(0, 0, 1, 0), (0, 0, 1, 5), (3, 2, 0, 9), (1, 1, 1, 10), (1, 1, 0, 19), (2, 0, 1, 25)])


def test_to_frames_by_time_bins_counts_exactly():
    f = to_frames(_stream(), (3, 4), n_time_bins=3, t_start=0, t_stop=30)
    assert f.shape == (3, 2, 3, 4) and f.dtype == np.float32
    assert f[0, 1, 0, 0] == 2 and f[0, 0, 2, 3] == 1 and f[0].sum() == 3
    assert f[1, 1, 1, 1] == 1 and f[1, 0, 1, 1] == 1 and f[1].sum() == 2
    assert f[2, 1, 0, 2] == 1 and f[2].sum() == 1
    # default span: first event .. last event + 1 µs = [0, 26): windows of 26/2 = 13 µs
    g = to_frames(_stream(), (3, 4), n_time_bins=2)
    assert g[:, :, :, :].sum(axis=(1, 2, 3)).tolist() == [4, 2]


def test_to_frames_by_time_window_pads_and_truncates():
    f = to_frames(_stream(), (3, 4), time_window_us=10, t_start=0)
    assert f.shape[0] == 3 and f.sum(axis=(1, 2, 3)).tolist() == [3, 2, 1]
    padded = to_frames(_stream(), (3, 4), time_window_us=10, t_start=0, timesteps=5, dtype=np.uint8)
    assert padded.dtype == np.uint8 and padded.sum(axis=(1, 2, 3)).tolist() == [3, 2, 1, 0, 0]
    cut = to_frames(_stream(), (3, 4), time_window_us=10, t_start=0, timesteps=2)
    assert cut.sum(axis=(1, 2, 3)).tolist() == [3, 2]
    window = to_frames(_stream(), (3, 4), time_window_us=10, t_start=5, t_stop=20)
    assert window.sum(axis=(1, 2, 3)).tolist() == [3, 1]


def test_to_frames_by_event_count_and_event_bins():
    f = to_frames(_stream(), (3, 4), event_count=4)
    assert f.sum(axis=(1, 2, 3)).tolist() == [4, 2]
    assert f[1, 0, 1, 1] == 1 and f[1, 1, 0, 2] == 1
    g = to_frames(_stream(), (3, 4), n_event_bins=4)
    assert g.sum(axis=(1, 2, 3)).tolist() == [2, 1, 2, 1]
    shuffled = _stream()[[1, 0, 2, 3, 4, 5]]
    with pytest.raises(DataError, match="timestamps decrease at event 1"):
        to_frames(shuffled, (3, 4), event_count=2)
    assert to_frames(shuffled, (3, 4), n_time_bins=2).sum() == 6  # time bins need no order


def test_to_frames_saturates_uint8_and_refuses_bad_options():
    many = _events([(0, 0, 1, t) for t in range(300)])
    assert to_frames(many, (1, 1), n_time_bins=1, dtype=np.uint8)[0, 1, 0, 0] == 255
    assert to_frames(many, (1, 1), n_time_bins=1)[0, 1, 0, 0] == 300
    with pytest.raises(OptionError, match="give exactly one of"):
        to_frames(_stream(), (3, 4), n_time_bins=2, event_count=3)
    with pytest.raises(OptionError, match="n_time_bins already fixes T"):
        to_frames(_stream(), (3, 4), n_time_bins=2, timesteps=4)
    with pytest.raises(DataError, match="events: x = 3 lies outside the 2x3 sensor"):
        to_frames(_stream(), (2, 3), n_time_bins=2)


def test_fit_events_crops_centred_and_scales_by_merging():
    ev = _events([(0, 0, 1, 0), (3, 3, 1, 1), (5, 5, 0, 2), (2, 4, 1, 3)])
    crop = fit_events(ev, (6, 6), (2, 2), "crop")  # keeps rows/cols 2..3
    assert [(int(e["x"]), int(e["y"])) for e in crop] == [(1, 1)]
    pad = fit_events(ev, (6, 6), (8, 8), "crop")
    assert pad["x"].tolist() == [1, 4, 6, 3]
    scaled = fit_events(ev, (6, 6), (3, 3), "scale")
    assert [(int(e["x"]), int(e["y"])) for e in scaled] == [(0, 0), (1, 1), (2, 2), (1, 2)]
    f = to_frames(scaled, (3, 3), n_time_bins=1)
    assert f.sum() == 4
    with pytest.raises(OptionError, match="cannot scale a 6x6 sensor up to 8x8"):
        fit_events(ev, (6, 6), (8, 8), "scale")


# --- saccade emulator ----------------------------------------------------------------------------------------

def _square(size=20, lo=6, hi=14):
    img = np.zeros((size, size), np.uint8)
    img[lo:hi, lo:hi] = 255
    return img


def _sampled(img, config):
    """Log intensity every sensor pixel sees at every step (numpy bilinear reference)."""
    h, w = img.shape
    height, width = config.sensor_for(img.shape)
    logimg = np.log(img / 255.0 + config.log_eps)
    pad = 40
    canvas = np.pad(logimg, pad, constant_values=np.log(config.log_eps))
    out = []
    for ox, oy in saccade_offsets(config, img.shape):
        yy, xx = np.mgrid[0:height, 0:width]
        v, u = yy - oy + pad, xx - ox + pad
        r, c = np.floor(v).astype(int), np.floor(u).astype(int)
        a, b = v - r, u - c
        out.append((1 - a) * ((1 - b) * canvas[r, c] + b * canvas[r, c + 1])
                   + a * ((1 - b) * canvas[r + 1, c] + b * canvas[r + 1, c + 1]))
    return np.stack(out)


def test_emulator_fires_at_edges_only():
    img = _square()
    ev = emulate_saccades(img, CLEAN)
    assert ev.dtype == EVENT_DTYPE and len(ev) > 100
    assert ev["t"].min() >= 0 and ev["t"].max() < CLEAN.duration_us
    assert np.all(np.diff(ev["t"]) >= 0)
    seen = _sampled(img, CLEAN)
    swing = seen.max(0) - seen.min(0)
    fired = np.zeros(swing.shape, bool)
    fired[ev["y"], ev["x"]] = True
    assert not fired[swing < CLEAN.threshold].any()  # the interior and the far background stay silent
    assert fired[swing >= 2 * CLEAN.threshold].all()  # every pixel an edge sweeps over fires
    height, width = CLEAN.sensor_for(img.shape)
    assert (height, width) == (26, 26)
    assert not fired[12:14, 12:14].any() and not fired[:3, :3].any()


def test_emulator_polarity_follows_motion_direction():
    img = np.zeros((20, 20), np.uint8)
    img[:, 6:14] = 255  # a bright vertical bar
    config = replace(CLEAN, vertices=((0.0, 0.0), (3.0, 0.0)))  # right, then back left
    ev = emulate_saccades(img, config)
    base = saccade_offsets(config, img.shape)[0, 0]
    left = (ev["x"] >= base + 5) & (ev["x"] <= base + 9)
    right = (ev["x"] >= base + 13) & (ev["x"] <= base + 17)
    first = ev["t"] < config.saccade_us
    assert left.sum() + right.sum() == len(ev)
    assert np.all(ev["p"][first & right] == 1) and np.all(ev["p"][first & left] == 0)
    assert np.all(ev["p"][~first & right] == 0) and np.all(ev["p"][~first & left] == 1)
    assert (first & right).sum() > 20 and (~first & left).sum() > 20


def _min_gap_per_pixel(ev):
    pixel = ev["y"].astype(np.int64) * 1000 + ev["x"]
    order = np.lexsort((ev["t"], pixel))
    same = np.diff(pixel[order]) == 0
    return np.diff(ev["t"][order])[same].min()


def test_emulator_respects_the_refractory_period():
    img = _square()
    busy = replace(CLEAN, threshold=0.05, refractory_us=0)
    assert _min_gap_per_pixel(emulate_saccades(img, busy)) < 1000
    held = replace(busy, refractory_us=5000)
    ev = emulate_saccades(img, held)
    assert _min_gap_per_pixel(ev) >= 5000
    assert 0 < len(ev) < len(emulate_saccades(img, busy))


def test_emulator_is_seeded():
    img = _square()
    noisy = replace(CLEAN, noise_hz=5.0, threshold_sigma=0.1)
    a, b, c = (emulate_saccades(img, noisy, s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)
    np.testing.assert_array_equal(emulate_saccades(img, CLEAN, 1), emulate_saccades(img, CLEAN, 2))
    quiet = emulate_saccades(np.zeros((20, 20), np.uint8), replace(CLEAN, noise_hz=20.0), 0)
    expected = 20.0 * 26 * 26 * CLEAN.duration_us * 1e-6
    assert abs(len(quiet) - expected) < 5 * np.sqrt(expected)  # noise only, Poisson count
    assert abs(quiet["p"].mean() - 0.5) < 0.1
    biased = emulate_saccades(np.zeros((20, 20), np.uint8), replace(CLEAN, noise_hz=20.0, noise_p1=0.9), 0)
    assert abs(biased["p"].mean() - 0.9) < 0.05
    first, second = list(iter_saccades(np.stack([img, img]), noisy, seed=7, progress=False))
    np.testing.assert_array_equal(first, emulate_saccades(img, noisy, np.random.default_rng((7, 0))))
    np.testing.assert_array_equal(second, emulate_saccades(img, noisy, np.random.default_rng((7, 1))))
    assert not np.array_equal(first, second)  # each image draws its own noise


def test_nmnist_polarity_is_the_dvs_polarity_flipped():
    img = _square()
    dvs = emulate_saccades(img, CLEAN)
    nmnist = emulate_saccades(img, replace(CLEAN, polarity="nmnist"))
    np.testing.assert_array_equal(nmnist["p"], 1 - dvs["p"])
    for name in "xyt":
        np.testing.assert_array_equal(nmnist[name], dvs[name])
    assert SaccadeConfig().polarity == "nmnist"
    with pytest.raises(OptionError, match="polarity must be 'nmnist' or 'dvs', got 'on'"):
        emulate_saccades(img, replace(CLEAN, polarity="on"))


def test_emulator_accepts_float_images_and_refuses_bad_input():
    img = _square()
    np.testing.assert_array_equal(emulate_saccades(img, CLEAN), emulate_saccades(img / 255.0, CLEAN))
    with pytest.raises(DataError, match=r"float images must hold intensities in \[0, 1\]"):
        emulate_saccades(img.astype(np.float32), CLEAN)
    with pytest.raises(DataError, match=r"one grey image \[H, W\], got shape \[20, 20, 3\]"):
        emulate_saccades(np.zeros((20, 20, 3), np.uint8), CLEAN)
    with pytest.raises(OptionError, match=r"saccade_us \(100000\) must be a multiple of step_us \(300\)"):
        emulate_saccades(img, replace(CLEAN, step_us=300))


def test_emulator_default_is_nmnist_shaped():
    ev = emulate_saccades(_square(28, 8, 20))
    assert SaccadeConfig().sensor_for((28, 28)) == NMNIST_SENSOR
    assert SaccadeConfig().duration_us == 300_000
    assert ev["x"].max() < 34 and ev["y"].max() < 34
    per_saccade = np.bincount(ev["t"] // 100_000, minlength=3)
    assert per_saccade.min() > 0.2 * per_saccade.sum()  # three saccades, each one sensed


# --- datasets ------------------------------------------------------------------------------------------------

def test_images_to_dataset_writes_time_major_frames(tmp_path):
    imgs = np.stack([_square(28, 8, 20), _square(28, 4, 12)])
    out = tmp_path / "emu.npz"
    images_to_dataset(out, imgs, np.array([3, 1]), timesteps=6, progress=False)
    d = load_npz(out, labels=True)
    assert d.x.shape == (2, 6, 2, 34, 34) and d.y.tolist() == [3, 1]
    with np.load(out) as raw:
        assert raw["x"].dtype == np.uint8
        for i, img in enumerate(imgs):
            ev = emulate_saccades(img, SaccadeConfig(), np.random.default_rng((0, i)))
            expect = to_frames(ev, NMNIST_SENSOR, n_time_bins=6, t_start=0, t_stop=300_000, dtype=np.uint8)
            np.testing.assert_array_equal(raw["x"][i], expect)
    small = tmp_path / "emu28.npz"
    images_to_dataset(small, imgs[:1], None, timesteps=3, size=(28, 28), dtype=np.float32,
                      progress=False)
    with np.load(small) as raw:
        assert raw["x"].shape == (1, 3, 2, 28, 28) and raw["x"].dtype == np.float32 and "y" not in raw.files
    assert sorted(os.listdir(tmp_path)) == ["emu.npz", "emu28.npz"]


def test_event_files_to_dataset_bins_recordings(tmp_path):
    second = tmp_path / "b.bin"
    write_nmnist(second, _events([(1, 2, 1, 10), (1, 2, 0, 400_000)]))
    out = tmp_path / "ev.npz"
    event_files_to_dataset(out, [TINY, second], np.array([0, 1]), timesteps=2, duration_us=2**23,
                           progress=False)
    with np.load(out) as raw:
        x = raw["x"]
    assert x.shape == (2, 2, 2, 34, 34)
    assert x[0].sum(axis=(1, 2, 3)).tolist() == [4, 1] and x[0, 1, 1, 9, 17] == 1
    assert x[1].sum() == 2 and x[1, 0, 1, 2, 1] == 1 and x[1, 0, 0, 2, 1] == 1


def test_write_frames_is_whole_or_nothing(tmp_path):
    out = tmp_path / "x.npz"
    frames = (np.ones((2, 2, 3, 3), np.uint8) for _ in range(3))
    with pytest.raises(DataError, match=r"x.npz: got 3 samples, 4 announced"):
        write_frames(out, frames, 4, (2, 2, 3, 3), progress=False)
    with pytest.raises(DataError, match=r"sample 0 has shape \[2, 2, 3, 3\], expected \[2, 2, 4, 4\]"):
        write_frames(out, iter([np.ones((2, 2, 3, 3))]), 1, (2, 2, 4, 4), progress=False)
    assert os.listdir(tmp_path) == []
    write_frames(out, (np.full((2, 2, 3, 3), i, np.uint8) for i in range(3)), 3, (2, 2, 3, 3),
                     np.arange(3), progress=False)
    with np.load(out) as raw:
        assert raw["x"][:, 0, 0, 0, 0].tolist() == [0, 1, 2] and raw["y"].dtype == np.int64


def test_folder_datasets_are_memory_mappable(tmp_path):
    imgs = np.stack([_square(28, 8, 20), _square(28, 4, 12), _square(28, 10, 26)])
    folder = tmp_path / "emu"
    images_to_dataset(folder, imgs, np.array([5, 6, 7]), timesteps=4, progress=False)
    assert sorted(os.listdir(folder)) == ["x.npy", "y.npy"]
    source = open_data(folder, labels=True)
    assert len(source) == 3 and source.sample_shape == (4, 2, 34, 34)
    assert source.labels().tolist() == [5, 6, 7]
    images_to_dataset(tmp_path / "emu.npz", imgs, None, timesteps=4, progress=False)
    with np.load(tmp_path / "emu.npz") as raw:
        np.testing.assert_array_equal(source.read(np.array([0, 2])), raw["x"][[0, 2]].astype(np.float32))
    with pytest.raises(DataError, match=r"emu already exists and is not an empty folder"):
        images_to_dataset(folder, imgs, None, timesteps=4, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["emu", "emu.npz"]
