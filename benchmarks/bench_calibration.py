"""Calibration for the chosen T against the previous settings, in one table: accuracy per T,
calibration seconds and peak memory, one thread.

Settings: zero (v(0)=0, 99.99 % per-channel bound), half (θ/2, the default before calibration
for T), optimized (`--v-init optimized`, fitted per T), fast (`--calibration fast`: threshold
search, bias and potential calibration per T), refit (`--calibration refit`: least-squares
weight refit, then fast's steps), temporal (`--calibration temporal`: refit, then a bias per
time step, passes/step_bias.py), full (`--calibration full`: refit, then the label-free
distillation at T, passes/distill.py), tuned (`--calibration tuned`: refit, then two epochs of
full's distillation at T ≤ 16), default (no option: what a user gets, now tuned; it repeats the
tuned row, so list one of the two). Each setting runs in its own process, so the
peak resident memory it reports (after calibration, and over the whole run with evaluation) is
its own; calibration seconds are wall time, with the process's CPU time beside them in the JSON.

    .venv/bin/python benchmarks/bench_calibration.py sinabs-mnist-cnn --timesteps 4,8,16,32
    .venv/bin/python benchmarks/bench_calibration.py resnet20-cifar10 --timesteps 4,8,16,32 \
        --limit 1000 --calib-limit 500 --json r.json

``--test-set full --skip 2000`` scores on the rest of the test split (MNIST 10,000 images, CIFAR-10
the 10,000 JPEG ones, read from the shared data) instead of the prepared first 2,000 / 1,000:
images no setting was chosen on. Beside accuracy, the JSON gives per T the images the SNN gets
right where the ANN is wrong ("gained") and the reverse ("lost"), and the distillation's log line
("guard", where one ran: its held-out samples won and lost, and whether it was kept), printed as
the "guard" line of the table.

How much of a figure is a draw: ``--draws K`` converts again K times with the calibration images
multiplied by 1 + 10⁻⁶ · N(0, 1) (a few float32 ulps, seeded by the draw's number), and
``--test-draws K`` scores the converted network again on K such nudges of the test images; each
prints the mean, standard deviation and range beside the figure as the images came. The first
measures the conversion (a deep network at low T holds neurons within an ulp of a threshold, so its
fit moves: ResNet-20's default at T=8 by points), the second the evaluation (a few tenths there).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import DATA, model_path  # noqa: E402
from datasets import MODELS, evaluation_set  # noqa: E402

SETTINGS = {
    "zero": dict(calibration="none", v_init="zero"),
    "half": dict(calibration="none", v_init="half"),
    "optimized": dict(calibration="none", v_init="optimized"),
    "fast": dict(calibration="fast"),
    "refit": dict(calibration="refit"),
    "temporal": dict(calibration="temporal"),
    "tuned": dict(calibration="tuned"),
    "full": dict(calibration="full"),
    "full-rates": dict(calibration="full", distill="rates"),
    "default": dict(),
}
PER_T = {"optimized", "fast", "refit", "temporal", "tuned", "full", "full-rates", "default"}


NUDGE = 1e-6
"""Relative size of a draw's nudge of calibration or test images (--draws, --test-draws)."""


def nudged(x: np.ndarray, draw: int) -> np.ndarray:
    """``x`` × (1 + :data:`NUDGE` · N(0, 1)), the noise seeded by ``draw``; float32."""
    noise = np.random.default_rng(draw).standard_normal(x.shape)
    return (x * (1 + NUDGE * noise)).astype(np.float32)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_setting(name: str, model: str, ts: list[int], limit: int | None, calib_limit: int | None,
                batch: int, out, progress: bool = False, test_set: str = "prepared", skip: int = 0,
                draws: int = 0, test_draws: int = 0) -> None:
    """Convert (once, or once per T) and evaluate, then the draws; put the row on ``out``."""
    import torch

    torch.set_num_threads(1)
    import snnconvert as sc
    from snnconvert.api import ann_outputs
    from snnconvert.frontend import load_model
    from snnconvert.runtime import SpikingNetwork

    calib = np.load(DATA / f"{model}_calib.npz")["x"][:calib_limit]
    x, y = evaluation_set(model, test_set, skip, limit)
    path = model_path(model)
    ann = load_model(path)
    ann_pred = ann_outputs(ann, x).argmax(1)
    right = lambda res, t: float(np.mean(res.predictions(t) == y))  # accuracy at t of a simulation
    acc, agree, seconds, cpu_seconds, calib_peak = {}, {}, {}, {}, 0.0
    gained, lost, guard = {}, {}, {}
    draw_acc: dict[int, list[float]] = {t: [] for t in ts}
    test_draw_acc: dict[int, list[float]] = {t: [] for t in ts}
    for group in ([[t] for t in ts] if name in PER_T else [ts]):
        t0, c0 = time.perf_counter(), time.process_time()
        log: list[tuple[str, str]] = []
        snn = sc.convert(ann, calib, timesteps=max(group), progress=progress, log=log, **SETTINGS[name])
        guard[max(group)] = " | ".join(m for p, m in log if p == "distill-for-T" and "held out" in m) or None
        seconds[max(group)] = time.perf_counter() - t0
        cpu_seconds[max(group)] = time.process_time() - c0
        calib_peak = max(calib_peak, _peak_mb())
        net = SpikingNetwork(snn)
        res = net.simulate(x, group, batch_size=batch)
        for t in group:
            pred = res.predictions(t)
            acc[t], agree[t] = right(res, t), float(np.mean(pred == ann_pred))
            gained[t] = [skip + int(i) for i in np.flatnonzero((pred == y) & (ann_pred != y))]
            lost[t] = [skip + int(i) for i in np.flatnonzero((pred != y) & (ann_pred == y))]
        for draw in range(test_draws):
            res = net.simulate(nudged(x, 1000 + draw), group, batch_size=batch)
            for t in group:
                test_draw_acc[t].append(right(res, t))
        for draw in range(draws):
            res = SpikingNetwork(sc.convert(ann, nudged(calib, draw), timesteps=max(group),
                                            **SETTINGS[name])).simulate(x, group, batch_size=batch)
            for t in group:
                draw_acc[t].append(right(res, t))
    out.put({"setting": name, "accuracy": acc, "agreement": agree, "calib_seconds": seconds,
             "calib_cpu_seconds": cpu_seconds,
             "gained": gained, "lost": lost, "guard": guard,
             "draws": draw_acc, "test_draws": test_draw_acc,
             "calib_peak_mb": calib_peak, "peak_mb": _peak_mb(),
             "ann_accuracy": float(np.mean(ann_pred == y)), "n": len(x), "n_calib": len(calib),
             "test_set": test_set, "skip": skip})


