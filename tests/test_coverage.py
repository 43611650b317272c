"""coverage()/inspect: every node is listed with how it maps, specific enough to act on."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from snnconvert.cli import main
from snnconvert.frontend import coverage, load_model
from test_runtime_ops_util import make_model, rand

mk = helper.make_node


def _model() -> onnx.ModelProto:
    nodes = [mk("Conv", ["x", "w"], ["c"], name="conv", strides=[2, 2]), mk("Relu", ["c"], ["r"], name="relu"),
             mk("Conv", ["r", "dw"], ["d"], name="dw", group=4), mk("Clip", ["d", "lo", "hi"], ["k"], name="relu6"),
             mk("GlobalMaxPool", ["k"], ["p"], name="gmp"), mk("Flatten", ["p"], ["f"], name="flat"),
             mk("Gemm", ["f", "g"], ["y"], name="fc", transB=1)]
    inits = {"w": rand(4, 3, 3, 3), "dw": rand(4, 1, 3, 3), "lo": np.float32(0), "hi": np.float32(6),
             "g": rand(5, 4)}
    return make_model(nodes, [3, 9, 9], inits)


def test_coverage_details_name_shapes_and_mapping():
    got = {m.name: (m.op_type, m.status, m.detail) for m in coverage(load_model(_model()))}
    assert got["conv"] == ("Conv", "synapse", "3x3 convolution, 3->4 channels, stride 2x2: weights feeding the "
                                               "next neurons")
    assert got["dw"] == ("Conv", "synapse", "depthwise 3x3 convolution, 4->4 channels: weights feeding the next "
                                             "neurons")
    assert got["relu"] == ("Relu", "neuron", "IF neuron (its firing rate approximates ReLU)")
    assert got["relu6"] == ("Clip", "neuron", "IF neuron (clipped ReLU, saturating at 6)")
    assert got["gmp"][0:2] == ("MaxPool", "pool")  # GlobalMaxPool became a spike-gated MaxPool
    assert got["gmp"][2].startswith("2x2 max pooling of spikes, gated by accumulated input")
    assert got["fc"] == ("Gemm", "synapse", "dense 4->5: weights feeding the next neurons")


def test_inspect_lists_every_node_and_exits_2_on_unsupported(tmp_path, capsys):
    model = _model()
    model.graph.node[1].op_type = "Elu"
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(tmp_path / "m.onnx")])
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == ["conv", "relu", "dw", "relu6", "gmp", "flat", "fc"]
    assert err.splitlines() == ["1 node(s) cannot be converted:",
                                "  node 'relu' (Elu): a signed non-linearity has no integrate-and-fire equivalent. "
                                "Hint: retrain the network with ReLU (or ReLU6 / Clip(0, max))."]
