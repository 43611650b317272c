"""Helpers (no tests): build small single-input ONNX graphs and run them through onnxruntime and the runtime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper, shape_inference

from snnconvert.runtime import SpikingNetwork

OPSET = 17


def make_model(nodes: list[onnx.NodeProto], in_shape: list[int], inits: dict[str, np.ndarray] | None = None,
               out: str = "y", opset: int = OPSET, batch: int | str = "N") -> onnx.ModelProto:
    """A model with input 'x' of shape [batch, *in_shape], output ``out`` and the given initializers."""
    inits = inits or {}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *in_shape])],
        [helper.make_empty_tensor_value_info(out)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return shape_inference.infer_shapes(model)


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def snn_run(model: onnx.ModelProto, x: np.ndarray, timesteps: int = 1) -> np.ndarray:
    with torch.no_grad():
        return SpikingNetwork(model)(torch.from_numpy(x), timesteps).numpy()


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
