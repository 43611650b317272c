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
