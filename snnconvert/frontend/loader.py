"""Read an ONNX model from a path or a ModelProto, turning every failure into one clear ModelLoadError."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from ..errors import ModelLoadError

_ZIP_MAGIC = b"PK\x03\x04"


def read_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Return a checked ModelProto (a copy when ``source`` is one) with external data loaded."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        base_dir = None
        label = "model"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        model = _parse_file(path)
        base_dir = path.parent
        label = str(path)
    else:
        raise ModelLoadError(f"expected a path or an onnx.ModelProto, got {type(source).__name__}")
    _require_onnx_structure(model, label)
    _load_external_data(model, base_dir, label)
    check(model, label)
    return model


def _parse_file(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not an ONNX file")
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path} is empty (0 bytes)")
    if data.startswith(_ZIP_MAGIC):
        raise ModelLoadError(
            f"{path} is a zip archive (e.g. a PyTorch checkpoint), not an ONNX model",
            hint="export the network with torch.onnx.export first.")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError:
        raise ModelLoadError(
            f"{path} is not a valid ONNX file: protobuf decoding failed "
            f"({len(data)} bytes; truncated, corrupted or another format)") from None
    return model


def _require_onnx_structure(model: onnx.ModelProto, label: str) -> None:
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(f"{label} is not an ONNX model: it has no IR version, graph or opset import")
    if len(model.graph.node) == 0:
        raise ModelLoadError(f"{label} has an empty graph (no nodes)")


def _load_external_data(model: onnx.ModelProto, base_dir: Path | None, label: str) -> None:
    external = [t for t in _graph_tensors(model.graph) if external_data_helper.uses_external_data(t)]
    if not external:
        return
    for tensor in external:
        info = external_data_helper.ExternalDataInfo(tensor)
        if base_dir is None:
            raise ModelLoadError(
                f"{label}: tensor '{tensor.name}' stores its data in external file '{info.location}', "
                "but the model was passed in memory",
                hint="pass the .onnx path instead, next to its data file.")
        target = base_dir / info.location
        if not target.is_file():
            raise ModelLoadError(
                f"{label}: external data file '{info.location}' of tensor '{tensor.name}' "
                f"is missing (looked in {base_dir})",
                hint="copy the data file next to the .onnx file.")
    try:
        external_data_helper.load_external_data_for_model(model, str(base_dir))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"{label}: cannot read external data: {_first_line(exc)}") from None


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def check(model: onnx.ModelProto, label: str = "model") -> None:
    """Run onnx.checker on ``model``; a failure becomes a ModelLoadError with its first line."""
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{label} fails the ONNX checker: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