def _verdict(message: str | None) -> str:
    """``won/lost`` and k(ept) or d(ropped) from the distillation's log lines, joined by "+" where
    it distilled on (`tuned` where its two epochs paid); "-" where none ran."""
    if message is None:
        return "-"
    found = re.findall(r"(\d+) won, (\d+) lost\): (kept|dropped)", message)
    if not found:
        raise ValueError(f"the distillation's log line changed; update _verdict: {message!r}")
    return "+".join(f"{w}/{lo} {k[0]}" for w, lo, k in found)


def _spread(label: str, ts: list[int], accs: dict[int, list[float]]) -> str:
    """One table line: per T the mean of the draws' accuracies, then their SD and range."""
    stats = {t: 100 * np.asarray(accs[t]) for t in ts}
    sd = {t: stats[t].std(ddof=1) if len(stats[t]) > 1 else 0.0 for t in ts}
    return (f"{label:10s} " + " ".join(f"{stats[t].mean():7.2f}" for t in ts)
            + f"   mean of {len(stats[ts[0]])}; SD / range per T "
            + "  ".join(f"{sd[t]:.2f} / {stats[t].min():.2f}-{stats[t].max():.2f}" for t in ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--timesteps", default="4,8,16,32")
    ap.add_argument("--settings", default="zero,half,optimized,fast,refit,default,full")
    ap.add_argument("--test-set", choices=("prepared", "full"), default="prepared",
                    help="prepared: benchmarks/data's test file; full: the whole test split (shared data)")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N test samples")
    ap.add_argument("--limit", type=int, default=None, help="test samples (first N after --skip)")
    ap.add_argument("--calib-limit", type=int, default=None, help="calibration samples (first N)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--progress", action="store_true", help="progress bars of the calibration")
    ap.add_argument("--draws", type=int, default=0,
                    help="convert again K times on nudged calibration images, K times the conversion's "
                         "cost (see above)")
    ap.add_argument("--test-draws", type=int, default=0,
                    help="score the network again on K nudges of the test images (see above)")
    args = ap.parse_args()
    ts = sorted(int(t) for t in args.timesteps.split(","))
    ctx = mp.get_context("spawn")
    rows = []
    for name in args.settings.split(","):
        queue = ctx.Queue()
        proc = ctx.Process(target=run_setting, args=(name, args.model, ts, args.limit, args.calib_limit,
                                                        args.batch_size, queue, args.progress,
                                                        args.test_set, args.skip, args.draws,
                                                        args.test_draws))
        proc.start()
        row = queue.get()
        proc.join()
        rows.append(row)
        if len(rows) == 1:
            where = "" if args.test_set == "prepared" and not args.skip else \
                f" ({args.test_set} test split from image {args.skip})"
            print(f"{args.model}: ANN {100 * row['ann_accuracy']:.2f} % on {row['n']} test samples{where}, "
                  f"{row['n_calib']} calibration samples; one thread")
            print(f"{'setting':10s} " + " ".join(f"{'T=' + str(t):>7s}" for t in ts)
                  + "   calib s per T" + " " * 12 + "calib peak MB  run peak MB")
        secs = "/".join(f"{row['calib_seconds'][t]:.0f}" for t in sorted(row["calib_seconds"]))
        print(f"{name:10s} " + " ".join(f"{100 * row['accuracy'][t]:7.2f}" for t in ts)
              + f"   {secs:26s} {row['calib_peak_mb']:8.0f} {row['peak_mb']:12.0f}", flush=True)
        print(f"{'  agree':10s} " + " ".join(f"{100 * row['agreement'][t]:7.2f}" for t in ts)
              + "   vs the ANN: images gained/lost " + " ".join(
                  f"+{len(row['gained'][t])}/-{len(row['lost'][t])}" for t in ts), flush=True)
        if any(row["guard"].values()):
            print(f"{'  guard':10s} " + " ".join(f"{_verdict(row['guard'].get(t)):>7s}" for t in ts)
                  + "   the distillation's guard: held-out samples won/lost, kept (k) or dropped (d)",
                  flush=True)
        if args.draws:
            print(_spread("  draws", ts, row["draws"]), flush=True)
        if args.test_draws:
            print(_spread("  test drw", ts, row["test_draws"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "timesteps": ts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
