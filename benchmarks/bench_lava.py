"""Lava target benchmark: equivalence with torch and the integer reference, accuracy, wall time.

Usage: .venv/bin/python benchmarks/bench_lava.py [--model example|sinabs-mnist-cnn|resnet20-cifar10]
           [--ir TUNED.snn.onnx] [--n 1000] [--n-check 100] [--t 32] [--batch 100] [--no-fixed]
The example uses examples/mnist; shared models use benchmarks/data (prepare_data.py) and ../shared.
``--ir`` evaluates a given IR (e.g. a fine-tuned one) instead of converting. One JSON line per result.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-check", type=int, default=100)
    ap.add_argument("--t", type=int, default=32)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--model", default="example")
    ap.add_argument("--ir", type=Path, default=None)
    ap.add_argument("--no-fixed", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import snnconvert
    from snnconvert.runtime import SpikingNetwork
    from snnconvert.targets import lava

    if args.model == "example":
        ex = ROOT / "examples" / "mnist"
        path, calib, test = ex / "model.onnx", np.load(ex / "calib.npz")["x"], np.load(ex / "test.npz")
    else:
        import sys
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from datasets import MODELS, shared
        path = (shared("models", "resnet20-cifar10", "resnet20_cifar10.onnx")
                if args.model.startswith("resnet20") else MODELS[args.model].path)
        data = ROOT / "benchmarks" / "data"
        calib, test = np.load(data / f"{args.model}_calib.npz")["x"], np.load(data / f"{args.model}_test.npz")
    x, y = test["x"][:args.n], test["y"][:args.n]
    model = (snnconvert.load(args.ir) if args.ir else
             snnconvert.convert(str(path), calib=calib, timesteps=args.t))
    net = lava.network(lava.quantize(model, calib[:256], args.t) if not args.no_fixed else model)
    emit = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731

    tnet = SpikingNetwork(model)
    t0 = time.time()
    tres = tnet.simulate(x, [args.t], batch_size=256)
    t_torch = time.time() - t0
    acc_torch = float((tres.predictions(args.t) == y).mean())
    emit(what="torch", n=args.n, seconds=round(t_torch, 2), accuracy=acc_torch)

    xc = x[:args.n_check]
    # Lava's float models compute in float64: compare spikes with the torch target in float64 too
    # (in float32 a handful of spikes at exact-threshold boundaries flip with summation order).
    cnet = SpikingNetwork(model, cpu_kernels="torch").double()
    cnet.record = True
    with torch.no_grad():
        ref64 = cnet(torch.as_tensor(xc, dtype=torch.float64), args.t).numpy()
    lf = net.run(xc, args.t, fixed_point=False, batch_size=args.batch, neuron_counts=True)
    diff = {k: int(np.abs(lf.counts[k] - cnet.spike_counts[k].numpy()).sum())
            for k in lf.counts if k in cnet.spike_counts}  # relay neurons exist only in Lava
    emit(what="lava-float-vs-torch counts", n=len(xc), abs_count_diff=diff,
         total_spikes={k: int(v.sum()) for k, v in lf.counts.items() if k in cnet.spike_counts},
         prediction_agreement=float((lf.readout.argmax(1) == tres.predictions(args.t)[:len(xc)]).mean()),
         prediction_agreement_float64=float((lf.readout.argmax(1) == ref64.argmax(1)).mean()),
         float32_vs_float64_torch=float((ref64.argmax(1) == tres.predictions(args.t)[:len(xc)]).mean()))
    if args.no_fixed:
        return
    lq = net.run(xc, args.t, fixed_point=True, batch_size=args.batch, neuron_counts=True)
    rq = net.reference(xc, args.t, fixed_point=True)
    emit(what="lava-fixed-vs-integer-reference", n=len(xc),
         readout_equal=bool(np.array_equal(lq.readout, rq.readout)),
         counts_equal=all(np.array_equal(lq.counts[k], rq.counts[k]) for k in lq.counts))

    for fixed in (False, True):
        t0 = time.time()
        r = net.run(x, args.t, fixed_point=fixed, batch_size=args.batch)
        sec = time.time() - t0
        acc = float((r.readout.argmax(1) == y).mean())
        emit(what=f"lava-{'fixed' if fixed else 'float'}", n=args.n, seconds=round(sec, 2),
             accuracy=acc, ratio_to_torch=round(sec / t_torch, 1))


if __name__ == "__main__":
    main()
