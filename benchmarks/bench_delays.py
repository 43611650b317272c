"""Learnable synaptic delays (DCLS, issue 13) on a synthetic spike-timing task.

    .venv/bin/python benchmarks/bench_delays.py [--json R.json] [--epochs 30] [--max-delay 15]
                                                [--lava-samples 100] [--parts timing,nmnist]

Task (:class:`snnconvert.events.TimingTask`): 8 input channels, 8 classes, 32 steps; every class
is one spike per channel at offsets that are a permutation of 0, 3, ..., 21 (so the classes have
the same spikes per channel and per step and differ only in their relative timing), at a random
onset, each spike jittered by up to ±1 step, plus noise spikes (1 % per channel and step).
3,000 training and 2,000 held-out samples from separate seeds.

One ANN (8 -> 16 -> 16 -> 8 MLP, random init), converted once (frames encoding, LIF leak 0.9,
i.e. nearly memoryless neurons as in DCLS, where the delays carry the memory; reset to zero,
v0 = 0, so the NIR export is lossless), then fine-tuned from that same start with the same
budget (BPTT, Adam lr 3e-3, 30 epochs, batch 64, T = 32, logit scale 10) three ways:

no_delay      : the converted network as it is (zero delays);
random_delay  : ``finetune --delays 22 --freeze-delays``: delays drawn uniformly in 0..22, kept;
learned_delay : ``finetune --delays 22``: DCLS, positions learned at 100x the weights' rate with
                σ annealed over the first quarter, rounded to integer delays at the end;
learned_delay_ste : the same with ``--delay-ste`` (after the anneal, the rounded delays run
                forward with the Gaussian gradient).

Each tuned IR is evaluated on the held-out set (integer delays). A delay costs one integer per
synapse: "params" counts weights, biases and thresholds, "delay_params" the delays the delay
networks add; "no_delay_wide" repeats no_delay with hidden layers widened until its weights
reach the delay network's weights + delays (equal parameter count, delays counted). The learned
network is then exported to NIR ("nir_delay_nodes"; the graph simulated with our NIR
simulator against the torch runtime: "nir_equal", fraction of samples with identical spike
counts; in Norse when installed, ``pip install --no-deps norse nirtorch``: Norse's importer for
every node but Delay, which it lacks, and a 12-line Delay module, through nirtorch:
"norse_equal", fraction of samples whose readout equals our NIR simulator's to 1e-5) and run
on Lava float when the Lava target holds it ("lava_equal": fraction of
samples whose spike counts, every neuron, equal the torch runtime's in float64).
Single thread.

Part "nmnist" (``--parts timing,nmnist``; the default adds it when /work/shared's MNIST is found):
emulated N-MNIST from pipe-D (examples/pipe_d: the first --nmnist-train / --nmnist-test MNIST
digits as saccade recordings, T = --nmnist-T frames of [2, 34, 34]). pipe-D's CNN trained as an ANN on
the accumulated frames (--nmnist-ann-epochs), converted once (encoding frames), then fine-tuned
from that same start with the same budget (BPTT, --nmnist-epochs, lr 1e-3, batch 32, LIF leak
0.05, logit scale fitted once on the converted network) three ways: no delays, learned delays
(``--delays D``, D = --nmnist-max-delay, DCLS on the dense layer, here the CNN's one Linear
2048 -> 10) and frozen random delays. Held-out accuracy of each -> result["nmnist"]. N-MNIST's
classes are spatial (a digit's shape), so delays are not expected to help there.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import snnconvert  # noqa: E402
from snnconvert import ir  # noqa: E402
from snnconvert.events import TimingTask  # noqa: E402
from snnconvert.finetune import FinetuneConfig, finetune  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402

TASK = TimingTask(channels=8, classes=8, steps=32, spacing=3, jitter=1, noise=0.01)


def ann(hidden: int, seed: int) -> onnx.ModelProto:
    """An untrained MLP channels -> hidden -> hidden -> classes as ONNX (Gemm + Relu)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(TASK.channels, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, TASK.classes))
    import io
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, TASK.channels), buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def convert(hidden: int, x: np.ndarray, leak: float, seed: int) -> onnx.ModelProto:
    return snnconvert.convert(ann(hidden, seed), x[:512], timesteps=TASK.steps, encoding="frames",
                              reset="zero", v_init="zero", leak=leak, norm="percentile:99.9")


