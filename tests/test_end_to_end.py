"""Conversion of trained fixtures (scikit-learn digits): the SNN matches the ANN."""
import numpy as np
import pytest

import snnconvert as sc
from snnconvert.api import ann_outputs
from snnconvert.frontend import load_model


@pytest.mark.parametrize("name", ["digits_cnn", "digits_resnet"])
def test_snn_accuracy_tracks_the_ann(digits, name):
    path = f"tests/fixtures/{name}.onnx"
    x, y = digits["x_test"], digits["y_test"]
    ann_acc = np.mean(ann_outputs(load_model(path), x).argmax(1) == y)
    snn = sc.convert(path, digits["x_train"][:300], timesteps=32)
    report = sc.evaluate(snn, x, y, [8, 32, 128])
    acc = {r.timesteps: r.accuracy for r in report.rows}
    assert acc[32] >= ann_acc - 0.01
    assert acc[128] >= ann_acc - 0.01
    assert {r.timesteps: r.agreement for r in report.rows}[128] >= 0.97
    assert 0 < report.rows[-1].firing_rate < 1


def test_optimized_init_helps_at_low_t(digits):
    path = "tests/fixtures/digits_resnet.onnx"
    x, y = digits["x_test"], digits["y_test"]
    acc = {}
    for v_init in ("zero", "half", "optimized"):
        snn = sc.convert(path, digits["x_train"][:300], timesteps=4, v_init=v_init)
        acc[v_init] = sc.evaluate(snn, x, y, [4]).rows[0].accuracy
    assert acc["zero"] < acc["half"] <= acc["optimized"] + 0.005


def test_evaluate_compares_with_the_ann_as_the_user_exported_it(digits, tmp_path):
    """`evaluate(ann=...)` takes the ANN as a user has it, a model or its path, with what exporters
    write (a Constant node for a Reshape's shape, BatchNorm unfolded), and loads it as `convert`
    does: its accuracy is the fixture's own. Before, the Constant node ended in AttributeError."""
    import onnx
    from onnx import helper

    raw = onnx.load("tests/fixtures/digits_cnn.onnx")
    nodes = list(raw.graph.node)
    (flat,) = [n for n in nodes if n.op_type == "Flatten"]
    i = nodes.index(flat)
    nodes[i:i + 1] = [helper.make_node("Constant", [], ["flat_shape"], value_ints=[0, -1], name="flat_shape"),
                      helper.make_node("Reshape", [flat.input[0], "flat_shape"], [flat.output[0]], name=flat.name)]
    del raw.graph.node[:]
    raw.graph.node.extend(nodes)
    onnx.save(raw, tmp_path / "raw.onnx")
    x, y = digits["x_test"][:200], digits["y_test"][:200]
    expected = np.mean(ann_outputs(load_model("tests/fixtures/digits_cnn.onnx"), x).argmax(1) == y)
    snn = sc.convert(tmp_path / "raw.onnx", digits["x_train"][:100], timesteps=8, calibration="none")
    for ann in (raw, tmp_path / "raw.onnx"):
        report = sc.evaluate(snn, x, y, [8], ann=ann)
        assert report.ann_accuracy == expected and not report.ann_is_rate_limit
        assert report.rows[0].agreement > 0.9
