"""Lava target benchmark: equivalence with torch and the integer reference, accuracy, wall time.

Usage: .venv/bin/python benchmarks/bench_lava.py [--n 1000] [--n-check 100] [--t 32] [--batch 100]
Uses examples/mnist (model.onnx, calib.npz, test.npz). Prints one JSON line per measurement.
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
    args = ap.parse_args()
    torch.set_num_threads(1)
    import snnconvert
    from snnconvert.runtime import SpikingNetwork
    from snnconvert.targets import lava

    ex = ROOT / "examples" / "mnist"
    calib = np.load(ex / "calib.npz")["x"]
    test = np.load(ex / "test.npz")
    x, y = test["x"][:args.n], test["y"][:args.n]
    model = snnconvert.convert(str(ex / "model.onnx"), calib=calib, timesteps=args.t)
    net = lava.network(lava.quantize(model, calib[:256], args.t))
    emit = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731

    tnet = SpikingNetwork(model)
    t0 = time.time()
    tres = tnet.simulate(x, [args.t], batch_size=256)
    t_torch = time.time() - t0
    acc_torch = float((tres.predictions(args.t) == y).mean())
    emit(what="torch", n=args.n, seconds=round(t_torch, 2), accuracy=acc_torch)

    xc = x[:args.n_check]
    tnet.record = True
    with torch.no_grad():
        tnet(torch.as_tensor(xc), args.t)
    lf = net.run(xc, args.t, fixed_point=False, batch_size=args.batch, neuron_counts=True)
    diff = {k: int(np.abs(lf.counts[k] - tnet.spike_counts[k].numpy()).sum()) for k in lf.counts}
    emit(what="lava-float-vs-torch counts", n=len(xc), abs_count_diff=diff,
         total_spikes={k: int(v.sum()) for k, v in lf.counts.items()})
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
