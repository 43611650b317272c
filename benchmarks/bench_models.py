"""Convert every shared model and print one table: converts?, ANN and SNN accuracy at T=16/32/64, time.

Trained models use benchmarks/data/<model>_{calib,test}.npz (written by prepare_data.py): the
first --mnist-n (default 1,000) MNIST test images, the first --cifar-n (default 1,000, all
prepared, class-balanced) CIFAR-10 test images. The "± SE" column is the binomial standard
error of an accuracy near the ANN's on that many images, √(p(1−p)/n): differences within about
one SE are noise (on 200 CIFAR images 1 pt is 2 images). The imagenet-arch-light graphs have meaningless weights:
they are calibrated on 4 random inputs and run once at T=4 on 2 images, or their refusal is shown.

    .venv/bin/python benchmarks/bench_models.py [--only NAME] [--mnist-n 1000] [--cifar-n 1000]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import DATA_DIR, MODELS, shared  # noqa: E402

import snnconvert  # noqa: E402
from snnconvert import frontend  # noqa: E402
from snnconvert.data import input_shape  # noqa: E402
from snnconvert.errors import SnnConvertError  # noqa: E402
from snnconvert.runtime import SpikingNetwork  # noqa: E402

TIMESTEPS = (16, 32, 64)
LIGHT = ("light_resnet50", "light_squeezenet", "light_vgg19", "light_inception_v1")


@dataclass
class Row:
    model: str
    converts: str
    n_test: int = 0
    ann: float | None = None
    snn: dict[int, float] | None = None
    seconds: float = 0.0
    note: str = ""


def _load(stem: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    path = DATA_DIR / f"{stem}.npz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run .venv/bin/python benchmarks/prepare_data.py first")
    with np.load(path) as d:
        return d["x"][:n], d["y"][:n]


def trained(name: str, n_test: int, t_tune: int) -> Row:
    """Convert ``name`` on its calibration file and evaluate ANN and SNN on n_test test images."""
    path = MODELS[name].path
    xc, _ = _load(f"{name}_calib", None)
    xt, yt = _load(f"{name}_test", n_test)
    ann = frontend.load_model(path)
    snn_acc, seconds, ann_acc = {}, 0.0, None
    # default conversion: calibrated for the T it runs at, so one conversion per T
    for t in ([t_tune] if t_tune else TIMESTEPS):
        t0 = time.perf_counter()
        try:
            snn = snnconvert.convert(path, xc, timesteps=t)
        except SnnConvertError as exc:
            return Row(name, "no", note=str(exc).splitlines()[0])
        seconds += time.perf_counter() - t0
        ts = list(TIMESTEPS) if t_tune else [t]
        report = snnconvert.evaluate(snn, xt, yt, ts, ann=ann, batch_size=50)
        snn_acc.update({r.timesteps: r.accuracy for r in report.rows})
        ann_acc = report.ann_accuracy
    return Row(name, "yes", len(xt), ann_acc, snn_acc, seconds)


def light(name: str) -> Row:
    """Convert a random-weight ImageNet graph (4 random calibration inputs) and run T=4 on 2 images."""
    path = shared("models", "imagenet-arch-light", f"{name}.onnx")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    try:
        model = frontend.load_model(path)
        shape = input_shape(model)
        calib = rng.random((4, *shape), dtype=np.float32)
        snn = snnconvert.convert(model, calib, timesteps=4, v_init="half", per_channel=True)
    except SnnConvertError as exc:
        return Row(name, "refused", note=str(exc).replace("\n", " "))
    seconds = time.perf_counter() - t0
    out = SpikingNetwork(snn).simulate(calib[:2], [4]).readout[4]
    ok = out.shape[0] == 2 and np.isfinite(out).all()
    return Row(name, "yes", 2, seconds=seconds,
               note=f"T=4 forward on 2 images: output {list(out.shape)}, finite={bool(ok)}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:5.1f}"


def standard_error(p: float | None, n: int) -> float | None:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images."""
    return None if p is None or n <= 0 else float(np.sqrt(p * (1 - p) / n))


def print_table(rows: list[Row]) -> None:
    head = f"{'model':20s} {'converts':8s} {'n_test':>6s} {'ANN %':>6s} {'± SE':>5s} " + " ".join(
        f"{'T=' + str(t):>6s}" for t in TIMESTEPS) + f" {'convert s':>9s}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        snn = " ".join(f"{_pct((r.snn or {}).get(t)):>6s}" for t in TIMESTEPS)
        print(f"{r.model:20s} {r.converts:8s} {r.n_test:>6d} {_pct(r.ann):>6s} "
              f"{_pct(standard_error(r.ann, r.n_test)):>5s} {snn} "
              f"{r.seconds:>9.1f}  {r.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", help="model name (repeatable)")
    parser.add_argument("--mnist-n", type=int, default=1000)
    parser.add_argument("--cifar-n", type=int, default=1000)
    parser.add_argument("--tune-t", type=int, default=None,
                        help="one conversion tuned for this T, evaluated at every T (default: the "
                             "default conversion, calibrated for each T)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.only or [*MODELS, *LIGHT]
    rows = []
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        if name in LIGHT:
            row = light(name)
        else:
            n = args.mnist_n if MODELS[name].dataset == "mnist" else args.cifar_n
            row = trained(name, n, args.tune_t)
        rows.append(row)
        print(f"[{time.perf_counter() - t0:6.1f} s] {name}", file=sys.stderr, flush=True)
    print_table(rows)
    tuned = f"tuned for T={args.tune_t}" if args.tune_t else "calibrated for each T (default flags)"
    print(f"\ntotal {time.perf_counter() - start:.0f} s; SNN = torch target, {tuned}")


if __name__ == "__main__":
    main()
