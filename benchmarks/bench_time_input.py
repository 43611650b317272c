"""Time-varying input (issue 12): spike-frame input, fine-tuning on frames, rate encoding, and
the real N-MNIST recording through a converted network.

    .venv/bin/python benchmarks/bench_time_input.py [--parts frames,finetune,rate,nmnist,lava]
                                                    [--test-n 10000] [--out out/time_input]
                                                    [--lava-n 100] [--json R.json]

frames   : /work/shared/models/sinabs-mnist-cnn converted with defaults (calib: the prepared
           sinabs-mnist-cnn_calib.npz, T=32); x = Bernoulli spike frames [N, 32, 1, 28, 28] (uint8,
           P(spike) = pixel intensity in [0, 1], one seed) of the first --test-n MNIST test images;
           evaluated with ``snnconvert eval NET --data frames.npz`` (T = the data's length, 32).
finetune : the same network fine-tuned 1 epoch (BPTT, T=32, ``snnconvert finetune``) on such frames
           of the 5,000 prepared training images (mnist_train5000.npz), then evaluated again.
rate     : accuracy vs T with analog input beside ``rate:bernoulli`` and ``rate:deterministic``
           encodings (the IR's own encoders) on sinabs-mnist-cnn (2,000 prepared test images) and
           the bundled example (examples/mnist, 1,000 test images).
nmnist   : the real N-MNIST recording (/work/shared/data/nmnist-sample) read, binned into 32
           frames over its span, its centre 28x28 cropped, polarities summed, run through the
           converted sinabs network (torch, and Lava float/fixed against torch float64/the integer
           reference); event counts and shapes asserted.
lava     : the same converted network on --target lava with Bernoulli spike frames [100, 32, 1, 28, 28]
           of the first 100 test images (the frames part's first 100) and with the IR's rate:bernoulli:0
           encoding of those images: per sample, Lava float spike counts of every layer identical
           to the torch runtime in float64, Lava fixed point (quantized on spike frames of 256
           calibration images) bit-exact with the integer reference (read-out and every count);
           with --json, {"lava_float_equal": fraction, "lava_fixed_bitexact": fraction, ...}.
Needs /work/shared (models, MNIST, the recording) and benchmarks/data (prepare_data.py).
Single thread.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import snnconvert  # noqa: E402
from snnconvert import events, ir  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402

SINABS = Path("/work/shared/models/sinabs-mnist-cnn/sinabs_mnist_cnn.onnx")
DATA = ROOT / "benchmarks" / "data"
RECORDING = Path("/work/shared/data/nmnist-sample/sample_nmnist.bin")
T = 32
CLI = [str(ROOT / ".venv" / "bin" / "snnconvert"), "--threads", "1"]


def bernoulli_frames(x: np.ndarray, steps: int, seed: int) -> np.ndarray:
    """[N, steps, *x] uint8 spikes with P(1) = x (in [0, 1]), drawn in blocks of 500 samples."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(x), steps, *x.shape[1:]), np.uint8)
    for i in range(0, len(x), 500):
        out[i:i + 500] = rng.random((len(x[i:i + 500]), steps, *x.shape[1:]), np.float32) < x[i:i + 500, None]
    return out


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(done.stdout.rstrip())
    if done.returncode:
        print(done.stderr.rstrip()[-2000:])
        raise SystemExit(done.returncode)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return done.stdout


def converted(out: Path) -> Path:
    path = out / "sinabs.snn.onnx"
    if not path.exists():
        run(CLI + [str(SINABS), "--calib", str(DATA / "sinabs-mnist-cnn_calib.npz"), "-T", str(T),
                   "-o", str(path)])
    return path


def part_frames(out: Path, test_n: int) -> None:
    from datasets import mnist

    x, y = mnist("test", test_n)
    x = (x.astype(np.float32) / 255.0).reshape(len(x), 1, 28, 28)
    frames = out / f"frames_test{test_n}_T{T}.npz"
    if not frames.exists():
        np.savez(frames, x=bernoulli_frames(x, T, seed=1), y=y.astype(np.int64))
    run(CLI + ["eval", str(converted(out)), "--data", str(frames), "--json", str(out / "frames_eval.json")])


