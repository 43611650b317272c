"""Build emulated N-MNIST from MNIST: saccade recordings binned into T frames, plus the real recording.

    .venv/bin/python examples/nmnist_emulated/make_data.py [--train 5000] [--test 1000] [-T 16]
        [--size 34] [--fit crop|scale] [--noise-hz 0.4] [--seed 0] [--folders] [--plot]
        [--out-dir out/nmnist_emulated]

Writes OUT/train.npz and OUT/test.npz (``x`` uint8 [N, T, 2, S, S] ON/OFF event counts, axis 1 =
time, ``y`` int64; with --folders, folders OUT/train/ and OUT/test/ of memory-mappable x.npy and
y.npy), and OUT/real.npz (``x`` [1, T, 2, S, S]) from the one real N-MNIST recording in the shared
folder, whose shape and event count it checks and prints. MNIST comes from the shared
folder (``../shared`` beside the repository, or $SNNCONVERT_SHARED).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from datasets import mnist, shared  # noqa: E402
from snnconvert.events import (NMNIST_SENSOR, SaccadeConfig, emulate_saccades,  # noqa: E402
                               event_files_to_dataset, fit_events, images_to_dataset, read_nmnist, to_frames)

REAL_EVENTS = 4325  # shared/data/nmnist-sample/PROVENANCE.md


def real_recording(out: Path, timesteps: int, size: tuple[int, int], fit: str) -> None:
    """Read, check and bin the real N-MNIST recording; print what it holds."""
    path = shared("data", "nmnist-sample", "sample_nmnist.bin")
    events = read_nmnist(path)
    assert len(events) == REAL_EVENTS, len(events)
    assert events["x"].max() < 34 and events["y"].max() < 34
    frames = to_frames(events, NMNIST_SENSOR, n_time_bins=timesteps, t_start=0, t_stop=int(events["t"].max()) + 1)
    assert frames.shape == (timesteps, 2, 34, 34) and frames.sum() == REAL_EVENTS
    fitted = fit_events(events, NMNIST_SENSOR, size, fit)
    event_files_to_dataset(out / "real.npz", [path], None, timesteps, size=size, fit=fit, progress=False)
    with np.load(out / "real.npz") as f:
        x = f["x"]
    assert x.shape == (1, timesteps, 2, *size) and x.sum() == len(fitted)
    fitted_note = f"{fit} to {size[0]}x{size[1]}: {len(fitted)} events " if size != NMNIST_SENSOR else ""
    print(f"real N-MNIST recording {path.name}: {len(events)} events ({int(events['p'].sum())} with p=1), "
          f"t {events['t'].min()}..{events['t'].max()} µs, sensor 34x34 -> frames {list(frames.shape)}; "
          f"{fitted_note}-> {out / 'real.npz'} x {list(x.shape)}")


def plot(real: np.ndarray, emulated: np.ndarray, label: int, path: Path) -> None:
    """Real vs emulated recording: p=1 minus p=0 counts per saccade, and the event rate over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(13, 6), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    for row, (events, name) in enumerate(((real, "real N-MNIST recording"), (emulated, f"emulated MNIST '{label}'"))):
        frames = to_frames(events, NMNIST_SENSOR, time_window_us=100_000, t_start=0, timesteps=3)
        for k in range(3):
            ax = axes[row, k]
            ax.imshow(frames[k, 1] - frames[k, 0], cmap="bwr", vmin=-6, vmax=6)
            ax.set_title(f"{name}\nsaccade {k + 1}: p=1 red, p=0 blue" if k == 0 else f"saccade {k + 1}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        rate = np.bincount(events["t"] // 5_000, minlength=64)[:64]
        axes[row, 3].plot(np.arange(64) * 5, rate, drawstyle="steps-post")
        axes[row, 3].set_xlabel("time [ms]"), axes[row, 3].set_ylabel("events / 5 ms")
        axes[row, 3].set_title(f"{len(events)} events", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=5000, help="training images (the first N of MNIST's train split)")
    ap.add_argument("--test", type=int, default=1000, help="test images (the first N of MNIST's test split)")
    ap.add_argument("-T", "--timesteps", type=int, default=16, help="frames per recording (300 ms / T each)")
    ap.add_argument("--size", type=int, default=34, help="frame side: 34 = N-MNIST's sensor; 28 crops the centre")
    ap.add_argument("--fit", choices=("crop", "scale"), default="crop")
    ap.add_argument("--noise-hz", type=float, default=0.4,
                    help="noise events per pixel per second (0.4, 80 %% with p=1: as in the real recording)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folders", action="store_true", help="write x.npy/y.npy folders instead of .npz files")
    ap.add_argument("--plot", action="store_true", help="write OUT/real_vs_emulated.png")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "out" / "nmnist_emulated")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    size = (args.size, args.size)
    config = replace(SaccadeConfig(), noise_hz=args.noise_hz, noise_p1=0.8)
    real_recording(args.out_dir, args.timesteps, size, args.fit)
    if args.plot:
        images, labels = mnist("test", 1)
        plot(read_nmnist(shared("data", "nmnist-sample", "sample_nmnist.bin")),
             emulate_saccades(images[0], config, np.random.default_rng((args.seed + 1, 0))), int(labels[0]),
             args.out_dir / "real_vs_emulated.png")
    for split, n, seed in (("train", args.train, args.seed), ("test", args.test, args.seed + 1)):
        images, labels = mnist(split, n)
        start = time.perf_counter()
        target = args.out_dir / (split if args.folders else f"{split}.npz")
        if args.folders and target.exists():
            shutil.rmtree(target)
        images_to_dataset(target, images, labels, args.timesteps, config=config, seed=seed, size=size, fit=args.fit)
        seconds = time.perf_counter() - start
        x = np.load(target / "x.npy", mmap_mode="r") if args.folders else np.load(target)["x"]
        per_sample = np.array([int(s.sum(dtype=np.int64)) for s in x])
        print(f"{split}: {len(x)} images -> {target} x {list(x.shape)} {x.dtype}, "
              f"{per_sample.mean():.0f} events per sample (min {per_sample.min()}, max {per_sample.max()}), "
              f"{seconds:.1f} s ({len(x) / seconds:.0f} images/s)")


if __name__ == "__main__":
    main()
