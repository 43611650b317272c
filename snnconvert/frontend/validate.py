"""Model checks the conversion relies on: finite weights and static shapes except the batch."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError

BATCH = "N"


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs, as IR < 4 did)."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Remove initializers from graph.input (in place) so that they are constants, not overridable inputs."""
    real = graph_inputs(model)
    if len(real) != len(model.graph.input):
        kept = [onnx.ValueInfoProto() for _ in real]
        for dst, src in zip(kept, real):
            dst.CopyFrom(src)
        del model.graph.input[:]
        model.graph.input.extend(kept)


def check_input_dims(model: onnx.ModelProto) -> None:
    """Every input dimension except dim 0 (the batch) must be a known positive size."""
    for vi in graph_inputs(model):
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            raise UnsupportedModelError(
                f"input '{vi.name}' has no shape", hint="export the model with a fixed input shape.")
        for axis, dim in enumerate(ttype.shape.dim):
            if axis > 0 and dim.dim_value <= 0:
                name = f"'{dim.dim_param}'" if dim.dim_param else "unknown"
                raise UnsupportedModelError(
                    f"input '{vi.name}' has a dynamic dimension {axis} ({name}); only the batch "
                    "dimension (0) may be dynamic",
                    hint="export the model with a fixed input size (e.g. a static H and W).")


def fix_batch_to_one(model: onnx.ModelProto) -> bool:
    """Set a symbolic, unknown or 1 batch dimension of every input to 1 (in place); True if all are."""
    ok = True
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        if dims[0].dim_value in (0, 1):
            dims[0].Clear()
            dims[0].dim_value = 1
        else:
            ok = False
    return ok


def check_finite(graph: gs.Graph) -> None:
    """Raise if a float constant holds NaN or Inf, naming the tensor and a node that reads it."""
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        values = np.asarray(tensor.values)
        if values.dtype.kind != "f" or np.isfinite(values).all():
            continue
        n_nan = int(np.isnan(values).sum())
        n_inf = int(np.isinf(values).sum())
        what = " and ".join(f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "Inf")) if n)
        user = tensor.outputs[0] if len(tensor.outputs) else None
        raise UnsupportedModelError(
            f"initializer '{tensor.name}' holds {what} value(s)",
            node=user.name if user is not None else None, op=user.op if user is not None else None,
            hint="the weights are corrupt (diverged training?); fix or retrain the model.")


def check_static_shapes(model: onnx.ModelProto) -> None:
    """After inference, every dim must be static except the symbolic batch and dim 0 (batch-derived)."""
    for vi in list(model.graph.value_info) + list(model.graph.output):
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        for axis, dim in enumerate(ttype.shape.dim):
            if axis == 0 or dim.dim_value > 0 or dim.dim_param == BATCH:
                continue
            raise UnsupportedModelError(
                f"tensor '{vi.name}' has a dynamic dimension {axis} that cannot be resolved",
                hint="export the model with static shapes except the batch.")
