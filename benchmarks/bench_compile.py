"""Compile time of light_resnet50 (ImageNet ResNet-50 graph, random weights) in a fresh process.

Two compilations, each timed with the import of snnconvert included and excluded. "IR" is the
compilation proper (front-end + passes -> the .snn.onnx model; torch is not imported); "torch" adds
importing torch and building the torch module; "write .pt" is the torch target's artifact (~200 MB):
  uncalibrated  load_model + check_supported + fold-batchnorm + replace-neurons, unit thresholds
                (init-membrane θ/2), then the torch module (SpikingNetwork) built from the IR
  random-calib  the default pipeline with thresholds from 2 random inputs (max, per channel)

    .venv/bin/python benchmarks/bench_compile.py [--model PATH] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = "models/imagenet-arch-light/light_resnet50.onnx"

CHILD = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
import numpy as np
import snnconvert
from snnconvert import frontend, ir
from snnconvert.data import input_shape
from snnconvert.passes import FoldBatchNorm, InitMembrane, PassContext, Pipeline, ReplaceNeurons
from snnconvert.targets import get_target
t1 = time.perf_counter()
path, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "uncalibrated":
    model = frontend.load_model(path)
    frontend.check_supported(model)
    ctx = PassContext()
    snn = Pipeline([FoldBatchNorm(), ReplaceNeurons()])(model, ctx)
    for n in ir.neurons(snn):
        ir.set_initializer(snn, n.node.input[1], np.ones_like(n.threshold, np.float32))
    snn = InitMembrane("half")(snn, ctx)
    ir.ensure_domain(snn)
else:
    model = frontend.load_model(path)
    x = np.random.default_rng(0).random((2, *input_shape(model)), dtype=np.float32)
    snn = snnconvert.convert(model, x, norm="max", per_channel=True, v_init="half")
t_ir = time.perf_counter()
assert "torch" not in sys.modules
import torch
torch.set_num_threads(1)
from snnconvert.runtime import SpikingNetwork
SpikingNetwork(snn)
t2 = time.perf_counter()
get_target("torch").compile(snn, out)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "ir": t_ir - t1, "compile": t2 - t1, "write": t3 - t2}))
"""


def run_once(model: str, mode: str, out: str) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, model, mode, out], capture_output=True, text=True,
                          check=True)
    wall = time.perf_counter() - start
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    times["process"] = wall
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=f"ONNX file (default: shared {DEFAULT})")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(HERE))
        from datasets import shared
        args.model = str(shared(*DEFAULT.split("/")))
    out = "/tmp/bench_compile_light_resnet50.pt"
    print(f"{Path(args.model).name}: best of {args.repeat} fresh processes (seconds)")
    print(f"{'mode':14s} {'IR':>6s} {'IR+import':>10s} {'+torch module':>14s} "
          f"{'write .pt':>10s} {'whole process':>14s}")
    for mode in ("uncalibrated", "random-calib"):
        runs = [run_once(args.model, mode, out) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["ir"] + r["import"])
        print(f"{mode:14s} {best['ir']:>6.2f} {best['ir'] + best['import']:>10.2f} "
              f"{best['compile']:>14.2f} {best['write']:>10.2f} {min(r['process'] for r in runs):>14.2f}")
    Path(out).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
