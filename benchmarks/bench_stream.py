"""Streaming evaluation from an image folder: peak memory as the folder grows, and the same
figures as the .npz path on the same images (ResNet-20, CIFAR-10 JPEG test images).

    .venv/bin/python benchmarks/bench_stream.py [--sizes 1000,5000] [--timesteps 4,8]
        [--root /tmp/snnconvert_cifar10] [--json R.json]

Writes ROOT/images_N/<class>/<NNNN>.jpg (the shared JPEG files as they are, the first N/10 of
each class) and ROOT/cifar10_N.npz (the same images decoded and preprocessed by
benchmarks/datasets.py, class by class like the folder), then runs ``snnconvert eval`` on each
in a child process, one thread, sampling the proportional set size (PSS) of the child and its
DataLoader workers every 0.1 s. Needs ../shared and benchmarks/data (prepare_data.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from datasets import DATA_DIR, MODELS, preprocess, shared  # noqa: E402

PREPROCESS = "mean=0.485,0.456,0.406 std=0.229,0.224,0.225"  # resnet20-cifar10 (see datasets.MODELS)


def write_images(root: Path, n: int) -> Path:
    folder = root / f"images_{n}"
    if folder.exists() and sum(1 for _ in folder.rglob("*.jpg")) == n:
        return folder
    with tarfile.open(shared("data", "cifar10", "cifar10_test_jpeg_q75.tar.gz"), "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 3 and member.isfile() and int(parts[2][:4]) < n // 10:
                (folder / parts[1]).mkdir(parents=True, exist_ok=True)
                (folder / parts[1] / parts[2]).write_bytes(tar.extractfile(member).read())
    return folder


def write_npz(root: Path, n: int) -> Path:
    path = root / f"cifar10_{n}.npz"
    if path.exists():
        return path
    d = np.load(shared("data", "cifar10", "cifar10_test_jpeg_q75_decoded.npz"))
    y, within = d["y"].astype(np.int64), d["index_within_class"].astype(np.int64)
    keep = np.flatnonzero(within < n // 10)
    order = keep[np.lexsort((within[keep], y[keep]))]  # class by class, like the image folder
    np.savez(path, x=preprocess("resnet20-cifar10", d["x"][order]), y=y[order])
    return path


def peak_memory(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd``; (seconds, peak PSS of it and its children in MB, peak RSS of it alone in MB)."""
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0, 0.0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                total = 0.0
                for p in procs:
                    try:
                        total += p.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                peak[0] = max(peak[0], total)
                peak[1] = max(peak[1], root.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.1)

    t0 = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return seconds, peak[0] / 2**20, peak[1] / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--timesteps", default="4,8")
    ap.add_argument("--root", type=Path, default=Path("/tmp/snnconvert_cifar10"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    model = str(MODELS["resnet20-cifar10"].path)
    calib = DATA_DIR / "resnet20-cifar10_calib.npz"
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for kind, data in (("images", write_images(args.root, n)), ("npz", write_npz(args.root, n))):
            out = args.root / f"{kind}_{n}.json"
            # one synaptic-kernel choice (auto picks per layer by timing, and event and dense
            # float32 sums differ in order), so the two runs can agree to the last spike
            cmd = [sys.executable, "-m", "snnconvert", "--threads", "1", "eval", model, "--calib", str(calib),
                   "--data", str(data), "--timesteps", args.timesteps, "--json", str(out),
                   "--synapses", "dense"]
            if kind == "images":
                cmd += ["--preprocess", PREPROCESS]
            print("$", " ".join(cmd).replace(sys.executable, "python"), flush=True)
            seconds, pss, rss = peak_memory(cmd)
            r = json.loads(out.read_text())
            rows.append({"data": kind, "images": n, "seconds": seconds, "peak_pss_mb": pss,
                         "peak_rss_main_mb": rss, "report": r})
            print(f"  {kind:6s} {n:5d} images: ANN {100 * r['ann']['accuracy']:.2f} %  "
                  + "  ".join(f"T={s['timesteps']} {100 * s['accuracy']:.2f} % (rate {s['firing_rate']:.4f})"
                              for s in r["snn"])
                  + f"  | {seconds:.0f} s, peak PSS (with workers) {pss:.0f} MB, main RSS {rss:.0f} MB",
                  flush=True)
    print("\nsame figures as the .npz path on the same images:")
    for n in {r["images"] for r in rows}:
        pair = {r["data"]: r["report"] for r in rows if r["images"] == n}
        print(f"  {n} images: {pair['images'] == pair['npz']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