def count_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(float parameters, integer delays) of an IR."""
    floats = ints = 0
    for t in model.graph.initializer:
        a = onnx.numpy_helper.to_array(t)
        if a.dtype.kind == "f":
            floats += a.size
        elif any(n.input[2] == t.name for n in model.graph.node if ir.is_delay_dense(n)):
            ints += a.size
    return floats, ints


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, steps: int = TASK.steps) -> float:
    net = SpikingNetwork(model, cpu_kernels="torch")
    with torch.no_grad():
        out = torch.cat([net(torch.from_numpy(x[i:i + 500]), steps) for i in range(0, len(x), 500)])
    return float((out.argmax(1).numpy() == y).mean())


def tune(model, data, epochs: int, lr: float, **options):
    # the logit scale is fixed: fitting it on an untrained network gives ~0 (chance is the best fit)
    cfg = FinetuneConfig(timesteps=TASK.steps, epochs=epochs, lr=lr, batch_size=64, seed=0,
                         logit_scale=10.0, **options)
    t0, c0 = time.perf_counter(), time.process_time()
    tuned, history = finetune(model, *data, config=cfg, progress=False)
    return tuned, {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                   "train_accuracy": history.epochs[-1].train_accuracy if history.epochs else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--leak", type=float, default=0.9)
    ap.add_argument("--max-delay", type=int, default=TASK.span + 1)
    ap.add_argument("--train-n", type=int, default=3000)
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--lava-samples", type=int, default=100)
    ap.add_argument("--parts", default=None,
                    help="comma-separated: timing, nmnist (default: timing, plus nmnist when the "
                         "shared MNIST is found)")
    ap.add_argument("--nmnist-train", type=int, default=2000)
    ap.add_argument("--nmnist-test", type=int, default=1000)
    ap.add_argument("--nmnist-T", type=int, default=10)
    ap.add_argument("--nmnist-ann-epochs", type=int, default=4)
    ap.add_argument("--nmnist-epochs", type=int, default=2)
    ap.add_argument("--nmnist-max-delay", type=int, default=5)
    ap.add_argument("--runs", default="no_delay,random_delay,learned_delay,learned_delay_ste,no_delay_wide")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "delays")
    ap.add_argument("--checks-only", action="store_true",
                    help="Rerun only the NIR/Norse/Lava checks of OUT/learned_delay.snn.onnx (saved "
                         "by an earlier run) and update --json.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",") if args.parts else ["timing"] + (["nmnist"] if shared_mnist() else [])
    unknown = set(parts) - {"timing", "nmnist"}
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; choose from timing, nmnist")
    x_tr, y_tr = TASK.sample(args.train_n, seed=1)
    x_te, y_te = TASK.sample(args.test_n, seed=2)
    if "timing" not in parts:
        result = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
        result["nmnist"] = nmnist_part(args)
        write(result, args.json)
        return
    if args.checks_only:
        result = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
        learned = ir.load(args.out / "learned_delay.snn.onnx")
        result.pop("lava_error", None)
        result.update(nir_check(learned, x_te[:200]))
        result.update(lava_check(learned, x_te[:args.lava_samples], x_tr[:256]))
        text = json.dumps(result, indent=1)
        print(text)
        if args.json:
            args.json.write_text(text)
        return
    base = convert(args.hidden, x_tr, args.leak, seed=0)
    floats, _ = count_params(base)
    result: dict = {"task": {k: getattr(TASK, k) for k in ("channels", "classes", "steps", "spacing",
                                                           "jitter", "noise")},
                    "train_n": args.train_n, "test_n": args.test_n, "epochs": args.epochs, "lr": args.lr,
                    "hidden": args.hidden, "leak": args.leak, "max_delay": args.max_delay,
                    "converted_accuracy": accuracy(base, x_te, y_te), "params": floats, "runs": {}}
    runs = args.runs.split(",")
    options = {"no_delay": {}, "random_delay": {"delays": args.max_delay, "train_delays": False},
               "learned_delay": {"delays": args.max_delay},
               "learned_delay_ste": {"delays": args.max_delay, "delay_ste": True}}
    tuned_models = {}
    for name in runs:
        model = base
        if name == "no_delay_wide":
            synapses = sum(a.size for a in (onnx.numpy_helper.to_array(t) for t in base.graph.initializer)
                           if a.ndim == 2)
            h = args.hidden
            while True:
                h += 1
                wide = TASK.channels * h + h * h + h * TASK.classes
                if wide >= 2 * synapses:
                    break
            model = convert(h, x_tr, args.leak, seed=0)
            opts = {}
        else:
            opts = options[name]
        tuned, info = tune(model, (x_tr, y_tr), args.epochs, args.lr, **opts)
        f, d = count_params(tuned)
        info.update(accuracy=accuracy(tuned, x_te, y_te), params=f, delay_params=d)
        if name == "no_delay_wide":
            info["hidden"] = h
        result["runs"][name] = info
        result[name] = info["accuracy"]
        tuned_models[name] = tuned
        ir.save(tuned, args.out / f"{name}.snn.onnx")
        print(f"{name}: {info}", flush=True)
    if "learned_delay" in tuned_models:
        result["delay_params"] = result["runs"]["learned_delay"]["delay_params"]
        result.update(nir_check(tuned_models["learned_delay"], x_te[:200]))
        result.update(lava_check(tuned_models["learned_delay"], x_te[:args.lava_samples], x_tr[:256]))
    if "nmnist" in parts:
        result["nmnist"] = nmnist_part(args)
    write(result, args.json)


def write(result: dict, path: Path | None) -> None:
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        path.write_text(text)


def shared_mnist() -> bool:
    """Whether the shared MNIST (for the emulated N-MNIST part) is reachable."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from datasets import mnist

        mnist("test", 1)
        return True
    except Exception:  # no shared folder: the part is left out, and said so in the output
        print("nmnist part skipped: the shared MNIST was not found", flush=True)
        return False


