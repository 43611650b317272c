"""Torch SNN simulation time over T x onnxruntime's ANN time, event-driven beside dense, one run.

    python benchmarks/bench_speed.py [--threads 1] [--timesteps 8,32,64] [--json R.json]
        [--exact-images 100] [--spikingjelly-python /tmp/sjvenv/bin/python]

For each model and T it times, back to back on the same batch, onnxruntime's ANN, the SNN with
``synapses="auto"`` (the compiled event engine, runtime/event_engine.py, where the graph allows it;
else per-layer event kernels where a layer's measured input density makes them faster) and with
``synapses="dense"``, and samples the resident memory of each simulation.
Times are CPU seconds of this process (``time.process_time``, best of ``--repeats``): with one
thread this is the work done, and unlike wall time it does not grow when other processes share
the cores; wall-clock ratios are printed beside them. ``--exact-images`` checks, in float64, that
the event-driven network (the engine where it applies) fires exactly the spikes of the dense one
(per neuron, every layer).
``--spikingjelly-python`` runs benchmarks/bench_spikingjelly.py in that interpreter (a throw-away
environment with SpikingJelly; it is not a dependency) right after, on the same models.

Models: the bundled MNIST example, and the shared sinabs CNN and ResNet-20 when ../shared exists.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import snnconvert as sc  # noqa: E402
from snnconvert.frontend import load_model  # noqa: E402
from snnconvert.onnxrt import session  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402


def cases():
    ex = ROOT / "examples" / "mnist"
    yield "mnist-example", ex / "model.onnx", np.load(ex / "calib.npz")["x"], np.load(ex / "test.npz")["x"], 256
    data = ROOT / "benchmarks" / "data"
    try:
        from datasets import MODELS, shared
    except ImportError:
        return
    for name, batch in (("sinabs-mnist-cnn", 256), ("resnet20-cifar10", 100)):
        if (data / f"{name}_calib.npz").exists():
            path = shared("models", "resnet20-cifar10", "resnet20_cifar10.onnx") \
                if name.startswith("resnet") else MODELS[name].path
            yield name, path, np.load(data / f"{name}_calib.npz")["x"], np.load(data / f"{name}_test.npz")["x"], batch


class PeakRSS:
    """Peak resident memory above the live memory at entry, sampled every 2 ms in a thread
    (freed heap memory is handed back to the system first, so reuse does not hide the peak)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: the figure may then understate the peak
            pass
        self._base = self._rss()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.peak_mb = (self._peak - self._base) / 2 ** 20


def timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def exact_spikes(model, x: np.ndarray, timesteps: int) -> dict:
    """Float64: per-neuron spike counts of the event-driven network vs the dense one."""
    counts = {}
    engine = False
    for mode in ("dense", "event"):
        net = SpikingNetwork(model, cpu_kernels="torch", synapses=mode).double()
        net.record = True
        with torch.no_grad():
            for start in range(0, len(x), 50):
                net(torch.as_tensor(x[start:start + 50], dtype=torch.float64), timesteps)
                for k, v in net.spike_counts.items():
                    counts.setdefault(mode, {}).setdefault(k, []).append(v)
        engine = engine or (mode == "event" and net.engine is not None)
    dense = {k: torch.cat(v) for k, v in counts["dense"].items()}
    event = {k: torch.cat(v) for k, v in counts["event"].items()}
    mismatched = sum(int((dense[k] != event[k]).sum()) for k in dense)
    return {"images": len(x), "T": timesteps, "neurons_x_images": sum(v.numel() for v in dense.values()),
            "spikes": int(sum(float(v.sum()) for v in dense.values())), "mismatched_counts": mismatched,
            "identical": mismatched == 0, "event_engine": engine}


