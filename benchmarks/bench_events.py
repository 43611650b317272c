"""Event data layer: saccade-emulator speed on MNIST, binning speed, and the real N-MNIST recording.

    python benchmarks/bench_events.py [--images 10000] [--timesteps 16]

One core (the emulator is single-threaded numba; the first call's compile is timed apart).
Prints emulated images/s, events per image against the real recording's, the per-saccade motion
and polarity signature of both, and asserts the real recording's shape and event count
(shared/data/nmnist-sample, 4325 events on 34x34).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from datasets import mnist, shared  # noqa: E402
from snnconvert.events import NMNIST_SENSOR, emulate_saccades, images_to_dataset, read_nmnist, to_frames  # noqa: E402


def saccade_signature(events: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Per saccade: the image motion (event centroid of its last 40 ms minus its first 40 ms, px) and
    the cosine between that motion and the offset of the p=1 events' centroid from the p=0 events'."""
    out = []
    for k in range(3):
        s = events[(events["t"] >= k * 100_000) & (events["t"] < (k + 1) * 100_000)]
        phase = s["t"] % 100_000

        def centroid(e: np.ndarray) -> np.ndarray:
            return np.array([e["x"].mean(), e["y"].mean()])
        motion = centroid(s[phase >= 60_000]) - centroid(s[phase < 40_000])
        offset = centroid(s[s["p"] == 1]) - centroid(s[s["p"] == 0])
        out.append((motion, float(motion @ offset / np.linalg.norm(motion) / np.linalg.norm(offset))))
    return out


def describe(signature: list[tuple[np.ndarray, float]]) -> str:
    return " | ".join(f"motion ({m[0]:+.1f}, {m[1]:+.1f}) px, cos {c:+.2f}" for m, c in signature)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--timesteps", type=int, default=16)
    args = ap.parse_args()

    real = read_nmnist(shared("data", "nmnist-sample", "sample_nmnist.bin"))
    frames = to_frames(real, NMNIST_SENSOR, n_time_bins=args.timesteps, t_start=0)
    assert len(real) == 4325 and frames.shape == (args.timesteps, 2, 34, 34) and frames.sum() == 4325
    print(f"real recording: {len(real)} events, {int(real['p'].sum())} with p=1, "
          f"t {real['t'].min()}..{real['t'].max()} µs -> frames {list(frames.shape)}, {int(frames.sum())} counted")

    images, _ = mnist("test", args.images)
    start = time.perf_counter()
    emulate_saccades(images[0])
    compile_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    counts = np.array([len(emulate_saccades(img)) for img in images])
    emulate_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    print(f"emulate {len(images)} MNIST images: {emulate_s:.1f} s wall, {cpu_s:.1f} s CPU "
          f"({len(images) / emulate_s:.0f} images/s; "
          f"first call incl. numba compile/cache load {compile_s:.2f} s); events per image mean {counts.mean():.0f}, "
          f"median {np.median(counts):.0f}, min {counts.min()}, max {counts.max()} (real recording: {len(real)})")

    print(f"real recording per saccade:     {describe(saccade_signature(real))}")
    sigs = [saccade_signature(emulate_saccades(img)) for img in images[:200]]
    mean = [(np.mean([sig[k][0] for sig in sigs], 0), float(np.mean([sig[k][1] for sig in sigs]))) for k in range(3)]
    print(f"emulated (mean of 200 images):  {describe(mean)}")

    events = [emulate_saccades(img) for img in images[:1000]]
    start = time.perf_counter()
    for ev in events:
        to_frames(ev, NMNIST_SENSOR, n_time_bins=args.timesteps, t_start=0, t_stop=300_000, dtype=np.uint8)
    bin_s = time.perf_counter() - start
    print(f"bin 1000 recordings into T={args.timesteps}: {bin_s:.2f} s ({1000 / bin_s:.0f} recordings/s)")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        images_to_dataset(Path(tmp) / "x.npz", images, None, args.timesteps, progress=False)
        total_s = time.perf_counter() - start
        size_mb = (Path(tmp) / "x.npz").stat().st_size / 2**20
    print(f"images_to_dataset {len(images)} images (emulate + bin + compressed .npz): {total_s:.1f} s, "
          f"{size_mb:.1f} MiB")


if __name__ == "__main__":
    main()