def nmnist_part(args) -> dict:
    """Emulated N-MNIST (pipe-D's data and CNN): no / learned / frozen random delays on the dense
    layer, fine-tuned from one converted start with one budget; held-out accuracy of each."""
    sys.path.insert(0, str(ROOT / "examples" / "pipe_d"))
    from pipe_d import ann_accuracy, event_cnn, finetune_config, make_data, to_onnx, train_ann

    from snnconvert.events import accumulate_frames
    from snnconvert.finetune import Trainer

    t0 = time.perf_counter()
    data = make_data(args.out / "nmnist_data", args.nmnist_train, args.nmnist_test, args.nmnist_T)
    steps = data.timesteps
    acc_x, acc_test = accumulate_frames(data.x), accumulate_frames(data.x_test)
    torch.manual_seed(0)
    cnn = event_cnn()
    train_ann(cnn, acc_x, data.y, acc_test, data.y_test, args.nmnist_ann_epochs)
    base = snnconvert.convert(to_onnx(cnn), acc_x[:1000], timesteps=steps, encoding="frames")
    cfg = finetune_config(steps, 1e-3, args.nmnist_epochs, 0.05, True)
    scale = Trainer(base, cfg).fit_logit_scale(data.x, data.y)
    floats, _ = count_params(base)
    result: dict = {"train_n": len(data.x), "test_n": len(data.x_test), "timesteps": steps,
                    "ann_epochs": args.nmnist_ann_epochs, "epochs": args.nmnist_epochs,
                    "max_delay": args.nmnist_max_delay, "logit_scale": float(scale),
                    "ann_accuracy": ann_accuracy(cnn, acc_test, data.y_test),
                    "converted_accuracy": accuracy(base, data.x_test, data.y_test, steps),
                    "params": floats, "runs": {}}
    options = {"no_delay": {}, "learned_delay": {"delays": args.nmnist_max_delay},
               "random_delay": {"delays": args.nmnist_max_delay, "train_delays": False}}
    for name, opts in options.items():
        run_cfg = dataclasses.replace(cfg, logit_scale=float(scale), seed=0, **opts)
        t1, c1 = time.perf_counter(), time.process_time()
        tuned, _ = finetune(base, data.x, data.y, config=run_cfg, progress=False)
        f, d = count_params(tuned)
        info = {"accuracy": accuracy(tuned, data.x_test, data.y_test, steps), "params": f, "delay_params": d,
                "seconds": time.perf_counter() - t1, "cpu_seconds": time.process_time() - c1}
        result["runs"][name] = info
        result[name] = info["accuracy"]
        ir.save(tuned, args.out / f"nmnist_{name}.snn.onnx")
        print(f"nmnist {name}: {info}", flush=True)
    result["wall_s"] = time.perf_counter() - t0
    return result


