"""Bring a model to the target opset (onnx.version_converter) and run strict shape inference."""
from __future__ import annotations

import onnx
from onnx import helper, shape_inference, version_converter

from ..errors import ModelLoadError
from .loader import _first_line

_DEFAULT_DOMAINS = ("", "ai.onnx")


def model_opset(model: onnx.ModelProto) -> int:
    """The ai.onnx opset version the model imports."""
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return imp.version
    return 1


def upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Convert to ``opset`` and raise the IR version to at least the one that opset needs."""
    current = model_opset(model)
    if current != opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:  # the converter raises bare RuntimeError/ValidationError
            raise ModelLoadError(
                f"cannot convert the model from opset {current} to opset {opset}: {_first_line(exc)}",
                hint="re-export the model at a recent opset (>= 13).") from None
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(
        list(model.opset_import), ignore_unknown=True))  # custom domains (ours) have no table
    return model


_SMALL = 4096  # initializers up to this many elements stay in the skeleton (shape arithmetic needs them)


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every large float initializer turned into a typed graph input.

    Shape inference and the checker serialize the whole model; on ImageNet-size weights that
    costs far more than the analysis itself, and neither needs the weight values.
    """
    skel = onnx.ModelProto()
    skel.ir_version = model.ir_version
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    src, dst = model.graph, skel.graph
    dst.name = src.name
    dst.node.extend(src.node)
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    for init in src.initializer:
        size = 1
        for d in init.dims:
            size *= d
        if size <= _SMALL or init.data_type not in _FLOAT_TYPES:
            dst.initializer.append(init)
        else:
            dst.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return skel


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Strict shape and type inference with data propagation (resolves Shape arithmetic), in place."""
    try:
        inferred = shape_inference.infer_shapes(skeleton(model), check_type=True, strict_mode=True,
                                                data_prop=True)
    except Exception as exc:  # InferenceError, or a checker error for inconsistent graphs
        raise ModelLoadError(f"shape inference failed: {_first_line(exc)}",
                             hint="the graph is inconsistent; re-export it.") from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model
