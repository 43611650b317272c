"""pipe-D on emulated N-MNIST: a converted + fine-tuned LIF SNN against the same SNN trained from
scratch, test accuracy over wall-clock and CPU time; the done-when ratio of issue 12.

    .venv/bin/python benchmarks/bench_pipe_d.py [--json R.json] [--png curves.png]
        [--train 6000] [--test 2000] [-T 10] [--ann-epochs 8] [--budget 300] [--clock cpu]

data     : emulated N-MNIST (examples/pipe_d: the first --train / --test MNIST digits as saccade
           recordings with the real recording's noise, binned into T frames [N, T, 2, 34, 34]).
scratch  : the example's CNN, random init (seed 1), exported to ONNX and converted (encoding
           frames, thresholds from the untrained net), then trained with BPTT on the frames at T for
           --budget seconds on --clock (Adam lr --scratch-lr, cosine over the planned epochs).
pipe-D   : the same CNN trained as an ANN on the accumulated frames (mean over time) for
           --ann-epochs, converted (encoding frames), fine-tuned with BPTT on the frames (lr --lr).
           Its clock starts with the ANN training; it trains until the scratch run's time to its
           best accuracy (beyond that the ratio is over 1 anyway), or once it has reached that
           accuracy and --show-beyond (0.6) of that time has passed.
Neurons  : LIF in both runs, leak 0.05 per step at the start, learnt per layer (--leak, --fixed-leak).
Both:    test accuracy on the held-out recordings every --eval-every batches (clocks stopped).
ratio    = pipe-D's time to reach the scratch run's best accuracy / scratch's time to that best,
           on the wall clock ("ratio") and on CPU time ("ratio_cpu"; the machine may be shared).
Needs /work/shared (MNIST). Single thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "pipe_d"))

import snnconvert  # noqa: E402
from snnconvert import plots  # noqa: E402
from snnconvert.events import accumulate_frames  # noqa: E402
from snnconvert.finetune import Trainer  # noqa: E402
from snnconvert.finetune.curve import Curve, Stopwatch, train_with_curve  # noqa: E402

from pipe_d import EventData, event_cnn, finetune_config, make_data, run_pipe_d, to_onnx  # noqa: E402


def planned_epochs(budget_s: float, seconds_per_epoch: float) -> int:
    return max(1, round(budget_s / seconds_per_epoch))


def epoch_seconds(trainer: Trainer, data: EventData, clock: str, batches: int = 8) -> float:
    """Seconds per epoch on ``clock``, timed on ``batches`` batches of a throw-away trainer (to plan
    the cosine schedule of the real run over its budget)."""
    watch = Stopwatch()
    n = min(len(data.x), batches * trainer.cfg.batch_size)
    watch.start()
    trainer.run_epoch(data.x[:n], data.y[:n])
    watch.stop()
    return watch.seconds(clock) * len(data.x) / n


def run_scratch(data: EventData, args) -> tuple[Curve, dict]:
    watch = Stopwatch()
    watch.start()
    torch.manual_seed(1)
    model = to_onnx(event_cnn().eval())
    snn = snnconvert.convert(model, accumulate_frames(data.x[:1000]), timesteps=data.timesteps,
                             encoding="frames")
    watch.stop()
    per_epoch = epoch_seconds(Trainer(snn, finetune_config(data.timesteps, args.scratch_lr, 1, args.leak,
                                                           args.train_leak)), data, args.clock)
    epochs = planned_epochs(args.budget, per_epoch)
    trainer = Trainer(snn, finetune_config(data.timesteps, args.scratch_lr, epochs, args.leak, args.train_leak))
    trainer.fit_logit_scale(data.x, data.y)
    print(f"scratch: random-init CNN converted ({watch.wall_s:.1f} s), ~{per_epoch:.0f} s/epoch on "
          f"{args.clock}: cosine over {epochs} epochs, budget {args.budget:.0f} s", flush=True)
    curve = train_with_curve(trainer, data.x, data.y, data.x_test, data.y_test, budget_s=args.budget,
                             clock=args.clock, eval_every=args.eval_every, name="from scratch (BPTT)",
                             offset_wall_s=watch.wall_s, offset_cpu_s=watch.cpu_s)
    return curve, {"epochs_planned": epochs, "seconds_per_epoch": per_epoch}


def run_piped(data: EventData, args, target: float, until_s: float) -> tuple[Curve, dict]:
    """pipe-D (examples/pipe_d) on one clock from the start; fine-tuning stops at ``until_s`` on the
    clock (the scratch run's time to its best), or once ``target`` is reached and --show-beyond of
    that time has passed."""
    def enough(c: Curve) -> bool:
        reached = c.time_to_reach(target, args.clock) is not None
        return reached and c.time(c.points[-1], args.clock) >= args.show_beyond * until_s

    run = run_pipe_d(data, ann_epochs=args.ann_epochs, lr=args.lr, leak=args.leak, train_leak=args.train_leak,
                     budget_s=args.budget, clock=args.clock, epochs=args.ft_epochs, eval_every=args.eval_every,
                     deadline_s=until_s, stop=enough)
    return run.curve, run.info


def summary(scratch: Curve, piped: Curve) -> dict:
    best = scratch.best()
    out = {"scratch_best": best.accuracy,
           "scratch_time_to_best_s": scratch.time(best, "wall"),
           "scratch_cpu_time_to_best_s": scratch.time(best, "cpu"),
           "piped_best": piped.best().accuracy,
           "piped_time_to_reach_scratch_best_s": piped.time_to_reach(best.accuracy, "wall"),
           "piped_cpu_time_to_reach_scratch_best_s": piped.time_to_reach(best.accuracy, "cpu")}
    for clock, key in (("wall", "ratio"), ("cpu", "ratio_cpu")):
        reach = out["piped_time_to_reach_scratch_best_s" if clock == "wall" else
                    "piped_cpu_time_to_reach_scratch_best_s"]
        out[key] = None if reach is None else reach / scratch.time(best, clock)
    out["target_ratio"] = 0.5
    out["met"] = out["ratio"] is not None and out["ratio"] <= 0.5
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("-T", "--timesteps", type=int, default=10)
    ap.add_argument("--ann-epochs", type=int, default=8)
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of scratch training on --clock")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="the clock budgets are counted on")
    ap.add_argument("--lr", type=float, default=1e-3, help="pipe-D fine-tuning learning rate")
    ap.add_argument("--ft-epochs", type=int, default=3, help="epochs of pipe-D's cosine schedule")
    ap.add_argument("--scratch-lr", type=float, default=2e-3)
    ap.add_argument("--leak", type=float, default=0.05, help="LIF leak set before training (both runs)")
    ap.add_argument("--fixed-leak", dest="train_leak", action="store_false",
                    help="keep the leak fixed (default: each layer's leak is learnt, both runs)")
    ap.add_argument("--show-beyond", type=float, default=0.6,
                    help="pipe-D stops once it reached scratch's best and this share of scratch's time "
                         "to it has passed")
    ap.add_argument("--eval-every", type=int, default=40, help="batches (of 32) between test evaluations")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "out" / "pipe_d")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=ROOT / "out" / "pipe_d" / "pipe_d_curves.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = make_data(args.data_dir, args.train, args.test, args.timesteps)
    scratch, scratch_info = run_scratch(data, args)
    best = scratch.best()
    piped, piped_info = run_piped(data, args, best.accuracy, until_s=scratch.time(best, args.clock))
    result = summary(scratch, piped)
    result.update({"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "data": {"train": len(data.x), "test": len(data.x_test), "timesteps": data.timesteps,
                            "shape": list(data.x.shape[1:])},
                   "scratch": {**scratch_info, "curve": scratch.to_dict()},
                   "piped": {**piped_info, "curve": piped.to_dict()},
                   "benchmark_wall_s": time.perf_counter() - start})
    plots.accuracy_vs_time([scratch, piped], args.png, target=best.accuracy,
                           title=f"emulated N-MNIST ({len(data.x)} train / {len(data.x_test)} test recordings, "
                                 f"T={data.timesteps}, one CPU thread); dotted: scratch's best")
    fmt = (lambda v: "never" if v is None else f"{v:.0f} s")
    print(f"\nscratch best {best.accuracy:.4f} after {fmt(result['scratch_time_to_best_s'])} wall / "
          f"{fmt(result['scratch_cpu_time_to_best_s'])} cpu")
    print(f"pipe-D (ANN {piped_info['ann_accuracy']:.4f}, converted {piped_info['converted_accuracy']:.4f}, "
          f"best {result['piped_best']:.4f}) reached it after {fmt(result['piped_time_to_reach_scratch_best_s'])} "
          f"wall / {fmt(result['piped_cpu_time_to_reach_scratch_best_s'])} cpu")
    ratio = "-" if result["ratio"] is None else f"{result['ratio']:.2f}"
    ratio_cpu = "-" if result["ratio_cpu"] is None else f"{result['ratio_cpu']:.2f}"
    print(f"ratio {ratio} wall, {ratio_cpu} cpu (target <= 0.5: {'met' if result['met'] else 'MISSED'}); "
          f"curves: {args.png}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
