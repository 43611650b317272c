"""Small graph builders shared by the core tests."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from snnconvert import ir

needs_lava = pytest.mark.skipif(importlib.util.find_spec("lava") is None,
                                reason="lava-nc is not installed (pip install 'snnconvert[lava]', then lava-nc)")
"""For tests that run the Lava target: `make venv` installs it; a plain `pip install` does not."""


def vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f"
                                                   else np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def mlp_ir(threshold=2.0, v_init=1.0, reset="subtract", leak=0.0, seed=0) -> onnx.ModelProto:
    """x[N,4] -> Gemm -> IF -> Gemm -> y[N,3], the IR built by hand."""
    rng = np.random.default_rng(seed)
    n, inits = ir.make_neuron("if1", "h", "s", np.full([8], threshold, np.float32),
                              np.full([8], v_init, np.float32), reset=reset, leak=leak)
    m = model([helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1, name="fc1"), n,
               helper.make_node("Gemm", ["s", "W2"], ["y"], transB=1, name="fc2")],
              [vi("x", ["N", 4])], [vi("y", ["N", 3])],
              {"W1": rng.normal(size=(8, 4)), "b1": rng.normal(size=8) * 0.1,
               "W2": rng.normal(size=(3, 8))})
    m.graph.initializer.extend(inits)
    ir.ensure_domain(m)
    return m


def conv_bn_relu(seed=0, bias=True) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> BN -> Relu -> AvgPool -> Flatten -> Gemm (an ANN)."""
    rng = np.random.default_rng(seed)
    inits = {"W": rng.normal(size=(4, 3, 3, 3)) * 0.5, "s": rng.uniform(0.5, 2, 4),
             "bb": rng.normal(size=4), "mu": rng.normal(size=4), "var": rng.uniform(0.5, 2, 4),
             "Wf": rng.normal(size=(5, 64))}
    conv_in = ["x", "W"]
    if bias:
        inits["cb"] = rng.normal(size=4)
        conv_in.append("cb")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["b"], name="bn"),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "Wf"], ["y"], transB=1, name="fc")]
    return model(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 5])], inits)


def run_ort(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