def bench_model(name, path, calib, test, batch, args) -> dict:
    x = np.ascontiguousarray(test[:batch])
    sess = session(load_model(path), threads=args.threads)
    feed = {sess.get_inputs()[0].name: x}
    xt = torch.from_numpy(x)
    result: dict = {"batch": batch, "by_T": {}}
    converted = {}  # T -> the converted network (the exact check reuses it)
    for t in args.timesteps:
        ir = converted[t] = sc.convert(path, calib, timesteps=t)
        nets = {"event": SpikingNetwork(ir, synapses="auto"), "dense": SpikingNetwork(ir, synapses="dense")}
        best = {k: [np.inf, np.inf] for k in ("ann", "event", "dense")}
        peaks = {}
        with torch.no_grad():
            for mode, net in nets.items():  # warm-up: numba, onnxruntime sessions, auto's measurements
                for _ in range(2):
                    net(xt, t)
                with PeakRSS() as peak:
                    net(xt, t)
                peaks[mode] = peak.peak_mb
            for _ in range(args.repeats):
                for _ in range(5):
                    best["ann"] = np.minimum(best["ann"], timed(lambda: sess.run(None, feed)))
                for mode, net in nets.items():
                    best[mode] = np.minimum(best[mode], timed(lambda: net(xt, t)))
        rates = nets["event"].simulate(x[:min(batch, 100)], t).firing_rate[t]
        paths = nets["event"].synapses.summary()
        row = {
            "T": t,
            "ratio": best["event"][0] / (t * best["ann"][0]),
            "dense_ratio": best["dense"][0] / (t * best["ann"][0]),
            "wall_ratio": best["event"][1] / (t * best["ann"][1]),
            "dense_wall_ratio": best["dense"][1] / (t * best["ann"][1]),
            "ann_ms": 1e3 * best["ann"][0], "snn_ms": 1e3 * best["event"][0],
            "dense_snn_ms": 1e3 * best["dense"][0],
            "ms_per_image_step": 1e3 * best["event"][0] / (t * batch),
            "dense_ms_per_image_step": 1e3 * best["dense"][0] / (t * batch),
            "peak_mb": peaks["event"], "dense_peak_mb": peaks["dense"],
            "firing_rate": rates,
            "event_layers": sum(1 for p in paths.values() if p["event_calls"] > p["dense_calls"]),
            "synaptic_layers": len(paths),
            "event_engine": nets["event"].engine is not None,
        }
        result["by_T"][t] = row
        print(f"{name:18s} {t:4d} {batch:5d} {row['ann_ms']:8.2f} {row['snn_ms']:9.1f} {row['dense_snn_ms']:9.1f} "
              f"{row['ratio']:7.2f} {row['dense_ratio']:7.2f} {row['wall_ratio']:7.2f} {row['dense_wall_ratio']:7.2f} "
              f"{row['peak_mb']:7.0f} {row['dense_peak_mb']:7.0f} {rates:6.3f} "
              + ("engine" if row["event_engine"] else f"{row['event_layers']:2d}/{row['synaptic_layers']:<2d}"),
              flush=True)
    main_t = 32 if 32 in result["by_T"] else args.timesteps[0]
    result.update({k: v for k, v in result["by_T"][main_t].items()})
    if args.exact_images:
        ir = converted[main_t]
        result["exact_float64"] = exact_spikes(ir, np.ascontiguousarray(test[:args.exact_images]), main_t)
        e = result["exact_float64"]
        print(f"{'':18s} float64 spike counts, event{' (engine)' if e['event_engine'] else ''} vs dense, "
              f"{e['images']} images T={main_t}: "
              f"{'identical' if e['identical'] else 'DIFFER'} ({e['mismatched_counts']} of "
              f"{e['neurons_x_images']} neuron counts differ, {e['spikes']} spikes)", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timesteps", default="8,32,64", help="comma-separated T values")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=None, help="comma-separated subset of the model names")
    ap.add_argument("--exact-images", type=int, default=100,
                    help="images for the float64 event-vs-dense spike check (0: skip)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--spikingjelly-python", default=None,
                    help="python of an environment with SpikingJelly: run bench_spikingjelly.py there")
    args = ap.parse_args()
    args.timesteps = [int(v) for v in args.timesteps.split(",")]
    torch.set_num_threads(args.threads)
    wanted = set(args.models.split(",")) if args.models else None
    print(f"threads={args.threads}; ratio = SNN CPU time / (T x ANN CPU time); wall = same in wall time")
    print(f"{'model':18s} {'T':>4s} {'batch':>5s} {'ANN ms':>8s} {'event ms':>9s} {'dense ms':>9s} "
          f"{'ratio':>7s} {'dense':>7s} {'wall':>7s} {'d.wall':>7s} {'peakMB':>7s} {'d.peak':>7s} "
          f"{'rate':>6s} event path (engine, or event/synaptic layers)")
    results = {}
    for name, path, calib, test, batch in cases():
        if wanted and name not in wanted:
            continue
        results[name] = bench_model(name, path, calib, test, batch, args)
    if args.spikingjelly_python:
        results["spikingjelly"] = spikingjelly(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


def spikingjelly(args, results: dict) -> dict:
    """Run bench_spikingjelly.py in the given interpreter; compare per image-step at each T."""
    out = Path(args.json or "bench_speed.json").with_suffix(".spikingjelly.json")
    cmd = [args.spikingjelly_python, str(ROOT / "benchmarks" / "bench_spikingjelly.py"), "--threads",
           str(args.threads), "--timesteps", ",".join(map(str, args.timesteps)), "--json", str(out)]
    subprocess.run(cmd, check=True)
    sj = json.loads(out.read_text())
    for model, by_t in sj.items():
        if model not in results:
            continue
        for t, row in by_t.items():
            ours = results[model]["by_T"].get(int(t))
            if ours:
                row["speedup_vs_spikingjelly"] = row["ms_per_image_step"] / ours["ms_per_image_step"]
                print(f"{model:18s} T={t:>3s}: SpikingJelly {row['ms_per_image_step']:.4f} ms/image-step, "
                      f"snnconvert {ours['ms_per_image_step']:.4f} -> {row['speedup_vs_spikingjelly']:.2f}x faster")
    return sj


if __name__ == "__main__":
    main()