def torch_float64(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The torch runtime in float64, the reference the NIR and Lava checks compare against:
    (readout [N, classes], spike counts per neuron layer)."""
    net = SpikingNetwork(model, cpu_kernels="torch").double()
    net.record = True
    with torch.no_grad():
        readout = net(torch.as_tensor(x, dtype=torch.float64), TASK.steps).numpy()
    return readout, {name: c.numpy() for name, c in net.spike_counts.items()}


def nir_check(model: onnx.ModelProto, x: np.ndarray) -> dict:
    """Export to NIR: Delay nodes, and the NIR graph simulated against the torch runtime."""
    import nir

    from snnconvert.targets import get_target

    target = get_target("nir")
    graph, losses = target.export(model)
    delays = sum(isinstance(n, nir.Delay) for n in graph.nodes.values())
    result, counts = target.NirSimulator(graph).simulate(x, TASK.steps)
    ours, want = torch_float64(model, x)
    same = np.ones(len(x), bool)
    for name, c in want.items():
        key = re.sub(r"[^0-9A-Za-z_]", "_", name)
        same &= (counts[key] == c).reshape(len(x), -1).all(1)
    return {"nir_delay_nodes": int(delays), "nir_nodes": len(graph.nodes), "nir_losses": [str(s) for s in losses],
            "nir_equal": float(same.mean()),
            "nir_readout_max_diff": float(np.abs(result.readout[TASK.steps] - ours).max()),
            **norse_check(graph, x, result.readout[TASK.steps])}


class NirDelay(torch.nn.Module):
    """``nir.Delay`` as a stateful module for nirtorch (Norse 1.1.0's importer has none):
    y_t = x_{t - delay} per element, 0 before the first step."""

    def __init__(self, delay: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("delay", torch.as_tensor(np.asarray(delay)).round().long())

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        past = [x] + list(state or ())
        top = int(self.delay.max())
        hist = torch.stack(past + [torch.zeros_like(x)] * (top + 1 - len(past)))
        return hist.gather(0, self.delay.expand_as(x).unsqueeze(0)).squeeze(0), tuple(past[:top])


def norse_check(graph, x: np.ndarray, ours: np.ndarray) -> dict:
    """The NIR graph in Norse (its importer for every node, :class:`NirDelay` for Delay, through
    nirtorch), one sample at a time, against our NIR simulator's readout."""
    try:
        import logging

        import nir
        import nirtorch
        from norse.torch.utils import import_nir
    except ImportError as exc:
        return {"norse_equal": None, "norse_error": f"not installed ({exc})"}
    logging.getLogger().setLevel(logging.ERROR)

    def model_map(node):
        return NirDelay(node.delay) if isinstance(node, nir.Delay) else \
            import_nir._import_norse_module(node, dt=1.0)

    net = nirtorch.load(graph, model_map)
    out = []
    with torch.no_grad():
        for xi in torch.as_tensor(x):
            state, total = None, 0
            for t in range(TASK.steps):
                y, state = net(xi[t], state)
                total = total + y
            out.append((total / TASK.steps).numpy())
    out = np.stack(out)
    return {"norse_equal": float(np.mean(np.abs(out - ours).max(1) <= 1e-5)),
            "norse_agreement": float(np.mean(out.argmax(1) == ours.argmax(1))),
            "norse_readout_max_diff": float(np.abs(out - ours).max())}


def lava_check(model: onnx.ModelProto, x: np.ndarray, calib: np.ndarray) -> dict:
    """Lava float: output spikes per sample identical to the torch runtime (float64)."""
    try:
        from snnconvert.targets import get_target

        lava = get_target("lava")
        net = lava.network(model)
    except Exception as exc:  # reported, not hidden: the figure is then missing
        return {"lava_equal": None, "lava_error": f"{type(exc).__name__}: {exc}"}
    t0 = time.perf_counter()
    got = net.run(x, TASK.steps, fixed_point=False, neuron_counts=True)
    seconds = time.perf_counter() - t0
    ours, want = torch_float64(model, x)
    same = np.ones(len(x), bool)
    for name, c in want.items():
        same &= (got.counts[name] == c).reshape(len(x), -1).all(1)
    fixed = lava.network(lava.quantize(model, calib))
    got_fx = fixed.run(x, TASK.steps, fixed_point=True, neuron_counts=True)
    want_fx = fixed.reference(x, TASK.steps, fixed_point=True)
    exact = np.all(got_fx.readout == want_fx.readout, axis=1)
    for name, c in want_fx.counts.items():
        exact &= (got_fx.counts[name] == c).reshape(len(x), -1).all(1)
    return {"lava_equal": float(same.mean()), "lava_samples": len(x), "lava_seconds": seconds,
            "lava_readout_max_diff": float(np.abs(got.readout - ours).max()),
            "lava_fixed_equal_integer_reference": float(exact.mean()),
            "lava_fixed_agreement_with_torch": float(np.mean(got_fx.readout.argmax(1) == ours.argmax(1)))}


if __name__ == "__main__":
    main()
