"""`-o` decides one path per artifact: every target, every spelling, each file read back with its
own reader (ir.load, torch.load, nir.read, the Lava target's load); nothing collides."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from helpers import needs_lava
from snnconvert import ir
from snnconvert.cli import main

FIX = "tests/fixtures"
SUFFIX = {"torch": ".pt", "lava": ".lava", "nir": ".nir"}


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(scope="module")
def calib(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=digits["x_train"][:64])
    return path


def read_artifact(target: str, path):
    """The artifact through its own reader, and the IR it carries."""
    if target == "torch":
        blob = torch.load(str(path), map_location="cpu", weights_only=False)
        import onnx
        return onnx.load_from_string(blob["ir"])
    if target == "nir":
        import nir
        graph = nir.read(str(path))
        assert any(type(n).__name__ == "IF" for n in graph.nodes.values())
        return None
    lava = pytest.importorskip("snnconvert.targets.lava")
    return lava.load(path).model


# -o spelling -> (IR name, artifact base name) inside the output directory
SPELLINGS = {
    None: ("digits_cnn.snn.onnx", "digits_cnn"),
    "m.snn.onnx": ("m.snn.onnx", "m"),
    "m.onnx": ("m.onnx", "m"),
    "m": ("m", "m"),
    "ARTIFACT": ("m.snn.onnx", "m"),
    "sub/dir/ARTIFACT": ("sub/dir/m.snn.onnx", "sub/dir/m"),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS), ids=[str(s) for s in SPELLINGS])
@pytest.mark.parametrize("target", ["torch", "lava", "nir"])
def test_every_target_and_spelling_writes_two_readable_files(tmp_path, calib, capsys, target, spelling):
    if target == "lava":
        pytest.importorskip("snnconvert.targets.lava")
    if target == "nir":
        pytest.importorskip("nir")
    model = tmp_path / "digits_cnn.onnx"
    shutil.copy(f"{FIX}/digits_cnn.onnx", model)
    args = [model, "--calib", calib, "-T", "4", "--target", target]
    if spelling is not None:
        args += ["-o", tmp_path / spelling.replace("ARTIFACT", "m" + SUFFIX[target])]
    code, out, err = run(args, capsys)
    assert code == 0, err
    ir_name, base = SPELLINGS[spelling]
    ir_path, artifact = tmp_path / ir_name, tmp_path / (base + SUFFIX[target])
    assert f"wrote {ir_path} and {artifact} (target {target}" in out
    snn = ir.load(ir_path)
    carried = read_artifact(target, artifact)
    if carried is not None:
        assert [n.op_type for n in carried.graph.node] == [n.op_type for n in snn.graph.node]
    written = {p for p in tmp_path.rglob("*") if p.is_file() and p != model}
    assert written == {ir_path} | ({p for p in artifact.rglob("*") if p.is_file()}
                                   if artifact.is_dir() else {artifact})


@pytest.mark.parametrize("target,other", [("nir", ".pt"), ("torch", ".nir"),
                                          pytest.param("lava", ".pt", marks=needs_lava)])
def test_another_targets_suffix_is_refused_before_any_work(tmp_path, calib, capsys, target, other):
    out = tmp_path / f"m{other}"
    code, _, err = run([f"{FIX}/digits_cnn.onnx", "--calib", calib, "--target", target, "-o", out], capsys)
    assert code == 2
    assert err.startswith(f"error: -o {out} names a ") and f"but the target is {target}" in err
    assert list(tmp_path.iterdir()) == []
