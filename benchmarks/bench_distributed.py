"""torchrun on CPU (gloo): fine-tuning sinabs-mnist-cnn at T=4 for one epoch with 1 and 2
processes, a 2-process run interrupted (SIGTERM) mid-epoch and resumed with 1 process, and eval
with 1 and 2 processes. One thread per process.

    .venv/bin/python benchmarks/bench_distributed.py [--train-n 5000] [--out-dir /tmp/bench_distributed]
        [--json R.json]

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


def accuracy_json(model: str, data: Path, ts: str, cwd: Path, json_name: str, launcher=CLI) -> dict:
    run([*launcher, "eval", model, "--data", str(data), "--timesteps", ts, "--json", json_name], cwd)
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
    print("fine-tune one epoch: 1 process, then 2")
    t1 = run([*CLI, *finetune, "-o", "one.snn.onnx"], out)
    t2 = run([*TORCHRUN, *finetune, "-o", "two.snn.onnx"], out)
    print("interrupt a 2-process run, resume it with 1")
    cut = interrupted_then_resumed(finetune, out, every=20)
    print("run-to-run reference: 1 process, another shuffling seed")
    run([*CLI, *finetune, "-o", "seed1.snn.onnx", "--seed", "1"], out)
    full = out / "mnist_test10000.npz"
    if not full.exists():
        images, labels = mnist("test")
        np.savez(full, x=preprocess("sinabs-mnist-cnn", images), y=labels)
    acc = {}
    for data in (test, full):
        print("evaluate (T=4) on", data.name)
        acc[data.name] = {name: accuracy_json(f"{name}.snn.onnx", data, "4", out, f"{name}.json")["snn"][0]["accuracy"]
                          for name in ("sinabs", "one", "two", "cut", "seed1")}
    print("eval with 1 and 2 processes (T=4,8)")
    e1 = accuracy_json("one.snn.onnx", test, "4,8", out, "eval1.json")
    e2 = accuracy_json("one.snn.onnx", test, "4,8", out, "eval2.json", TORCHRUN)
    result = {
        "accuracy_T4": acc, "difference_pt_2_vs_1": {k: 100 * (v["two"] - v["one"]) for k, v in acc.items()},
        "finetune_seconds": {"1": t1, "2": t2}, "param_max_rel_diff_2_vs_1":
            max_relative_difference(out / "one.snn.onnx", out / "two.snn.onnx"),
        "interrupted": cut, "eval_1_equals_2": e1 == e2,
        "eval": {"1": e1["snn"], "2": e2["snn"]},
    }
    print(f"\nfine-tuning one epoch ({args.train_n} images, T=4): 1 process {t1:.0f} s, 2 processes {t2:.0f} s; "
          f"parameters 2 vs 1 max rel. diff {result['param_max_rel_diff_2_vs_1']:.1e}")
    print(f"{'accuracy at T=4 on':24s} {'converted':>9s} {'1 proc':>8s} {'2 procs':>8s} {'2-1 (pt)':>9s} "
          f"{'2->1 cut':>9s} {'seed 1':>8s}")
    for name, a in acc.items():
        print(f"{name:24s} {100 * a['sinabs']:9.2f} {100 * a['one']:8.2f} {100 * a['two']:8.2f} "
              f"{100 * (a['two'] - a['one']):+9.2f} {100 * a['cut']:9.2f} {100 * a['seed1']:8.2f}")
    print(f"interrupted at step {cut['checkpoint_step']} of the epoch (2 processes), resumed with 1 process: finished")
    for r1, r2 in zip(e1["snn"], e2["snn"]):
        print(f"eval T={r1['timesteps']}: 1 process acc {r1['accuracy']:.4f} rate {r1['firing_rate']:.6f} | "
              f"2 processes acc {r2['accuracy']:.4f} rate {r2['firing_rate']:.6f}")
    print("eval JSON identical (accuracy, agreement, firing and per-layer rates):", result["eval_1_equals_2"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
