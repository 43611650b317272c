"""The spiking IR: node construction, metadata, save/load round trip, ONNX validity."""
import numpy as np
import onnx
import pytest

from helpers import mlp_ir, run_ort
from snnconvert import ir
from snnconvert.errors import ModelLoadError


def test_round_trip_keeps_neurons_and_metadata(tmp_path):
    m = mlp_ir(threshold=2.0, v_init=1.0, reset="zero", leak=0.1)
    ir.set_meta(m, "timesteps", "16")
    path = tmp_path / "net.snn.onnx"
    ir.save(m, path)
    back = ir.load(path)
    onnx.checker.check_model(back)
    (n,) = ir.neurons(back)
    assert n.reset == "zero" and n.leak == pytest.approx(0.1)
    np.testing.assert_array_equal(n.threshold, np.full([8], 2.0, np.float32))
    np.testing.assert_array_equal(n.v_init, np.full([8], 1.0, np.float32))
    assert ir.timesteps(back) == 16
    assert ir.get_meta(back, "readout") == "membrane"
    assert ir.get_meta(back, "encoding") == "analog"


def test_onnxruntime_runs_the_ir_as_its_rate_limit_ann():
    m = mlp_ir(threshold=0.7)
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    w1 = onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W1"))
    b1 = onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "b1"))
    w2 = onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W2"))
    expected = np.clip(x @ w1.T + b1, 0, 0.7) @ w2.T
    np.testing.assert_allclose(run_ort(m, x), expected, rtol=1e-5, atol=1e-5)


def test_load_refuses_a_plain_ann(tmp_path):
    from helpers import conv_bn_relu

    path = tmp_path / "ann.onnx"
    onnx.save(conv_bn_relu(), path)
    with pytest.raises(ModelLoadError, match="is an ONNX model but not a converted SNN"):
        ir.load(path)


def test_load_refuses_garbage_and_missing_files(tmp_path):
    bad = tmp_path / "bad.snn.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelLoadError, match="is not a readable ONNX file"):
        ir.load(bad)
    with pytest.raises(ModelLoadError, match="file not found"):
        ir.load(tmp_path / "absent.snn.onnx")


def test_save_is_atomic_when_the_model_is_invalid(tmp_path):
    m = mlp_ir()
    m.graph.node[0].input[1] = "does_not_exist"
    path = tmp_path / "out.snn.onnx"
    with pytest.raises(Exception):
        ir.save(m, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_make_neuron_rejects_unknown_reset():
    with pytest.raises(ValueError, match="reset must be one of"):
        ir.make_neuron("n", "a", "b", np.float32(1), np.float32(0), reset="sideways")


def test_format_1_files_get_their_spiking_max_pools_on_load(tmp_path):
    """Format 1 ran a MaxPool fed by neurons as the gated spiking max; format 2 names that op."""
    import onnx
    from onnx import TensorProto, helper

    n, inits = ir.make_neuron("n", "x", "s", np.float32(1.0), np.float32(0.5))
    g = helper.make_graph([n, helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], name="mp"),
                           helper.make_node("Flatten", ["p"], ["y"], name="fl")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 9])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ir.set_meta(m, "format_version", "1")
    ir.ensure_domain(m)
    onnx.save(m, tmp_path / "old.snn.onnx")
    loaded = ir.load(tmp_path / "old.snn.onnx")
    pool = next(x for x in loaded.graph.node if x.name == "mp")
    assert (pool.domain, pool.op_type) == (ir.DOMAIN, ir.SPIKING_MAX_POOL)
    assert ir.get_meta(loaded, "format_version") == ir.FORMAT_VERSION == "2"
