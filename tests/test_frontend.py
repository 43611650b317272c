"""load_model: each normalization step keeps onnxruntime outputs equal and removes what it should."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from snnconvert.frontend import load_model
from snnconvert.frontend.pipeline import LOG_KEY, TRANSPOSE_KEY
from test_frontend_helpers import init, make_model, ops, rand, run

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def assert_same(original: onnx.ModelProto, loaded: onnx.ModelProto, x: np.ndarray, rtol=1e-5, atol=1e-5):
    onnx.checker.check_model(loaded, full_check=True)
    np.testing.assert_allclose(run(loaded, x), run(original, x), rtol=rtol, atol=atol)


def assert_batchable(loaded: onnx.ModelProto, x1_shape: tuple[int, ...]):
    assert loaded.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x3 = rand(3, *x1_shape[1:], seed=7)
    batched = run(loaded, x3)
    singles = np.concatenate([run(loaded, x3[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)


def mnist8_like(opset: int = 8) -> onnx.ModelProto:
    """Conv without bias + separate Add, Reshape to [1, 64], MatMul + Add: the layout of mnist-8."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "b1"], ["a1"], name="bias1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p1", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w2"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "b2"], ["y"], name="fc_bias"),
    ]
    inits = {"w1": rand(4, 1, 3, 3, seed=1), "b1": rand(4, 1, 1, seed=2), "shape": np.array([1, 64]),
             "w2": rand(64, 10, seed=3), "b2": rand(1, 10, seed=4)}
    return make_model(nodes, [("x", [1, 1, 8, 8])], [("y", [1, 10])], inits, opset=opset)


def test_mnist8_layout_is_fused_and_batchable():
    original = mnist8_like()
    loaded = load_model(original)
    assert ops(loaded) == ["Conv", "Relu", "MaxPool", "Reshape", "Gemm"]
    conv = loaded.graph.node[0]
    assert len(conv.input) == 3
    np.testing.assert_allclose(init(loaded, conv.input[2]), init(original, "b1").reshape(-1))
    assert loaded.opset_import[0].version == 17
    x = rand(1, 1, 8, 8, seed=5, low=0)
    assert_same(original, loaded, x)
    assert_batchable(loaded, x.shape)
    reshape = loaded.graph.node[3]
    assert init(loaded, reshape.input[1]).tolist() == [0, 64]


def test_load_from_path_and_log(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(mnist8_like(), path)
    log = []
    loaded = load_model(path, log=log)
    steps = [k for k, _ in log]
    assert steps == ["opset", "fuse", "fuse", "batch"]
    meta = {p.key: p.value for p in loaded.metadata_props}
    assert json.loads(meta[LOG_KEY]) == [list(e) for e in log]


def test_constant_of_shape_and_constant_nodes_become_initializers():
    nodes = [
        helper.make_node("ConstantOfShape", ["wshape"], ["w"], name="fill_w",
                         value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.25])),
        helper.make_node("Constant", [], ["b"], name="const_b",
                         value=helper.make_tensor("b", onnx.TensorProto.FLOAT, [4], [0.1, -0.2, 0.3, 0.0])),
        helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1),
    ]
    original = make_model(nodes, [("x", [1, 6])], [("y", [1, 4])], {"wshape": np.array([4, 6])}, opset=9)
    loaded = load_model(original)
    assert ops(loaded) == ["Gemm"]
    np.testing.assert_allclose(init(loaded, "w"), np.full((4, 6), 0.25, np.float32))
    assert_same(original, loaded, rand(1, 6))


def test_dropout_identity_and_trailing_softmax_are_dropped():
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
        helper.make_node("Dropout", ["h"], ["d"], name="drop"),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["i"], name="ident"),
        helper.make_node("Gemm", ["i", "w2"], ["z"], name="fc2", transB=1),
        helper.make_node("Softmax", ["z"], ["prob"], name="softmax", axis=1),
    ]
    original = make_model(nodes, [("x", [1, 5])], [("prob", [1, 3])],
                          {"w1": rand(8, 5, seed=1), "w2": rand(3, 8, seed=2)}, opset=13)
    loaded = load_model(original)
    assert ops(loaded) == ["Gemm", "Relu", "Gemm"]
    assert loaded.graph.output[0].name == "prob"
    x = rand(1, 5, seed=3)
    logits = run(loaded, x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), run(original, x), rtol=1e-5)


def test_softmax_inside_the_network_is_kept():
    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], name="mid_softmax", axis=1),
        helper.make_node("Gemm", ["s", "w"], ["y"], name="fc", transB=1),
    ]
    original = make_model(nodes, [("x", [1, 4])], [("y", [1, 2])], {"w": rand(2, 4)})
    assert "Softmax" in ops(load_model(original))


