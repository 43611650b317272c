"""torchrun on CPU (gloo): fine-tuning sinabs-mnist-cnn at T=4 for one epoch with 1 and 2
processes (per shuffling seed: the two runs differ only by float reduction order, which the
spiking nonlinearity amplifies over an epoch, so several seeds show the spread), a 2-process run interrupted (SIGTERM) mid-epoch and resumed with 1 process, and eval
with 1 and 2 processes. One thread per process.

    .venv/bin/python benchmarks/bench_distributed.py [--train-n 5000] [--seeds 0,1,2]
        [--out-dir /tmp/bench_distributed] [--json R.json]

Needs benchmarks/data (python benchmarks/prepare_data.py) and ../shared/models.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from datasets import DATA_DIR, MODELS, mnist, preprocess  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "snnconvert", "--threads", "1"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "snnconvert", "--threads", "1"]


def run(cmd: list[str], cwd: Path) -> float:
    """Run ``cmd`` (printed) and return its wall time; a failure stops the benchmark."""
    print("  $", " ".join(str(c) for c in cmd).replace(sys.executable, "python"), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def accuracy_json(model: str, data: Path, ts: str, cwd: Path, json_name: str, launcher=CLI,
                  extra: tuple[str, ...] = ()) -> dict:
    run([*launcher, "eval", model, "--data", str(data), "--timesteps", ts, "--json", json_name, *extra], cwd)
    return json.loads((cwd / json_name).read_text())


def interrupted_then_resumed(finetune: list[str], cwd: Path, every: int) -> dict:
    """2 processes with a checkpoint every ``every`` global batches, SIGTERM once one is written,
    then the rest with 1 process."""
    import torch

    ck = cwd / "cut.snn.onnx.ckpt"
    ck.unlink(missing_ok=True)
    cmd = [*TORCHRUN, *finetune, "-o", "cut.snn.onnx", "--checkpoint-every", str(every)]
    print("  $", " ".join(cmd).replace(sys.executable, "python"), "  (SIGTERM after the first checkpoint)")
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    while not ck.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()
    state = torch.load(ck, weights_only=False)
    print(f"    stopped: exit {proc.returncode}, checkpoint at epoch {state['epoch']} step {state['step']} "
          f"({state['processes']} processes)")
    seconds = run([*CLI, *finetune, "-o", "cut.snn.onnx", "--resume", ck.name], cwd)
    return {"stopped_exit": proc.returncode, "checkpoint_step": state["step"],
            "checkpoint_processes": state["processes"], "resume_seconds": seconds}


def max_relative_difference(a: Path, b: Path) -> float:
    from onnx import numpy_helper

    from snnconvert import ir

    pa = {t.name: numpy_helper.to_array(t) for t in ir.load(a).graph.initializer}
    pb = {t.name: numpy_helper.to_array(t) for t in ir.load(b).graph.initializer}
    return max(float(np.abs(pa[k] - pb[k]).max() / max(np.abs(pa[k]).max(), 1e-12))
               for k in pa if pa[k].dtype.kind == "f")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-n", type=int, default=5000)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/bench_distributed"))
    ap.add_argument("--seeds", default="0,1,2", help="shuffling seeds: one 1- and one 2-process run each")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    calib, test = DATA_DIR / "sinabs-mnist-cnn_calib.npz", DATA_DIR / "sinabs-mnist-cnn_test.npz"
    train = DATA_DIR / "mnist_train5000.npz"
    print("convert sinabs-mnist-cnn at T=4")
    run([*CLI, str(MODELS["sinabs-mnist-cnn"].path), "--calib", str(calib), "-T", "4",
         "-o", "sinabs.snn.onnx"], out)
    finetune = ["finetune", "sinabs.snn.onnx", "--data", str(train), "--limit", str(args.train_n),
                "-T", "4", "--epochs", "1", "--batch-size", "64"]
    seeds = [int(v) for v in args.seeds.split(",")]
    seconds = {}
    for seed in seeds:
        print(f"fine-tune one epoch, shuffling seed {seed}: 1 process, then 2")
        seconds[f"one{seed}"] = run([*CLI, *finetune, "--seed", str(seed), "-o", f"one{seed}.snn.onnx"], out)
        seconds[f"two{seed}"] = run([*TORCHRUN, *finetune, "--seed", str(seed), "-o", f"two{seed}.snn.onnx"], out)
    print("interrupt a 2-process run, resume it with 1")
    cut = interrupted_then_resumed([*finetune, "--seed", str(seeds[0])], out, every=20)
    full = out / "mnist_test10000.npz"
    if not full.exists():
        images, labels = mnist("test")
        np.savez(full, x=preprocess("sinabs-mnist-cnn", images), y=labels)
    names = ["sinabs", "cut"] + [f"{k}{s}" for s in seeds for k in ("one", "two")]
    acc = {}
    for data in (test, full):
        print("evaluate (T=4) on", data.name)
        acc[data.name] = {name: accuracy_json(f"{name}.snn.onnx", data, "4", out, f"{name}.json")["snn"][0]["accuracy"]
                          for name in names}
    # --synapses auto picks event or dense kernels per layer by timing, and the two differ in
    # float32 summation order: exact equality needs one kernel choice in both runs.
    print("eval with 1 and 2 processes (T=4,8, dense synaptic kernels)")
    dense = ("--synapses", "dense")
    e1 = accuracy_json(f"one{seeds[0]}.snn.onnx", test, "4,8", out, "eval1.json", CLI, dense)
    e2 = accuracy_json(f"one{seeds[0]}.snn.onnx", test, "4,8", out, "eval2.json", TORCHRUN, dense)
    diffs = {k: [100 * (v[f"two{s}"] - v[f"one{s}"]) for s in seeds] for k, v in acc.items()}
    result = {
        "accuracy_T4": acc, "difference_pt_2_vs_1": diffs, "seconds": seconds,
        "param_max_rel_diff_2_vs_1": {s: max_relative_difference(out / f"one{s}.snn.onnx", out / f"two{s}.snn.onnx")
                                      for s in seeds},
        "interrupted": cut, "eval_1_equals_2": e1 == e2, "eval": {"1": e1["snn"], "2": e2["snn"]},
    }
    print(f"\nfine-tuning one epoch ({args.train_n} images, T=4, batch 64), accuracy at T=4 (%):")
    for name, a in acc.items():
        print(f"  {name}: converted {100 * a['sinabs']:.2f}; resumed 2->1 processes (seed {seeds[0]}) "
              f"{100 * a['cut']:.2f}")
        for s, d in zip(seeds, diffs[name]):
            print(f"    seed {s}: 1 process {100 * a[f'one{s}']:.2f}  2 processes {100 * a[f'two{s}']:.2f}  "
                  f"difference {d:+.2f} pt")
        ones = [100 * a[f"one{s}"] for s in seeds]
        print(f"    mean difference {np.mean(diffs[name]):+.2f} pt, mean |difference| "
              f"{np.mean(np.abs(diffs[name])):.2f} pt; 1-process spread over seeds "
              f"{max(ones) - min(ones):.2f} pt")
    for s in seeds:
        print(f"  seed {s}: 1 process {seconds[f'one{s}']:.0f} s, 2 processes {seconds[f'two{s}']:.0f} s (wall, "
              f"incl. start-up); parameters 2 vs 1 max rel. diff {result['param_max_rel_diff_2_vs_1'][s]:.1e}")
    print(f"interrupted at step {cut['checkpoint_step']} of the epoch (2 processes), resumed with 1 process: finished")
    for r1, r2 in zip(e1["snn"], e2["snn"]):
        print(f"eval T={r1['timesteps']}: 1 process acc {r1['accuracy']:.4f} rate {r1['firing_rate']:.6f} | "
              f"2 processes acc {r2['accuracy']:.4f} rate {r2['firing_rate']:.6f}")
    print("eval JSON identical (accuracy, agreement, firing and per-layer rates):", result["eval_1_equals_2"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
