"""No plain exception reaches a user from the runtime or a target: a graph the converter cannot
run is refused up front by inspect/convert/eval, naming the node, with a hint (exit 2)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from snnconvert import ir
from snnconvert.cli import main
from snnconvert.errors import UnsupportedModelError
from snnconvert.runtime import SpikingNetwork
from test_runtime_ops_util import make_model, rand

mk = helper.make_node
SLICE_REFUSAL = ("node 'flip' (Slice): Slice steps [-1] reverse an axis, which is not supported "
                 "(only forward slices).")


def _flip_model() -> onnx.ModelProto:
    """Conv -> Relu -> Slice(step -1) -> Flatten -> Gemm: the graph of issue 11."""
    nodes = [mk("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), mk("Relu", ["c"], ["r"], name="relu"),
             mk("Slice", ["r", "st", "en", "ax", "sp"], ["s"], name="flip"),
             mk("Flatten", ["s"], ["f"], name="flat"), mk("Gemm", ["f", "g"], ["y"], name="fc", transB=1)]
    inits = {"w": rand(2, 1, 3, 3), "st": np.array([-1], np.int64), "en": np.array([-(2 ** 62)], np.int64),
             "ax": np.array([3], np.int64), "sp": np.array([-1], np.int64), "g": rand(3, 2 * 4 * 4)}
    return make_model(nodes, [1, 4, 4], inits)


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_inspect_and_eval_refuse_a_negative_slice_step_by_name(tmp_path, capsys):
    path = tmp_path / "flip.onnx"
    onnx.save(_flip_model(), path)
    code, _, err = run(["inspect", path], capsys)
    assert code == 2 and SLICE_REFUSAL in err
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 4, 4), np.float32), y=np.zeros(4, np.int64))
    code, _, err = run(["eval", path, "--calib", tmp_path / "d.npz", "--data", tmp_path / "d.npz",
                        "--timesteps", "2"], capsys)
    assert code == 2 and err.startswith("error: " + SLICE_REFUSAL) and "internal error" not in err


def test_the_runtime_names_the_node_it_cannot_run():
    m = _flip_model()
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    neuron, inits = ir.make_neuron("relu", "c", "r", np.float32(1.0), np.float32(0.5))
    relu.CopyFrom(neuron)
    m.graph.initializer.extend(inits)
    ir.ensure_domain(m)
    net = SpikingNetwork(m)
    with pytest.raises(UnsupportedModelError, match=r"^node 'flip' \(Slice\): Slice step -1 is not "
                                                    r"supported \(only forward slices\)\. Hint: "):
        net(torch.zeros((1, 1, 4, 4)), 2)


@pytest.mark.parametrize("device, message", [
    ("gpu", "error: unknown torch device 'gpu' Hint: Use cpu or cuda (cuda:N for the N-th GPU)."),
    ("mps", "error: device 'mps' is not supported Hint: Use cpu or cuda."),
    pytest.param("cuda", "error: device 'cuda' asked for but torch sees no CUDA device Hint: Use --device "
                 "cpu, or install a torch build with CUDA.",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA device")),
])
def test_a_device_torch_cannot_use_is_refused_before_any_work(tmp_path, capsys, device, message):
    """eval, convert and finetune refuse the device first (exit 2), not after calibrating (before:
    "internal error: AssertionError: Torch not compiled with CUDA enabled" once the calibration
    was done)."""
    path = tmp_path / "flip.onnx"
    onnx.save(_flip_model(), path)  # refused too, but only after the device: the device comes first
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 4, 4), np.float32), y=np.zeros(4, np.int64))
    for args in (["eval", path, "--calib", tmp_path / "d.npz", "--data", tmp_path / "d.npz", "--device", device],
                 ["convert", path, "--calib", tmp_path / "d.npz", "--device", device, "-o", tmp_path / "o.snn.onnx"]):
        code, _, err = run(args, capsys)
        assert (code, err.strip().splitlines()[-1]) == (2, message), args
    assert not (tmp_path / "o.snn.onnx").exists()
