"""Every supported ONNX op on the torch runtime, checked against onnxruntime on small graphs.

ANN mode: a graph without neurons run by SpikingNetwork at T=1 gives ORT's output (float
rounding only), both raw and after load_model. SNN mode: converted graphs' readouts approach
the IR's rate-limit ANN (run by ORT) as T grows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import snnconvert
from snnconvert.passes import FoldBatchNorm, PassContext
from snnconvert.runtime import SpikingNetwork
from snnconvert.errors import UnsupportedModelError
from snnconvert.frontend import load_model
from test_runtime_ops_util import make_model, ort_run, rand, snn_run

torch.set_num_threads(1)
mk = helper.make_node
X = rand(3, 4, 9, 10, seed=1)


def same(model, x=X, via_frontend: bool = False, atol: float = 1e-5):
    ref = ort_run(model, x)
    got = snn_run(load_model(model) if via_frontend else model, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol)


W = {"w": rand(6, 4, 3, 3, seed=2), "b": rand(6, seed=3)}
CONV_CASES = {
    "plain": ({}, W),
    "strided_asym_pads": ({"strides": [2, 1], "pads": [0, 1, 2, 1]}, W),
    "dilated": ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, W),
    "grouped": ({"group": 2, "pads": [1, 1, 1, 1]}, {"w": rand(6, 2, 3, 3, seed=4), "b": rand(6)}),
    "depthwise": ({"group": 4, "pads": [1, 0, 1, 0]}, {"w": rand(4, 1, 3, 3, seed=5), "b": rand(4)}),
    "1x1_no_bias": ({}, {"w": rand(5, 4, 1, 1, seed=6)}),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case):
    attrs, inits = CONV_CASES[case]
    inputs = ["x", "w"] + (["b"] if "b" in inits else [])
    same(make_model([mk("Conv", inputs, ["y"], **attrs)], [4, 9, 10], inits))


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(mode):
    model = make_model([mk("Conv", ["x", "w", "b"], ["y"], auto_pad=mode, strides=[2, 2])],
                       [4, 9, 10], W)
    same(model, via_frontend=True)
    same(model)


def test_conv1d():
    model = make_model([mk("Conv", ["x", "w"], ["y"], pads=[1, 2])], [3, 12], {"w": rand(5, 3, 4)})
    same(model, rand(2, 3, 12))


@pytest.mark.parametrize("attrs", [{}, {"transB": 1}, {"alpha": 0.5, "beta": 2.0, "transB": 1}])
def test_gemm(attrs):
    w = rand(7, 5) if attrs.get("transB") else rand(5, 7)
    model = make_model([mk("Gemm", ["x", "w", "c"], ["y"], **attrs)], [5], {"w": w, "c": rand(7)})
    same(model, rand(4, 5))


def test_matmul_add_fused_and_raw():
    model = make_model([mk("MatMul", ["x", "w"], ["m"]), mk("Add", ["m", "c"], ["y"])], [6],
                       {"w": rand(6, 3), "c": rand(3)})
    same(model, rand(4, 6))
    same(model, rand(4, 6), via_frontend=True)


def test_batchnorm_anywhere():
    bn = {"s": rand(4) ** 2 + 0.5, "bb": rand(4), "mu": rand(4), "var": rand(4) ** 2 + 0.1}
    model = make_model([mk("Add", ["x", "x"], ["a"]),
                        mk("BatchNormalization", ["a", "s", "bb", "mu", "var"], ["y"], epsilon=1e-3)],
                       [4, 9, 10], bn)
    same(model)
    folded = FoldBatchNorm()(load_model(model), PassContext())
    assert [n.op_type for n in folded.graph.node] == ["Add", "Mul", "Add"]
    same_outputs = ort_run(folded, X), ort_run(model, X)
    np.testing.assert_allclose(*same_outputs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(snn_run(folded, X), same_outputs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("node,inits", [
    (mk("Relu", ["x"], ["y"]), {}),
    (mk("Clip", ["x", "lo", "hi"], ["y"]), {"lo": np.float32(0), "hi": np.float32(6)}),
    (mk("Clip", ["x", "lo"], ["y"]), {"lo": np.float32(0)}),
])
def test_activations_ann_mode(node, inits):
    same(make_model([node], [4, 9, 10], inits), 4 * X)


@pytest.mark.parametrize("op", ["LeakyRelu", "PRelu"])
def test_signed_activations_refused_by_name(op):
    inputs = ["x", "slope"] if op == "PRelu" else ["x"]
    model = make_model([mk("Conv", ["x", "w", "b"], ["c"], name="conv"), mk(op, ["c"] + inputs[1:], ["y"],
                                                                         name="act")],
                       [4, 9, 10], {**W, **({"slope": np.full((6, 1, 1), 0.1, np.float32)} if op == "PRelu" else {})})
    with pytest.raises(UnsupportedModelError) as err:
        snnconvert.convert(model, X)
    assert f"node 'act' ({op}): a negative slope needs signed neurons, which are not supported." in str(err.value)


POOL_CASES = {
    "avg": ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "avg_pads_excl": ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "avg_pads_incl": ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    "avg_asym": ("AveragePool", {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0]}),
    "avg_asym_incl": ("AveragePool", {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0], "count_include_pad": 1}),
    "avg_ceil": ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "max": ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "max_pads": ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "max_asym": ("MaxPool", {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1]}),
    "max_ceil": ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "gap": ("GlobalAveragePool", {}),
    "gmp": ("GlobalMaxPool", {}),
}


@pytest.mark.parametrize("case", POOL_CASES)
def test_pools(case):
    op, attrs = POOL_CASES[case]
    same(make_model([mk(op, ["x"], ["y"], **attrs)], [4, 9, 10]))


@pytest.mark.parametrize("op", ["Add", "Sub", "Sum"])
def test_add_sub_sum_of_activations(op):
    nodes = [mk("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), mk("Relu", ["c"], ["r"]),
             mk("Slice", ["r", "st", "en", "ax"], ["s"]), mk(op, ["s", "x"], ["y"])]
    inits = {**W, "st": np.array([0]), "en": np.array([4]), "ax": np.array([1])}
    same(make_model(nodes, [4, 9, 10], inits))


def test_concat_flatten_reshape_squeeze_unsqueeze_transpose():
    nodes = [mk("Relu", ["x"], ["r"]), mk("Concat", ["r", "x"], ["c"], axis=1),
             mk("Transpose", ["c"], ["t"], perm=[0, 1, 3, 2]), mk("Unsqueeze", ["t", "ua"], ["u"]),
             mk("Squeeze", ["u", "ua"], ["s"]), mk("Flatten", ["s"], ["f"]),
             mk("Reshape", ["f", "shape"], ["y"])]
    inits = {"ua": np.array([2]), "shape": np.array([0, 8, -1])}
    same(make_model(nodes, [4, 9, 10], inits))


def test_pad_slice_mul_div_constants():
    nodes = [mk("Pad", ["x", "pads"], ["p"]),
             mk("Slice", ["p", "st", "en", "ax", "steps"], ["s"]),
             mk("Mul", ["s", "k"], ["m"]), mk("Div", ["m", "d"], ["y"])]
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1]), "st": np.array([1, -8]), "en": np.array([10, 100]),
             "ax": np.array([2, 3]), "steps": np.array([2, 1]),
             "k": rand(4, 1, 1, seed=9), "d": np.float32(3.0)}
    same(make_model(nodes, [4, 9, 10], inits))


@pytest.mark.parametrize("attrs,inputs,inits", [
    ({"mode": "nearest"}, ["x", "", "sc"], {"sc": np.array([1, 1, 2, 2], np.float32)}),
    ({"mode": "nearest"}, ["x", "", "", "sz"], {"sz": np.array([3, 4, 14, 25])}),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     ["x", "", "sc"], {"sc": np.array([1, 1, 1.5, 3], np.float32)}),
    ({"mode": "nearest", "coordinate_transformation_mode": "align_corners"},
     ["x", "", "", "sz"], {"sz": np.array([3, 4, 5, 17])}),
])
def test_resize_nearest(attrs, inputs, inits):
    same(make_model([mk("Resize", inputs, ["y"], **attrs)], [4, 9, 10], inits))


def test_dropout_identity_softmax():
    nodes = [mk("Dropout", ["x"], ["d"]), mk("Identity", ["d"], ["i"]), mk("Flatten", ["i"], ["f"]),
             mk("Softmax", ["f"], ["y"])]
    model = make_model(nodes, [4, 9, 10])
    same(model)
    loaded = load_model(model)
    assert [n.op_type for n in loaded.graph.node] == ["Flatten"]
    np.testing.assert_array_equal(snn_run(loaded, X).argmax(1), ort_run(model, X).argmax(1))


def test_channels_last_input_transpose_is_time_invariant():
    nodes = [mk("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), mk("Conv", ["t", "w", "b"], ["c"]),
             mk("Relu", ["c"], ["r"]), mk("Flatten", ["r"], ["y"])]
    model = make_model(nodes, [9, 10, 4], W)
    x = np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    snn = snnconvert.convert(model, x, timesteps=64, norm="max")
    net = SpikingNetwork(snn)
    from snnconvert.runtime.network import INVARIANT
    assert net._kinds["t"] == INVARIANT and net._kinds["c"] == INVARIANT
    _close_to_rate_limit(snn, x, 256, 0.99)


def _close_to_rate_limit(snn, x, t, min_corr):
    ref = ort_run(snn, x).reshape(len(x), -1)
    got = snn_run(snn, x, t).reshape(len(x), -1)
    corr = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
    assert corr >= min_corr, corr
    return corr, float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-9))


def _maxpool_net(seed: int = 0):
    rng = np.random.default_rng(seed)
    inits = {"w": (rng.standard_normal((6, 2, 3, 3)) * 0.5).astype(np.float32),
             "b": (rng.standard_normal(6) * 0.1).astype(np.float32),
             "g": (rng.standard_normal((6 * 4 * 4, 5)) * 0.2).astype(np.float32),
             "gc": np.zeros(5, np.float32)}
    nodes = [mk("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), mk("Relu", ["c"], ["r"]),
             mk("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             mk("Flatten", ["p"], ["f"]), mk("Gemm", ["f", "g", "gc"], ["y"])]
    x = np.abs(rng.standard_normal((64, 2, 8, 8))).astype(np.float32)
    return make_model(nodes, [2, 8, 8], inits), x


def test_spiking_maxpool_approaches_ann_as_t_grows():
    model, x = _maxpool_net()
    snn = snnconvert.convert(model, x, timesteps=64, norm="max", per_channel=True, v_init="half",
                               calibration="none")  # rate limit = ANN before calibration
    ann = ort_run(model, x)
    np.testing.assert_allclose(ort_run(snn, x), ann, rtol=1e-4, atol=1e-4)
    errors = {}
    for t in (8, 32, 256):
        got = snn_run(snn, x, t)
        errors[t] = float(np.abs(got - ann).mean() / np.abs(ann).mean())
    assert errors[256] < errors[32] < errors[8]
    assert errors[256] < 0.03, errors
    corr = np.corrcoef(snn_run(snn, x, 256).ravel(), ann.ravel())[0, 1]
    assert corr > 0.999


def test_global_maxpool_is_gated_too():
    model, x = _maxpool_net(1)
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            node.op_type = "GlobalMaxPool"
            del node.attribute[:]
    model.graph.initializer[2].CopyFrom(
        helper.make_tensor("g", 1, [6, 5], rand(6, 5, seed=3).ravel().tolist()))
    snn = snnconvert.convert(model, x, timesteps=64, norm="max", per_channel=True)
    _, rel = _close_to_rate_limit(snn, x, 256, 0.999)
    assert rel < 0.05


def test_residual_concat_upsample_network_approaches_rate_limit():
    rng = np.random.default_rng(3)
    inits = {"w1": (rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32),
             "w2": (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32),
             "w3": (rng.standard_normal((3, 8, 1, 1)) * 0.3).astype(np.float32),
             "sc": np.array([1, 1, 2, 2], np.float32),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}
    nodes = [mk("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), mk("Relu", ["c1"], ["r1"]),
             mk("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), mk("Add", ["c2", "r1"], ["a"]),
             mk("Relu", ["a"], ["r2"]), mk("Concat", ["r1", "r2"], ["cat"], axis=1),
             mk("AveragePool", ["cat"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
             mk("Resize", ["ap", "", "sc"], ["up"], mode="nearest"),
             mk("Pad", ["up", "pads"], ["pd"]), mk("Conv", ["pd", "w3"], ["c3"]),
             mk("Relu", ["c3"], ["r3"]), mk("GlobalAveragePool", ["r3"], ["g"]), mk("Flatten", ["g"], ["y"])]
    model = make_model(nodes, [3, 8, 8], inits)
    x = np.abs(rng.standard_normal((32, 3, 8, 8))).astype(np.float32)
    snn = snnconvert.convert(model, x, timesteps=64, norm="max", per_channel=True)
    _close_to_rate_limit(snn, x, 512, 0.995)
