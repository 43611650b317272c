"""onnxruntime helpers: one place that builds sessions and runs models batch by batch.

An IR model runs here as its rate-limit ANN (its IF function is clip(x, 0, θ)).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from tqdm.auto import tqdm


def session(model: onnx.ModelProto, threads: int = 1, outputs: Iterable[str] = (),
            initializers: Mapping[str, np.ndarray] | None = None) -> ort.InferenceSession:
    """A CPU session with a fixed thread count (one by default: fast and stable on small hosts).

    ``outputs``: intermediate tensors it also returns; ``initializers``: values that replace the
    model's initializers of these names. Neither copies the model (a copy is 575 MB on VGG-19):
    the outputs are added only while it is serialized, the values are handed to onnxruntime
    (``SessionOptions.add_initializer``), which reads them in place of the model's."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    values = [(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)))
              for name, v in (initializers or {}).items()]
    for name, value in values:
        opts.add_initializer(name, value)
    graph_outputs = model.graph.output
    existing, kept = {o.name for o in graph_outputs}, len(graph_outputs)
    graph_outputs.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(outputs) if n not in existing)
    try:
        data = model.SerializeToString()
    finally:
        del graph_outputs[kept:]
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    sess.snnconvert_initializers = values  # onnxruntime reads them for as long as the session lives
    return sess


def iterate(model: onnx.ModelProto, x: np.ndarray | Iterable[np.ndarray], names: list[str] | None = None,
            batch_size: int = 256, progress: bool = False, desc: str = "running",
            initializers: Mapping[str, np.ndarray] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield {name: array} for each batch of ``x`` (an array, cut into ``batch_size`` batches, or
    an iterable of batches); ``names`` default to the graph outputs; ``initializers`` as in
    :func:`session`."""
    names = names or [o.name for o in model.graph.output]
    sess = session(model, outputs=names, initializers=initializers)
    input_name = sess.get_inputs()[0].name
    if isinstance(x, np.ndarray):
        total, parts = len(x), (x[s:s + batch_size] for s in range(0, len(x), batch_size))
    else:
        total, parts = None, x
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for part in parts:
            xb = np.ascontiguousarray(part, dtype=np.float32)
            yield dict(zip(names, sess.run(names, {input_name: xb})))
            bar.update(len(xb))


def collect(model: onnx.ModelProto, x: np.ndarray, names: list[str] | None = None,
            batch_size: int = 256, initializers: Mapping[str, np.ndarray] | None = None
            ) -> dict[str, np.ndarray]:
    """Like :func:`iterate`, concatenated over the batches."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in iterate(model, x, names, batch_size, initializers=initializers):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def outputs(model: onnx.ModelProto, x: np.ndarray, batch_size: int = 256,
            initializers: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The first graph output of ``model`` on ``x``."""
    name = model.graph.output[0].name
    return collect(model, x, [name], batch_size, initializers)[name]


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Per-sample static shape (batch axis excluded) of every tensor, from one run on zeros."""
    from . import ir

    m = onnx.ModelProto()
    m.CopyFrom(model)
    ir.ensure_domain(m)
    inits = {t.name for t in m.graph.initializer}
    feeds = {}
    for inp in m.graph.input:
        if inp.name not in inits:
            dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
            feeds[inp.name] = np.zeros([1] + dims[1:], np.float32)
    names = list(dict.fromkeys([o.name for o in m.graph.output] + [o for n in m.graph.node for o in n.output if o]))
    shapes = {n: tuple(v.shape[1:]) for n, v in zip(names, session(m, outputs=names).run(names, feeds))}
    shapes.update({k: tuple(v.shape[1:]) for k, v in feeds.items()})
    return shapes
