"""NIR target: graph structure, round trip through nir.read, listed losses, strict refusal,
and our NIR-semantics simulator against the torch runtime when nothing is lost."""
from __future__ import annotations

import warnings

import nir
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from snnconvert import ir
from snnconvert.errors import TargetError
from snnconvert.targets import get_target

RNG = np.random.default_rng(0)


def _cnn(reset: str = "subtract", v_init: str = "half", per_channel: bool = True,
         pool: str = "AveragePool") -> onnx.ModelProto:
    """Conv(2->4) -> IF -> pool -> Conv(4->4) -> IF -> Flatten -> Gemm(->3) on [N,2,8,8]."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0.1, 0.1, 4).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0.05, 0.1, 4).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (3, 64)).astype(np.float32), "w3"),
        numpy_helper.from_array(np.zeros(3, np.float32), "b3"),
    ]
    th1 = (np.array([1.0, 1.5, 0.7, 2.0]) if per_channel else np.array([1.2]))
    th1 = th1.reshape(-1, 1, 1).astype(np.float32)
    th2 = np.array([0.8, 1.1, 1.3, 0.9], np.float32).reshape(4, 1, 1)
    v0 = (lambda th: th / 2) if v_init == "half" else (lambda th: np.zeros_like(th))
    n1, i1 = ir.make_neuron("if1", "c1", "s1", th1, v0(th1), reset=reset)
    n2, i2 = ir.make_neuron("if2", "c2", "s2", th2, v0(th2), reset=reset)
    pool_node = (helper.make_node(pool, ["s1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                                  strides=[2, 2]))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n1, pool_node,
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        n2,
        helper.make_node("Flatten", ["s2"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
        inits + i1 + i2)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(model)
    return model


def _residual() -> onnx.ModelProto:
    """x -> Conv -> IF(a) -> Conv -> Add(a) -> IF(b) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(2)
    w1 = rng.normal(0, 0.5, (3, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (3, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(rng.normal(0, 0.5, (3, 2)).astype(np.float32), "w3")]
    tha = np.array([1.0, 0.5, 2.0], np.float32).reshape(3, 1, 1)
    thb = np.array([0.7, 1.4, 1.0], np.float32).reshape(3, 1, 1)
    na, ia = ir.make_neuron("ifa", "c1", "a", tha, 0 * tha, reset="zero")
    nb, ib = ir.make_neuron("ifb", "sum", "b", thb, 0 * thb, reset="zero")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), na,
        helper.make_node("Conv", ["a", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "a"], ["sum"], name="add"), nb,
        helper.make_node("GlobalAveragePool", ["b"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w3"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "res", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])], inits + ia + ib)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(model)
    return model


def _torch_readout(model: onnx.ModelProto, x: np.ndarray, ts: list[int]) -> dict[int, np.ndarray]:
    from snnconvert.runtime import SpikingNetwork

    return SpikingNetwork(model).simulate(x, ts).readout


def test_written_graph_structure_and_round_trip(tmp_path):
    target = get_target("nir")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = target.compile(_cnn(), tmp_path / "net.nir")
    graph = nir.read(str(path))
    kinds = {k: type(v).__name__ for k, v in graph.nodes.items()}
    assert sorted(kinds.values()) == sorted(
        ["Input", "Conv2d", "IF", "SumPool2d", "Conv2d", "IF", "Flatten", "Affine", "Output"])
    assert set(graph.edges) == {("x", "conv1"), ("conv1", "if1"), ("if1", "pool1"),
                                ("pool1", "conv2"), ("conv2", "if2"), ("if2", "flat"),
                                ("flat", "fc"), ("fc", "output_y")}
    # thresholds were folded into conv1's rows, so every NIR neuron fires just above 1
    np.testing.assert_allclose(graph.nodes["if1"].v_threshold, 1.0, rtol=1e-6)
    assert graph.nodes["if1"].v_threshold.shape == (4, 8, 8)
    # conv2 absorbs threshold * (1/4 pool divisor) of if1 on its input channels
    model = _cnn()
    w2 = ir.get_initializer(model, "w2")
    th1 = ir.get_initializer(model, "if1.threshold").reshape(1, 4, 1, 1)
    th2 = ir.get_initializer(model, "if2.threshold").reshape(4, 1, 1, 1)
    np.testing.assert_allclose(graph.nodes["conv2"].weight, w2 * th1 / 4 / th2, rtol=1e-5)


def test_losses_are_listed_and_warned(tmp_path):
    target = get_target("nir")
    _, losses = target.export(_cnn(pool="MaxPool"))
    text = [str(x) for x in losses]
    assert "if1: reset by subtraction becomes reset to zero (NIR IF/LIF reset to v_reset)" in text
    assert any(t.startswith("if2: initial potential") for t in text)
    assert any(t.startswith("pool1: MaxPool") for t in text)
    with pytest.warns(UserWarning, match="if2: reset by subtraction"):
        target.compile(_cnn(), tmp_path / "a.nir")


def test_strict_refuses_naming_each_loss(tmp_path):
    target = get_target("nir")
    with pytest.raises(TargetError) as err:
        target.compile(_cnn(), tmp_path / "a.nir", strict=True)
    msg = str(err.value)
    for layer in ("if1", "if2"):
        assert f"{layer}: reset by subtraction" in msg and f"{layer}: initial potential" in msg
    assert not (tmp_path / "a.nir").exists()
    _, losses = target.export(_cnn(reset="zero", v_init="zero"), strict=True)
    assert losses == []


def test_unexpressible_op_is_refused():
    model = _cnn(reset="zero", v_init="zero")
    model.graph.node[2].op_type = "LpPool"
    with pytest.raises(TargetError, match=r"node .pool1. \(LpPool\): the nir target cannot hold LpPool\. Hint: "):
        get_target("nir").export(model)


@pytest.mark.parametrize("make", [lambda: _cnn(reset="zero", v_init="zero"), _residual],
                         ids=["cnn", "residual"])
def test_nir_simulator_matches_torch_runtime_when_nothing_lost(tmp_path, make):
    pytest.importorskip("snnconvert.runtime")
    model = make()
    target = get_target("nir")
    path = target.compile(model, tmp_path / "m.nir", strict=True)
    shape = [d.dim_value or 16 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.uniform(0, 1, shape).astype(np.float32)
    ours = target.evaluate(path, x, [4, 16])
    ref = _torch_readout(model, x, [4, 16])
    for t in (4, 16):
        np.testing.assert_allclose(ours.readout[t], ref[t], rtol=1e-4, atol=1e-4)
    assert 0 < ours.firing_rate[16] < 1


def test_residual_add_becomes_fan_in():
    graph, losses = get_target("nir").export(_residual())
    assert losses == []
    assert {("ifa", "conv2"), ("conv2", "ifb"), ("ifa", "ifb")} <= set(graph.edges)
    assert not any(isinstance(n, nir.Scale) for n in graph.nodes.values())


def test_lossy_export_simulates_reset_to_zero():
    """With losses accepted, the NIR readout is what the IR gives under reset-to-zero, v0=0."""
    target = get_target("nir")
    x = RNG.uniform(0, 1, (8, 2, 8, 8)).astype(np.float32)
    lossy = target.evaluate(_cnn(), x, [8]).readout[8]
    exact = target.evaluate(_cnn(reset="zero", v_init="zero"), x, [8]).readout[8]
    np.testing.assert_allclose(lossy, exact, rtol=1e-5, atol=1e-6)
