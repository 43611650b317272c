"""load_model: read, upgrade, fold and normalize an ANN so the conversion passes see one clean form."""
from __future__ import annotations

import json
import os

import onnx
import onnx_graphsurgeon as gs

from .. import ir
from ..errors import ModelLoadError
from .batching import free_reshape_batch, symbolic_batch
from .cleanup import drop_pass_through, drop_trailing_softmax
from .folding import fold
from .graphutil import name_nodes
from .fusion import fuse_conv_bias_add, fuse_matmul_to_gemm
from .input_norm import absorb_input_normalization
from .loader import check, read_model
from .opset import infer_shapes, skeleton, upgrade_opset
from .padding import resolve_auto_pad
from .pooling import global_max_pool_to_max_pool
from .validate import (check_finite, check_input_dims, check_static_shapes, drop_initializer_inputs,
                       fix_batch_to_one)

LOG_KEY = "snnconvert.frontend_log"
TRANSPOSE_KEY = "snnconvert.input_transpose"


def load_model(source: str | os.PathLike | onnx.ModelProto, *, opset: int = 17,
               log: list[tuple[str, str]] | None = None) -> onnx.ModelProto:
    """Return ``source`` as a checked, folded, batchable ANN at ``opset``, ready for the conversion passes.

    What was changed is appended to ``log`` as (step, message) pairs and stored as JSON in the
    model's metadata under ``snnconvert.frontend_log``.
    """
    entries: list[tuple[str, str]] = []
    model = read_model(source)
    if any(ir.is_neuron(n) for n in model.graph.node):
        where = f"'{source}'" if isinstance(source, (str, os.PathLike)) else "this model"
        raise ModelLoadError(f"{where} is already a converted spiking network",
                             hint="evaluate it with `snnconvert eval MODEL --data D.npz`, "
                                  "or convert the original ANN.")
    check_input_dims(model)
    batch_one = fix_batch_to_one(model)
    model.graph.ClearField("value_info")
    before = _opset_of(model)
    model = upgrade_opset(model, opset)
    if before != opset:
        entries.append(("opset", f"converted opset {before} -> {opset}"))
    ir_version = model.ir_version
    drop_initializer_inputs(model)
    model = infer_shapes(model)
    graph, n_cos = fold(model)
    if n_cos:
        entries.append(("fold", f"materialized {n_cos} ConstantOfShape weight(s)"))
    name_nodes(graph)
    check_finite(graph)
    _rewrite(graph, entries, batch_one)
    transposes = _input_transposes(graph)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    _restore_header(out, model, ir_version)
    out.graph.ClearField("value_info")
    if batch_one:
        symbolic_batch(out)
    out = infer_shapes(out)
    check_static_shapes(out)
    check(skeleton(out))
    if transposes:
        _set_meta(out, TRANSPOSE_KEY, json.dumps(transposes))
    _set_meta(out, LOG_KEY, json.dumps(entries))
    if log is not None:
        log.extend(entries)
    return out


def _rewrite(graph: gs.Graph, entries: list[tuple[str, str]], batch_one: bool) -> None:
    steps = [
        ("drop", "dropped Dropout/Identity", drop_pass_through),
        ("drop", "dropped trailing softmax", drop_trailing_softmax),
        ("fuse", "folded a bias Add into Conv", fuse_conv_bias_add),
        ("fuse", "fused MatMul(+Add) into Gemm", fuse_matmul_to_gemm),
        ("absorb", "absorbed input normalization", absorb_input_normalization),
        ("pads", "resolved auto_pad", resolve_auto_pad),
        ("pool", "GlobalMaxPool -> MaxPool over the plane (spike-gated)", global_max_pool_to_max_pool),
    ]
    if batch_one:
        steps.append(("batch", "freed the batch dim of Reshape", free_reshape_batch))
    for key, what, step in steps:
        names = step(graph)
        if names:
            graph.cleanup()
            entries.append((key, f"{what}: {', '.join(names)}"))
    if not batch_one:
        entries.append(("batch", "input batch is static and > 1: left as is"))


def _input_transposes(graph: gs.Graph) -> dict[str, list[int]]:
    """Inputs read first by a Transpose (e.g. channels-last data); that op stays, it is time-invariant."""
    found = {}
    for inp in graph.inputs:
        if len(inp.outputs) == 1 and inp.outputs[0].op == "Transpose":
            found[inp.name] = [int(p) for p in inp.outputs[0].attrs.get("perm", [])]
    return found


def _opset_of(model: onnx.ModelProto) -> int:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 1)


def _restore_header(out: onnx.ModelProto, src: onnx.ModelProto, ir_version: int) -> None:
    out.ir_version = ir_version
    out.producer_name = src.producer_name
    out.producer_version = src.producer_version
    out.model_version = src.model_version
    out.doc_string = src.doc_string
    del out.metadata_props[:]
    out.metadata_props.extend(src.metadata_props)


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)