def conv_with_normalization(pads: list[int], group: int = 1, per_pixel: bool = False) -> onnx.ModelProto:
    c = 4 if group > 1 else 3
    mean = rand(1, c, 1, 1, seed=11, low=0.3, high=0.6)
    std = rand(1, c, 5, 5, seed=12, low=0.2, high=0.3) if per_pixel else rand(1, c, 1, 1, seed=12, low=0.2,
                                                                                 high=0.3)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"], name="sub_mean"),
        helper.make_node("Div", ["centred", "std"], ["normed"], name="div_std"),
        helper.make_node("Conv", ["normed", "w", "b"], ["c"], name="conv1", kernel_shape=[3, 3], pads=pads,
                         group=group),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    out_ch = 4
    out_hw = 5 - 2 + pads[0] + pads[2]
    inits = {"mean": mean, "std": std, "w": rand(out_ch, c // group, 3, 3, seed=13), "b": rand(out_ch, seed=14)}
    return make_model(nodes, [("x", [1, c, 5, 5])], [("y", [1, out_ch, out_hw, out_hw])], inits)


def test_input_normalization_absorbed_into_unpadded_conv():
    original = conv_with_normalization(pads=[0, 0, 0, 0])
    loaded = load_model(original)
    assert ops(loaded) == ["Conv", "Relu"]
    assert_same(original, loaded, rand(1, 3, 5, 5, seed=1, low=0), rtol=1e-4, atol=1e-5)


def test_input_shift_kept_when_conv_pads_with_zeros():
    original = conv_with_normalization(pads=[1, 1, 1, 1])
    loaded = load_model(original)
    assert ops(loaded) == ["Sub", "Conv", "Relu"]
    assert_same(original, loaded, rand(1, 3, 5, 5, seed=1, low=0), rtol=1e-4, atol=1e-5)


def test_input_scale_absorbed_per_channel_into_depthwise_conv():
    original = conv_with_normalization(pads=[0, 0, 0, 0], group=4)
    loaded = load_model(original)
    assert ops(loaded) == ["Conv", "Relu"]
    assert_same(original, loaded, rand(1, 4, 5, 5, seed=1, low=0), rtol=1e-4, atol=1e-5)


def test_per_pixel_input_scale_is_left_in_place():
    original = conv_with_normalization(pads=[0, 0, 0, 0], per_pixel=True)
    loaded = load_model(original)
    assert ops(loaded) == ["Sub", "Div", "Conv", "Relu"]


def test_input_affine_absorbed_into_gemm():
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["s"], name="scale"),
        helper.make_node("Add", ["s", "shift"], ["t"], name="shift"),
        helper.make_node("Gemm", ["t", "w", "b"], ["y"], name="fc", transB=1, alpha=0.5, beta=2.0),
    ]
    inits = {"scale": rand(6, seed=1, low=0.5, high=2), "shift": rand(6, seed=2), "w": rand(3, 6, seed=3),
             "b": rand(3, seed=4)}
    original = make_model(nodes, [("x", [1, 6])], [("y", [1, 3])], inits)
    loaded = load_model(original)
    assert ops(loaded) == ["Gemm"]
    assert_same(original, loaded, rand(1, 6, seed=5))


def test_auto_pad_same_upper_becomes_explicit_pads():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], strides=[2, 2],
                              auto_pad="SAME_UPPER"),
             helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[2, 2], auto_pad="SAME_LOWER")]
    original = make_model(nodes, [("x", [1, 2, 7, 6])], [("y", [1, 3, 4, 3])], {"w": rand(3, 2, 3, 3)})
    loaded = load_model(original)
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in loaded.graph.node}
    assert "auto_pad" not in attrs["conv"] and "auto_pad" not in attrs["pool"]
    assert attrs["conv"]["pads"] == [1, 0, 1, 1]
    assert attrs["pool"]["pads"] == [1, 1, 0, 0]
    assert_same(original, loaded, rand(1, 2, 7, 6))


def test_flat_input_with_trailing_dim_is_batchable():
    """Like vnncomp21 mnist-net_256x2: input [1, 784, 1] -> Flatten -> Gemm."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1)]
    original = make_model(nodes, [("x", [1, 12, 1])], [("y", [1, 3])], {"w": rand(3, 12), "b": rand(3)}, opset=9)
    loaded = load_model(original)
    assert_same(original, loaded, rand(1, 12, 1))
    assert_batchable(loaded, (1, 12, 1))


def test_channels_last_transpose_is_kept_and_recorded():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], name="conv", kernel_shape=[1, 1])]
    original = make_model(nodes, [("x", [1, 4, 4, 3])], [("y", [1, 2, 4, 4])], {"w": rand(2, 3, 1, 1)})
    loaded = load_model(original)
    assert ops(loaded) == ["Transpose", "Conv"]
    meta = {p.key: p.value for p in loaded.metadata_props}
    assert json.loads(meta[TRANSPOSE_KEY]) == {"x": [0, 3, 1, 2]}
    assert_batchable(loaded, (1, 4, 4, 3))


def test_torch_export_with_dynamic_batch_folds_shape_arithmetic():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(4 * 4 * 4, 5, bias=False)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            h = nn.functional.avg_pool2d(self.drop(h), 2)
            return torch.softmax(self.fc(h.view(h.size(0), -1)), dim=1)

    torch.manual_seed(0)
    net = Net().eval()
    import io
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 1, 8, 8), buf, dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["prob"], dynamic_axes={"input": {0: "batch"}})
    original = onnx.load_from_string(buf.getvalue())
    assert "Shape" in ops(original)
    loaded = load_model(original)
    assert set(ops(loaded)) <= {"Conv", "Relu", "AveragePool", "Reshape", "Gemm", "Flatten"}
    x = rand(1, 1, 8, 8, seed=3)
    logits = run(loaded, x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), run(original, x), rtol=1e-5, atol=1e-6)
    assert_batchable(loaded, x.shape)


@pytest.mark.parametrize("name", ["digits_cnn.onnx", "digits_resnet.onnx"])
def test_bundled_fixtures_load_unchanged(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"{name} not built")
    original = onnx.load(str(path))
    shape = [d.dim_value or 1 for d in original.graph.input[0].type.tensor_type.shape.dim]
    loaded = load_model(path)
    x = rand(*shape, seed=2, low=0)
    assert_same(original, loaded, x, rtol=1e-4, atol=1e-5)
    assert_batchable(loaded, tuple(shape))