def part_finetune(out: Path, test_n: int) -> None:
    d = np.load(DATA / "mnist_train5000.npz")
    train = out / f"frames_train5000_T{T}.npz"
    if not train.exists():
        np.savez(train, x=bernoulli_frames(d["x"], T, seed=2), y=d["y"])
    tuned = out / "sinabs.tuned.snn.onnx"
    run(CLI + ["finetune", str(converted(out)), "--data", str(train), "--epochs", "1",
               "--batch-size", "64", "--lr", "1e-4", "-o", str(tuned)])
    frames = out / f"frames_test{test_n}_T{T}.npz"
    run(CLI + ["eval", str(tuned), "--data", str(frames), "--json", str(out / "frames_tuned_eval.json")])


def part_rate(out: Path) -> None:
    cases = {"sinabs-mnist-cnn": (SINABS, DATA / "sinabs-mnist-cnn_calib.npz", DATA / "sinabs-mnist-cnn_test.npz"),
             "examples/mnist": (ROOT / "examples/mnist/model.onnx", ROOT / "examples/mnist/calib.npz",
                                ROOT / "examples/mnist/test.npz")}
    ts = [1, 2, 4, 8, 16, 32, 64]
    for name, (model, calib, test) in cases.items():
        c, t = np.load(calib), np.load(test)
        snn = snnconvert.convert(model, c["x"], timesteps=T)
        rows, ann = {}, None
        for enc in ("analog", "rate:bernoulli:0", "rate:deterministic"):
            ir.set_meta(snn, "encoding", enc)
            t0 = time.perf_counter()
            rep = snnconvert.evaluate(snn, t["x"], t["y"], ts)
            rows[enc] = [r.accuracy for r in rep.rows]
            ann = rep.ann_accuracy
            print(f"{name} {enc}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"\n{name} ({len(t['y'])} test images, converted with defaults at T={T}): accuracy %; "
              f"rate-limit ANN {100 * ann:.2f} %")
        print("| encoding | " + " | ".join(f"T={v}" for v in ts) + " |")
        print("|---|" + "---|" * len(ts))
        for enc, accs in rows.items():
            print(f"| {enc} | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |")
        print()


def part_nmnist(out: Path) -> None:
    ev = events.read_nmnist(RECORDING)
    assert len(ev) == 4325, len(ev)
    frames = events.to_frames(ev, events.NMNIST_SENSOR, n_time_bins=T)
    assert frames.shape == (T, 2, 34, 34) and int(frames.sum()) == 4325
    crop = events.fit_events(ev, events.NMNIST_SENSOR, (28, 28), "crop")
    x = events.to_frames(crop, (28, 28), n_time_bins=T, t_start=int(ev["t"].min()),
                         t_stop=int(ev["t"].max()) + 1).sum(1, keepdims=True)  # ON + OFF
    assert x.shape == (T, 1, 28, 28) and int(x.sum()) == len(crop)
    snn = ir.load(converted(out))
    net = SpikingNetwork(snn)
    net.record = True
    with torch.no_grad():
        logits = net(torch.from_numpy(x[None].astype(np.float32)), T)
    spikes = {k: int(v.sum()) for k, v in net.spike_counts.items()}
    print(f"N-MNIST recording: {len(ev)} events -> frames {list(frames.shape)} ({int(frames.sum())} events); "
          f"centre 28x28: {len(crop)} events -> x {list(x.shape)}; network readout {logits.shape[1]} classes, "
          f"argmax {int(logits.argmax())}, spikes per layer {spikes}")
    r = _lava_equivalence(snn, x[None].astype(np.float32), None, x[None].astype(np.float32), 1)
    assert r["float_equal"] == 1.0 and r["fixed_bitexact"] == 1.0, r
    print(f"N-MNIST recording on Lava: float spike counts equal torch float64, fixed point bit-exact "
          f"with the integer reference ({r['spikes']})")


