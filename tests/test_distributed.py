"""Two processes on CPU (torchrun, gloo): fine-tuning gives the single-process network, a run
interrupted mid-epoch resumes with another process count, and eval (with on-the-fly
calibration) prints exactly the single-process figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from snnconvert import api, ir
from snnconvert.cli import main
from snnconvert.finetune import checkpoint as ckpt

FIX = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], cwd: Path, script: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2`` of the CLI (or of ``script``), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    target = [str(script)] if script else ["-m", "snnconvert", "--threads", "1"]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", *target, *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def cli(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--threads", "1", *args])
    assert exc.value.code == 0


@pytest.fixture(scope="module")
def work(tmp_path_factory, digits):
    d = tmp_path_factory.mktemp("dist")
    snn = api.convert(str(FIX / "digits_cnn.onnx"), digits["x_train"][:300], timesteps=4)
    ir.save(snn, d / "d.snn.onnx")
    np.savez(d / "train.npz", x=digits["x_train"][:330], y=digits["y_train"][:330])
    np.savez(d / "val.npz", x=digits["x_test"][:250], y=digits["y_test"][:250])
    return d


def _params(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in ir.load(path).graph.initializer}


def _assert_same_network(a: Path, b: Path) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-5, atol=1e-6, err_msg=k)


FINETUNE = ["finetune", "d.snn.onnx", "--data", "train.npz", "-T", "4", "--epochs", "1",
            "--lr", "2e-3", "--batch-size", "64"]

INTERRUPT = textwrap.dedent("""
    # Stop both ranks right after the first mid-epoch checkpoint (rank 0 writes it first).
    import sys
    import torch.distributed as dist
    from snnconvert.cli import main
    from snnconvert.finetune import checkpoint, trainer

    save, state = checkpoint.save, trainer.Trainer.state

    def save_then_stop(path, st):
        save(path, st)
        raise KeyboardInterrupt

    def state_then_stop(self):
        if dist.get_rank() != 0 and self.step:
            raise KeyboardInterrupt
        return state(self)

    checkpoint.save, trainer.Trainer.state = save_then_stop, state_then_stop
    main(["--threads", "1", *sys.argv[1:]])
""")


def test_two_process_finetune_matches_one_and_resumes_with_one(work, monkeypatch):
    monkeypatch.chdir(work)
    cli([*FINETUNE, "-o", "one.snn.onnx"])
    run = torchrun([*FINETUNE, "-o", "two.snn.onnx"], work)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same_network(work / "one.snn.onnx", work / "two.snn.onnx")
    assert ckpt.load(work / "two.snn.onnx.ckpt")["processes"] == 2
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("two")) == \
        ["two.snn.onnx", "two.snn.onnx.ckpt"]  # written once, whole

    script = work / "interrupt.py"
    script.write_text(INTERRUPT)
    run = torchrun([*FINETUNE, "-o", "cut.snn.onnx", "--checkpoint-every", "2"], work, script)
    assert run.returncode != 0 and not (work / "cut.snn.onnx").exists()
    state = ckpt.load(work / "cut.snn.onnx.ckpt")
    assert (state["epoch"], state["step"], state["processes"]) == (0, 2, 2)
    cli([*FINETUNE, "-o", "cut.snn.onnx", "--resume", "cut.snn.onnx.ckpt"])
    _assert_same_network(work / "one.snn.onnx", work / "cut.snn.onnx")


def test_two_process_eval_equals_one_exactly(work, monkeypatch):
    monkeypatch.chdir(work)
    args = ["eval", str(FIX / "digits_cnn.onnx"), "--calib", "train.npz", "--data", "val.npz",
            "--timesteps", "2,4", "--batch-size", "48"]
    cli([*args, "--json", "one.json"])
    run = torchrun([*args, "--json", "two.json"], work)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes" in run.stdout
    assert (work / "one.json").read_text() == (work / "two.json").read_text()
    one = json.loads((work / "one.json").read_text())
    assert one["samples"] == 250
    assert one["snn"][1]["layer_rates"] and 0 < one["snn"][1]["firing_rate"] < 1


TEARDOWN = textwrap.dedent("""
    import atexit, sys
    from snnconvert.cli import main
    atexit.register(print, "interpreter teardown")
    main(sys.argv[1:])
""")


@pytest.mark.parametrize("argv, code", [(["inspect", str(FIX / "digits_cnn.onnx")], 0),
                                        (["inspect", "missing.onnx"], 2)])
def test_a_launched_rank_ends_with_its_code_and_without_the_interpreters_teardown(tmp_path, argv, code):
    # a rank's backend threads may still be finishing when it ends: a teardown that ran
    # alongside them could abort the process after its work was written (see end_process)
    script = tmp_path / "rank.py"
    script.write_text(TEARDOWN)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2"}
    run = subprocess.run([sys.executable, str(script), *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == code, run.stderr
    assert "interpreter teardown" not in run.stdout
    alone = subprocess.run([sys.executable, str(script), *argv], cwd=tmp_path,
                           env={**env, "WORLD_SIZE": "1"}, capture_output=True, text=True, timeout=120)
    assert alone.returncode == code and "interpreter teardown" in alone.stdout


def test_a_tensor_handed_to_the_backend_is_held_until_the_backend_lets_go(monkeypatch):
    # the backend's reference is played by a view (it holds the tensor as a gloo worker does)
    import threading
    import torch

    from snnconvert import distributed

    monkeypatch.setattr(distributed, "_HANDED", [])
    t = torch.zeros(3)
    backend = t.view(3)
    distributed._hand(t)
    distributed._hand(torch.zeros(1))  # the next collective releases only what was let go of
    assert any(h is t for h in distributed._HANDED)
    del backend
    distributed._hand(torch.zeros(1))
    assert not any(h is t for h in distributed._HANDED) and len(distributed._HANDED) == 1

    late = torch.zeros(2)
    backend = [late.view(2)]
    distributed._hand(late)
    threading.Timer(0.2, backend.clear).start()  # the backend lets go 0.2 s later
    distributed._let_go(wait_s=30.0)  # what runs at exit waits for it, no longer
    assert late._use_count() == 1 and distributed._HANDED == []
