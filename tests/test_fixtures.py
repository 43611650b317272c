"""The bundled ONNX fixtures (tests/fixtures, examples/mnist) load in onnxruntime and keep their accuracy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
MNIST = ROOT / "examples" / "mnist"


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def op_counts(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "digits.npz") as d:
        return dict(d)


def test_digits_split(digits: dict[str, np.ndarray]) -> None:
    assert digits["x_train"].shape == (1257, 1, 8, 8) and digits["x_test"].shape == (540, 1, 8, 8)
    assert digits["x_train"].dtype == np.float32 and digits["y_test"].dtype == np.int64
    assert 0.0 <= digits["x_train"].min() and digits["x_train"].max() <= 1.0
    assert np.bincount(digits["y_test"], minlength=10).min() >= 50


@pytest.mark.parametrize("name", ["digits_cnn", "digits_resnet"])
def test_digits_models_accuracy_and_dynamic_batch(name: str, digits: dict[str, np.ndarray]) -> None:
    path = FIXTURES / f"{name}.onnx"
    logits = run(path, digits["x_test"])
    assert logits.shape == (540, 10)
    assert np.mean(logits.argmax(1) == digits["y_test"]) >= 0.93
    np.testing.assert_allclose(run(path, digits["x_test"][:1]), logits[:1], rtol=1e-5, atol=1e-5)


def test_digits_cnn_ops() -> None:
    ops = op_counts(FIXTURES / "digits_cnn.onnx")
    assert ops == Counter(Conv=2, BatchNormalization=2, Relu=2, AveragePool=1, Flatten=1, Gemm=1)


def test_digits_resnet_ops() -> None:
    model = onnx.load(str(FIXTURES / "digits_resnet.onnx"))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["BatchNormalization"] == ops["Conv"] == 7
    assert ops["Add"] == 2 and ops["Pad"] == 1 and ops["Concat"] == 1
    assert ops["MaxPool"] == 1 and ops["GlobalAveragePool"] == 1 and ops["Gemm"] == 1
    assert set(ops) <= {"Conv", "BatchNormalization", "Relu", "Add", "Slice", "Pad", "Concat", "MaxPool",
                        "GlobalAveragePool", "Flatten", "Gemm"}
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    slice_steps = [init[n.input[4]].tolist() for n in model.graph.node if n.op_type == "Slice"]
    assert slice_steps and all(step == [2] for step in slice_steps)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    assert init[pad.input[1]].tolist() == [0, 4, 0, 0, 0, 4, 0, 0]


def test_mnist_example_accuracy() -> None:
    assert op_counts(MNIST / "model.onnx")["BatchNormalization"] == 2
    with np.load(MNIST / "test.npz") as d:
        x, y = d["x"], d["y"]
    assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.mean(run(MNIST / "model.onnx", x).argmax(1) == y) >= 0.98
    with np.load(MNIST / "calib.npz") as d:
        assert d["x"].shape == (1000, 1, 28, 28) and d["y"].shape == (1000,)
