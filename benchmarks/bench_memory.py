"""Peak resident memory of `snnconvert convert` (the calibration for T alone) and of
`snnconvert eval` (calibration, then evaluation) at T=64, default batch, for N and 2N images.

    python benchmarks/bench_memory.py [--images 256] [--timesteps 64] [--json M.json]
        [--calibration none] [--models resnet20-cifar10,resnet56-sized]
    python benchmarks/bench_memory.py --models light_resnet50,light_vgg19 --timesteps 4 --imagenet-calib 8

Each run is a fresh process (the command a user types, converting on the fly with --calib),
whose own peak RSS (VmHWM) is reported, with its CPU time. Models: the shared ResNet-20
and a ResNet-56-sized net (the same CIFAR ResNet with 9 blocks per stage, 55 neuron layers,
random weights: memory does not depend on the weights' values), both on CIFAR-10 images.
Target (issue 10): <= 4 GB, and the same peak for 2N images as for N.
The ImageNet-size graphs (light_resnet50, light_vgg19: the real topologies, constant weights) are
converted alone, on N and 2N random 224×224 calibration inputs (``--imagenet-calib`` N): the
calibration's peak should not grow with N there either.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = """
import resource, runpy, sys, time
sys.argv = ["snnconvert"] + sys.argv[1:]
try:
    runpy.run_module("snnconvert", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
finally:
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/status") as f:  # peak since exec (ru_maxrss keeps the parent's)
        hwm = int(f.read().split("VmHWM:")[1].split()[0])
    print(f"@@ {hwm} {r.ru_utime + r.ru_stime}", file=sys.stderr)
"""

LIGHT = ("light_resnet50", "light_vgg19")


def resnet56(path: Path) -> Path:
    from bench_spikingjelly import ResNet20

    torch.manual_seed(0)
    net = ResNet20(blocks=9).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 32, 32), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      opset_version=13, dynamo=False)
    return path


def peak(model: Path, calib: Path, data: Path | None, timesteps: int, extra: list[str]
         ) -> tuple[float, float]:
    """(peak RSS in GB, CPU seconds) of one `snnconvert eval` process (`convert` without data)."""
    if data is None:
        out = calib.parent / f"{model.stem}-T{timesteps}.snn.onnx"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-c", CHILD, "--threads", "1", "convert", str(model), "--calib",
               str(calib), "-T", str(timesteps), "-o", str(out), *extra]
    else:
        cmd = [sys.executable, "-c", CHILD, "--threads", "1", "eval", str(model), "--calib", str(calib),
               "--data", str(data), "--timesteps", str(timesteps), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("@@ ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"eval failed: {done.stderr[-2000:]}")
    kb, cpu = line.split()[1:]
    return int(kb) / 2 ** 20, float(cpu)


def imagenet_size(name: str, tmp: Path, n: int, timesteps: int) -> dict:
    """Peaks of `snnconvert convert` of an ImageNet-size graph on n and 2n random inputs."""
    from datasets import shared

    model = shared("models", "imagenet-arch-light", f"{name}.onnx")
    rng = np.random.default_rng(0)
    x = rng.random((2 * n, 3, 224, 224), dtype=np.float32)
    result = {}
    for count in (n, 2 * n):
        calib = tmp / f"{name}-calib{count}.npz"
        np.savez(calib, x=x[:count])
        gb, cpu = peak(model, calib, None, timesteps, [])
        result[count] = {"peak_gb": gb, "cpu_s": cpu}
        print(f"{name:18s} convert on {count:3d} calibration inputs (T={timesteps}): peak {gb:5.2f} GB, "
              f"{cpu:6.1f} CPU s", flush=True)
    result["growth_2x"] = result[2 * n]["peak_gb"] / result[n]["peak_gb"]
    print(f"{name:18s} peak for 2N / peak for N = {result['growth_2x']:.3f}")
    return result


def main() -> None:
    from datasets import shared

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256, help="N: the runs use N and 2N test images")
    ap.add_argument("--timesteps", type=int, default=64)
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--calibration", default=None,
                    help="passed to eval (e.g. none: the simulation alone, without the fit at T)")
    ap.add_argument("--models", default="resnet20-cifar10,resnet56-sized")
    ap.add_argument("--imagenet-calib", type=int, default=8,
                    help="N for the ImageNet-size graphs: conversions on N and 2N random inputs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    extra = ["--calibration", args.calibration] if args.calibration else []
    data = ROOT / "benchmarks" / "data"
    test = np.load(data / "resnet20-cifar10_test.npz")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calib = tmp / "calib.npz"
        np.savez(calib, x=np.load(data / "resnet20-cifar10_calib.npz")["x"][:args.calib_images])
        wanted = args.models.split(",")
        models = {"resnet20-cifar10": lambda: shared("models", "resnet20-cifar10", "resnet20_cifar10.onnx"),
                  "resnet56-sized": lambda: resnet56(tmp / "resnet56.onnx")}
        print(f"snnconvert eval {' '.join(extra)}, T={args.timesteps}, default batch, one thread: "
              f"peak RSS of the process")
        for name in wanted:
            if name in LIGHT:
                results[name] = imagenet_size(name, tmp, args.imagenet_calib, args.timesteps)
                continue
            model = models[name]()
            results[name] = {}
            if args.calibration != "none":
                gb, cpu = peak(model, calib, None, args.timesteps, extra)
                results[name]["convert"] = {"peak_gb": gb, "cpu_s": cpu}
                print(f"{name:18s} convert (calibration for T={args.timesteps}): peak {gb:5.2f} GB, "
                      f"{cpu:6.1f} CPU s", flush=True)
            for n in (args.images, 2 * args.images):
                path = tmp / f"test{n}.npz"
                np.savez(path, x=test["x"][:n], y=test["y"][:n])
                gb, cpu = peak(model, calib, path, args.timesteps, extra)
                results[name][n] = {"peak_gb": gb, "cpu_s": cpu}
                print(f"{name:18s} {n:5d} images: peak {gb:5.2f} GB, {cpu:6.1f} CPU s", flush=True)
            small, large = (results[name][n]["peak_gb"] for n in (args.images, 2 * args.images))
            results[name]["growth_2x"] = large / small
            print(f"{name:18s} peak for 2N / peak for N = {large / small:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
