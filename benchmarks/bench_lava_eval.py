"""Wall time of ``snnconvert eval`` on the torch and Lava targets (float, fixed point), one run.

    .venv/bin/python benchmarks/bench_lava_eval.py [--model example|sinabs-mnist-cnn] [--n 1000] [--t 32]

Each command is the one a user types (on-the-fly conversion from the ANN and calibration data,
one thread); it is timed as a subprocess, so start-up, conversion and Lava's compile count.
Prints one JSON line per target with seconds, accuracy and the ratio to the torch target.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def model_and_data(name: str) -> tuple[Path, Path, Path]:
    if name == "example":
        ex = ROOT / "examples" / "mnist"
        return ex / "model.onnx", ex / "calib.npz", ex / "test.npz"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from datasets import MODELS

    data = ROOT / "benchmarks" / "data"
    return Path(MODELS[name].path), data / f"{name}_calib.npz", data / f"{name}_test.npz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="example")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--t", type=int, default=32)
    args = ap.parse_args()
    model, calib, test = model_and_data(args.model)
    exe = str(Path(sys.executable).parent / "snnconvert")
    base = [exe, "--threads", "1", "eval", str(model), "--calib", str(calib), "--data", str(test),
            "--limit", str(args.n), "--timesteps", str(args.t)]
    torch_seconds = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("torch", ["--target", "torch"]), ("lava-float", ["--target", "lava"]),
                             ("lava-fixed", ["--target", "lava", "--fixed-point"])):
            out = Path(tmp) / f"{label}.json"
            t0 = time.perf_counter()
            proc = subprocess.run(base + extra + ["--json", str(out)], capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{label} failed: {proc.stderr.strip().splitlines()[-1:]}")
            report = json.loads(out.read_text())
            torch_seconds = torch_seconds or seconds
            row = report["snn"][0]
            print(json.dumps({"model": args.model, "target": label, "n": args.n, "T": args.t,
                              "seconds": round(seconds, 1), "accuracy": row["accuracy"],
                              "ann_accuracy": report["ann"]["accuracy"],
                              "ratio_to_torch": round(seconds / torch_seconds, 2)}), flush=True)


if __name__ == "__main__":
    main()
