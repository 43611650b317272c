"""SpikingJelly 2.0's conversion accuracy on the sinabs MNIST CNN under each of its settings, and the
same ANN with its ReLUs shifted by a dead zone: what the "best of SpikingJelly's settings" lines of
issue 10 measure, and why some of them score above the ANN.

    /tmp/sjvenv/bin/python benchmarks/bench_spikingjelly_accuracy.py --timesteps 4,8,16,32
    /tmp/sjvenv/bin/python benchmarks/bench_spikingjelly_accuracy.py --test-set full --skip 2000

Runs in a throw-away environment that has SpikingJelly (see bench_spikingjelly.py; not a dependency
of snnconvert; it imports nothing from snnconvert). The ANN is rebuilt in torch from the shared
ONNX file's weights and converted with SpikingJelly's RateCodingRecipe (IF neurons, reset by
subtraction, the output averaged over T) on the first ``--calib-limit`` prepared calibration
images, for every setting in :data:`SETTINGS`; accuracy, agreement with the ANN's predictions and
the images gained / lost against the ANN are printed per T.

The dead-zone rows are the ANN alone, each ReLU replaced by ReLU(z - θ_c / (2T)), θ_c the channel's
maximum on the calibration images: on average, what an IF neuron starting at v(0) = 0 computes
(it rounds its rate down by half a step θ/T) against one starting at θ/2.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_spikingjelly import sinabs_cnn  # noqa: E402
from datasets import MODELS, evaluation_set  # noqa: E402

MODEL = "sinabs-mnist-cnn"
SETTINGS: list[dict] = (
    [dict(mode=m) for m in ("max", "99.9%", "99.99%", 0.5, 0.75, 0.9)]
    + [dict(mode=m, channel_wise=True, half_threshold=h) for m in ("max", "99.9%", "99.99%")
       for h in (False, True)])
"""RateCodingRecipe keyword sets: layer-wise max / percentile / fraction of max, and channel-wise
max / percentile with v(0) = 0 or θ/2."""


def dead_zone_logits(ann: torch.nn.Module, x: torch.Tensor, shifts: list[torch.Tensor] | None
                     ) -> torch.Tensor:
    """The ANN's output with its i-th ReLU replaced by ReLU(z - shifts[i]) (per channel)."""
    relus = [m for m in ann if isinstance(m, torch.nn.ReLU)]
    handles = []
    if shifts is not None:
        for relu, s in zip(relus, shifts):
            def hook(module, inputs, output, s=s):
                z = inputs[0]
                return F.relu(z - s.view(1, -1, *([1] * (z.dim() - 2))))
            handles.append(relu.register_forward_hook(hook))
    try:
        return ann(x)
    finally:
        for h in handles:
            h.remove()


def channel_max(ann: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per ReLU, the channel-wise maximum of its output on ``x``."""
    found: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda mod, i, o: found.append(
        o.transpose(0, 1).reshape(o.shape[1], -1).max(1).values)) for m in ann if isinstance(m, torch.nn.ReLU)]
    try:
        ann(x)
    finally:
        for h in handles:
            h.remove()
    return found


def compare(pred: np.ndarray, ann_pred: np.ndarray, y: np.ndarray) -> dict:
    return {"accuracy": float(np.mean(pred == y)), "agreement": float(np.mean(pred == ann_pred)),
            "gained": int(np.sum((pred == y) & (ann_pred != y))),
            "lost": int(np.sum((pred != y) & (ann_pred == y)))}


def cell(r: dict) -> str:
    return f"{100 * r['accuracy']:6.2f} {100 * r['agreement']:6.2f} +{r['gained']}/-{r['lost']}"


def main() -> None:
    from spikingjelly.activation_based import ann2snn, functional

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", default="4,8,16,32")
    ap.add_argument("--test-set", choices=("prepared", "full"), default="prepared")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N test images")
    ap.add_argument("--limit", type=int, default=None, help="test images (first N after --skip)")
    ap.add_argument("--calib-limit", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ts = sorted(int(t) for t in args.timesteps.split(","))
    ann = sinabs_cnn(MODELS[MODEL].path)
    calib = torch.from_numpy(np.load(ROOT / "benchmarks" / "data" / f"{MODEL}_calib.npz")["x"][:args.calib_limit])
    xs, y = evaluation_set(MODEL, args.test_set, args.skip, args.limit)
    x = torch.from_numpy(np.ascontiguousarray(xs))
    batches = [x[i:i + args.batch_size] for i in range(0, len(x), args.batch_size)]
    with torch.no_grad():
        ann_pred = torch.cat([ann(b) for b in batches]).argmax(1).numpy()
        theta = channel_max(ann, calib)
    print(f"{MODEL}: ANN {100 * np.mean(ann_pred == y):.2f} % on {len(y)} test images ({args.test_set}, "
          f"from image {args.skip}), {len(calib)} calibration images; accuracy %, agreement %, "
          "images gained/lost against the ANN")
    print(f"{'setting':78s} " + " ".join(f"{'T=' + str(t):>22s}" for t in ts))
    rows = []
    for s in SETTINGS:
        recipe = ann2snn.RateCodingRecipe(dataloader=[calib[i:i + 100] for i in range(0, len(calib), 100)], **s)
        snn = ann2snn.FXConverter(recipe=recipe, device="cpu").convert(copy.deepcopy(ann))
        outs: dict[int, list[np.ndarray]] = {t: [] for t in ts}
        with torch.no_grad():
            for b in batches:
                functional.reset_net(snn)
                total = 0
                for step in range(1, ts[-1] + 1):
                    total = total + snn(b)
                    if step in outs:
                        outs[step].append(total.numpy().copy())
        row = {t: compare(np.concatenate(outs[t]).argmax(1), ann_pred, y) for t in ts}
        rows.append({"setting": "spikingjelly " + json.dumps(s), "per_t": row})
        print(f"{'SpikingJelly ' + json.dumps(s):78s} " + " ".join(f"{cell(row[t]):>22s}" for t in ts), flush=True)
    row = {}
    with torch.no_grad():
        for t in ts:
            shifts = [th / (2 * t) for th in theta]
            row[t] = compare(torch.cat([dead_zone_logits(ann, b, shifts) for b in batches]).argmax(1).numpy(),
                             ann_pred, y)
    rows.append({"setting": "ANN, ReLU(z - max_c/(2T))", "per_t": row})
    print(f"{'ANN, ReLU(z - max_c / (2T)) (no spikes)':78s} " + " ".join(f"{cell(row[t]):>22s}" for t in ts))
    if args.json:
        args.json.write_text(json.dumps({"model": MODEL, "n": len(y), "test_set": args.test_set,
                                         "skip": args.skip, "ann_accuracy": float(np.mean(ann_pred == y)),
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