def _lava_equivalence(model, x: np.ndarray, y: np.ndarray | None, calib: np.ndarray, batch: int) -> dict:
    """Per-sample equivalence of Lava float with torch float64, Lava fixed with the integer
    reference, and the seconds (wall, CPU of this process) each took."""
    from snnconvert.targets import lava

    tnet = SpikingNetwork(model, cpu_kernels="torch").double()
    tnet.record = True
    t0, c0 = time.perf_counter(), time.process_time()
    outs, torch_counts = [], {}
    with torch.no_grad():
        for i in range(0, len(x), 25):  # float64 activations of 25 samples x 32 steps at a time
            outs.append(tnet(torch.as_tensor(x[i:i + 25], dtype=torch.float64), T).numpy())
            for k, c in tnet.spike_counts.items():
                torch_counts.setdefault(k, []).append(c.numpy())
    torch_out = np.concatenate(outs)
    torch_counts = {k: np.concatenate(v) for k, v in torch_counts.items()}
    times = {"torch64": (time.perf_counter() - t0, time.process_time() - c0)}
    net = lava.network(lava.quantize(model, calib, T))
    t0, c0 = time.perf_counter(), time.process_time()
    lf = net.run(x, T, fixed_point=False, batch_size=batch, neuron_counts=True)
    times["lava_float"] = (time.perf_counter() - t0, time.process_time() - c0)
    layers = [k for k in lf.counts if k in torch_counts]  # relays exist only in Lava
    same = np.ones(len(x), bool)
    for k in layers:
        same &= (lf.counts[k] == torch_counts[k]).reshape(len(x), -1).all(1)
    t0, c0 = time.perf_counter(), time.process_time()
    lq = net.run(x, T, fixed_point=True, batch_size=batch, neuron_counts=True)
    times["lava_fixed"] = (time.perf_counter() - t0, time.process_time() - c0)
    rq = net.reference(x, T, fixed_point=True)
    exact = (lq.readout == rq.readout).all(1)
    for k in lq.counts:
        exact &= (lq.counts[k] == rq.counts[k]).reshape(len(x), -1).all(1)
    return {"float_equal": float(same.mean()), "fixed_bitexact": float(exact.mean()),
            "float_prediction_agreement": float((lf.readout.argmax(1) == torch_out.argmax(1)).mean()),
            "fixed_prediction_agreement": float((lq.readout.argmax(1) == torch_out.argmax(1)).mean()),
            "accuracy": None if y is None else {
                "torch64": float((torch_out.argmax(1) == y).mean()),
                "lava_float": float((lf.readout.argmax(1) == y).mean()),
                "lava_fixed": float((lq.readout.argmax(1) == y).mean())},
            "spikes": {k: int(lf.counts[k].sum()) for k in layers},
            "seconds_wall_cpu": {k: [round(w, 1), round(c, 1)] for k, (w, c) in times.items()}}


def part_lava(out: Path, n: int, batch: int) -> dict:
    from datasets import mnist

    x, y = mnist("test", n)
    x = (x.astype(np.float32) / 255.0).reshape(len(x), 1, 28, 28)
    calib = np.load(DATA / "sinabs-mnist-cnn_calib.npz")["x"][:256].astype(np.float32)  # in [0, 1]
    model = ir.load(converted(out))
    frames = bernoulli_frames(x, T, seed=1).astype(np.float32)
    result = {"n": n, "timesteps": T}
    for name, (m, data, cal) in {
            "frames": (model, frames, bernoulli_frames(calib, T, seed=3).astype(np.float32)),
            "rate": (_with_encoding(model, "rate:bernoulli:0"), x, calib)}.items():
        r = _lava_equivalence(m, data, y, cal, batch)
        print(f"lava, {name} input ({n} images, T={T}): {r}", flush=True)
        for k, v in r.items():
            result[f"{name}_{k}"] = v
    result["lava_float_equal"] = result["frames_float_equal"]
    result["lava_fixed_bitexact"] = result["frames_fixed_bitexact"]
    return result


def _with_encoding(model, encoding: str):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    ir.set_meta(out, "encoding", encoding)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="frames,finetune,rate,nmnist")
    ap.add_argument("--test-n", type=int, default=10000)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "time_input")
    ap.add_argument("--lava-n", type=int, default=100)
    ap.add_argument("--lava-batch", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None, help="write the lava part's figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        {"frames": lambda: part_frames(args.out, args.test_n),
         "finetune": lambda: part_finetune(args.out, args.test_n),
         "rate": lambda: part_rate(args.out),
         "nmnist": lambda: part_nmnist(args.out),
         "lava": lambda: results.update(lava=part_lava(args.out, args.lava_n, args.lava_batch))}[part]()
        print(f"[{part}: {time.perf_counter() - t0:.0f} s]\n", flush=True)
    if args.json is not None and "lava" in results:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results["lava"], indent=1))


if __name__ == "__main__":
    main()
