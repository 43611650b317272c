"""Targets declare what they hold: `inspect --target` answers per node before any compile, and
`convert --target` refuses up front (before calibration) with the same one-line reasons."""
from __future__ import annotations

import numpy as np
import pytest

from snnconvert import api
from snnconvert.cli import main
from snnconvert.errors import TargetError
from snnconvert.frontend import load_model

FIX = "tests/fixtures"
LAVA_POOL = ("node '/MaxPool' (MaxPool): Lava has no max-pooling synapse. Hint: Convert with "
             "--maxpool-to-avgpool")


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_inspect_answers_per_target(capsys):
    pytest.importorskip("snnconvert.targets.lava")
    code, out, err = run(["inspect", f"{FIX}/digits_resnet.onnx", "--target", "torch"], capsys)
    assert code == 0 and "target torch: supported 24" in out
    code, out, err = run(["inspect", f"{FIX}/digits_resnet.onnx", "--target", "lava"], capsys)
    assert code == 2 and "target lava: supported 23, unsupported 1" in out
    assert "1 node(s) the lava target cannot hold:" in err
    assert "node '/MaxPool' (MaxPool): Lava has no max-pooling synapse. Hint: convert with" in err
    code, out, err = run(["inspect", f"{FIX}/digits_resnet.onnx", "--target", "nir"], capsys)
    assert code == 2 and "target nir: approximated 1, supported 19, unsupported 4" in out
    assert "node '/Concat_1' (Concat): the nir target cannot hold Concat." in err


def test_convert_refuses_up_front_before_calibrating(tmp_path, capsys, monkeypatch):
    pytest.importorskip("snnconvert.targets.lava")
    from snnconvert.passes import calibrate

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran before the target refused")

    monkeypatch.setattr(calibrate.Calibrate, "run", no_calibration)
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    code, _, err = run([f"{FIX}/digits_resnet.onnx", "--calib", tmp_path / "c.npz", "--target", "lava",
                        "-o", tmp_path / "r.lava"], capsys)
    assert code == 2 and err.startswith("error: " + LAVA_POOL)
    assert list(tmp_path.iterdir()) == [tmp_path / "c.npz"]


def test_maxpool_to_avgpool_makes_the_model_fit_lava():
    pytest.importorskip("snnconvert.targets.lava")
    ann = load_model(f"{FIX}/digits_resnet.onnx")
    with pytest.raises(TargetError, match="Lava has no max-pooling synapse"):
        api.check_target(ann, "lava")
    verdicts = api.check_target(ann, "lava", maxpool_to_avgpool=True)
    assert all(v.verdict.ok for v in verdicts)


@pytest.mark.parametrize("target", ["lava", "nir"])
def test_every_declared_op_has_a_translation_and_no_other(target):
    """A target's support table is its one op list: each op it declares holdable has a handler
    (Lava ``_lower_<op>``, NIR ``op_<op>``) and no handler exists for an undeclared op."""
    pytest.importorskip(f"snnconvert.targets.{target}")
    from snnconvert import ir

    if target == "lava":
        from snnconvert.targets.lava import lowering, support
        handlers = {k[len("_lower_"):] for k in vars(lowering) if k.startswith("_lower_")}
    else:
        import importlib

        from snnconvert.targets.nir import support
        exporter = importlib.import_module("snnconvert.targets.nir.export")._Exporter
        handlers = {k[len("op_"):] for k in vars(exporter) if k.startswith("op_")} - {"neuron"}
    neurons = {"Relu", "Clip", ir.NEURON_OP}  # ANN activations become the IR's neuron, lowered as such
    assert handlers == set(support.TABLE) - neurons
