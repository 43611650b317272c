"""Per-layer speed of the binary-spike conv kernel against scatter, torch and onnxruntime.

    python benchmarks/bench_binary_conv.py [--frames 32] [--repeats 5] [--densities 0.05,0.1]
                                           [--variants 8d,8c,4c]

One thread everywhere. For each conv shape (ResNet-20's, the 1x1 stride-2 shortcut shapes of a
ResNet with projection shortcuts, sinabs-mnist-cnn's and the bundled example's) and input density,
random binary spikes (amplitude θ_c per channel) over ``--frames`` frames go through:
``binary`` (runtime/binary_conv.py, channel-last uint8 in, adds into a float32 [F, OH, OW, O]),
``scatter`` (the existing event kernel, runtime/event_kernels.py: float32 NCHW in and out),
``torch`` (F.conv2d, float32 NCHW, mkldnn) and ``ort`` (onnxruntime's Conv, float32 NCHW).
Times are CPU ms per ``--frames`` frames, best of ``--repeats``; every kernel's output is checked
against torch's (float32, relative 1e-4). ``--variants`` adds columns for other table group
sizes and layouts (``8d``: 8-bit groups, direct; ``4c``: 4-bit, compact; ``1c``: one table row
per channel, i.e. an output-stationary event gather).

In sinabs-mnist-cnn and the bundled example these convs follow a 2x2 AveragePool of spikes, so
their real input is graded, not binary: those rows show the kernel on binary input of the same
shape (a conv fed directly by neurons), not a drop-in for those layers.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snnconvert.runtime.binary_conv import BinaryConv  # noqa: E402
from snnconvert.runtime.event_kernels import _conv_plan  # noqa: E402

# name, C, H, W, O, kernel, stride, pad
LAYERS = [
    ("resnet20 16x32x32->16 3x3", 16, 32, 32, 16, 3, 1, 1),
    ("resnet20 16x32x32->32 3x3 s2", 16, 32, 32, 32, 3, 2, 1),
    ("resnet20 32x16x16->32 3x3", 32, 16, 16, 32, 3, 1, 1),
    ("resnet20 32x16x16->64 3x3 s2", 32, 16, 16, 64, 3, 2, 1),
    ("resnet20 64x8x8->64 3x3", 64, 8, 8, 64, 3, 1, 1),
    ("shortcut 16x32x32->32 1x1 s2", 16, 32, 32, 32, 1, 2, 0),
    ("shortcut 32x16x16->64 1x1 s2", 32, 16, 16, 64, 1, 2, 0),
    ("sinabs 20x12x12->32 5x5", 20, 12, 12, 32, 5, 1, 0),
    ("sinabs 32x4x4->128 3x3", 32, 4, 4, 128, 3, 1, 0),
    ("example 16x14x14->32 3x3", 16, 14, 14, 32, 3, 1, 1),
]
DENSITIES = (0.05, 0.10, 0.15, 0.25)


def cpu_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best * 1e3


def ort_conv(w: np.ndarray, stride: int, pad: int) -> ort.InferenceSession:
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride, stride], pads=[pad] * 4)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--densities", default=",".join(map(str, DENSITIES)),
                    help="input firing rates (fraction of spikes that are 1)")
    ap.add_argument("--variants", default="",
                    help="extra kernel variants to time: bits and c (compact) or d (direct), "
                         "e.g. 8d,8c,4c,1c")
    args = ap.parse_args()
    torch.set_num_threads(1)
    extra = [v for v in args.variants.split(",") if v]
    rng = np.random.default_rng(0)
    cols = ["binary"] + extra + ["scatter", "torch", "ort"]
    print(f"CPU ms per {args.frames} frames, one thread, best of {args.repeats}; "
          f"speed-up = min(torch, ort) / binary")
    print(f"{'layer':32s} {'dens':>5s} " + " ".join(f"{c:>8s}" for c in cols) + "  speed-up  bits mode")
    for name, c, h, wd, o, k, s, p in LAYERS:
        w = rng.standard_normal((o, c, k, k)).astype(np.float32)
        amp = rng.uniform(0.5, 2.0, c)
        kernel = BinaryConv.build(w, amp, (s, s), (p, p, p, p), (1, 1), (h, wd), np.float32)
        variants = [BinaryConv.build(w, amp, (s, s), (p, p, p, p), (1, 1), (h, wd), np.float32,
                                     bits=int(v[:-1]), compact=v[-1] == "c") for v in extra]
        session = ort_conv(w, s, p)
        wt = torch.from_numpy(w)
        for d in [float(v) for v in args.densities.split(",")]:
            spikes = (rng.random((args.frames, h, wd, c)) < d).astype(np.uint8)
            x = torch.from_numpy(np.ascontiguousarray(
                (spikes * amp.astype(np.float32)).astype(np.float32).transpose(0, 3, 1, 2)))
            ref = torch.nn.functional.conv2d(x, wt, stride=s, padding=p)
            plan = _conv_plan(("bench",), {"strides": [s, s], "pads": [p] * 4}, x, [wt])
            times, outs = {}, {}
            for col, kern in [("binary", kernel)] + list(zip(cols[1:1 + len(extra)], variants)):
                out = np.zeros((args.frames, *kernel.out_hw, o), np.float32)
                times[col] = cpu_ms(lambda: kern.accumulate(spikes, out), args.repeats)
                out[:] = 0
                kern.accumulate(spikes, out)
                outs[col] = out.transpose(0, 3, 1, 2)
            flat = x.numpy().reshape(-1)
            times["scatter"] = cpu_ms(lambda: plan.call(flat), args.repeats)
            outs["scatter"] = plan.call(flat)[0].reshape(ref.shape)
            times["torch"] = cpu_ms(lambda: torch.nn.functional.conv2d(x, wt, stride=s, padding=p),
                                    args.repeats)
            xn = x.numpy()
            times["ort"] = cpu_ms(lambda: session.run(None, {"x": xn}), args.repeats)
            outs["ort"] = session.run(None, {"x": xn})[0]
            scale = float(ref.abs().max())
            for col, y in outs.items():
                err = float(np.abs(y - ref.numpy()).max()) / scale
                assert err < 1e-4, f"{name} density {d}: {col} differs from torch by {err:.2e}"
            speedup = min(times["torch"], times["ort"]) / times["binary"]
            print(f"{name:32s} {d:5.2f} " + " ".join(f"{times[c]:8.2f}" for c in cols)
                  + f"  {speedup:7.1f}x  {kernel.bits} {'c' if kernel.geom[6] else 'd'}", flush=True)


if __name__ == "__main__":
    main()
