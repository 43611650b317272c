"""The spiking IR: an ONNX graph whose spiking neurons are nodes of the ``snnconvert`` domain.

A converted network is a plain, valid ONNX model. Linear parts (Conv, Gemm, pooling,
Add, Concat, Pad, Slice, ...) stay standard ONNX ops and are applied at every time step.
Each ReLU/Clip becomes one neuron node::

    y = IF(x, threshold, v_init)        domain "snnconvert", version 1
        x          input current at each step (the ANN pre-activation)
        threshold  initializer, scalar or per-channel (shape broadcastable to x without
                   the batch axis, e.g. [C,1,1] for NCHW or [F] for [N,F])
        v_init     initializer, initial membrane potential (absolute units, same
                   broadcast shape rules as threshold); theta/2 by default
        attribute reset  "subtract" (soft reset, default) or "zero" (hard reset)
        attribute leak   float in [0, 1): v <- (1 - leak) * v before integrating (0 = IF)
        y          spikes scaled by the threshold: y = threshold * s, s in {0, 1}

    Each step:  v = (1 - leak) * v + x;  s = v >= threshold;
                v = v - threshold * s  (subtract)   or   v = v * (1 - s)  (zero)

Over T steps the mean of ``y`` approximates ``clip(x, 0, threshold)``; the model-local
ONNX function shipped with every IR file defines ``IF`` as exactly that clipped ReLU, so
onnxruntime runs a ``.snn.onnx`` as its rate-limit ANN (useful for calibration and
diagnostics).

A max-pool fed (directly or through linear ops) by spiking neurons is its own op::

    y = SpikingMaxPool(x)     domain "snnconvert", the attributes of ONNX MaxPool

    Each window emits, at every step, the increase of the largest running sum of its inputs
    (gated by accumulated input, Rueckauer et al. 2017), so over t steps its output sums to
    exactly the max of the accumulated inputs. Its ONNX function is MaxPool itself: the rate
    limit is the max of the input rates. A plain ``MaxPool`` in the IR is a per-step max.

``snnconvert.ir_reference`` executes this semantics in numpy; every target is tested against it. The network's output is the accumulated output of the last layer divided by
T (``readout = membrane``). Graph-level metadata lives in ``metadata_props`` under
``snnconvert.*`` keys.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelLoadError

DOMAIN = "snnconvert"
DOMAIN_VERSION = 1
NEURON_OP = "IF"
SPIKING_MAX_POOL = "SpikingMaxPool"
RESET_MODES = ("subtract", "zero")
FORMAT_VERSION = "2"
MAX_POOL_ATTRIBUTES = {"kernel_shape": onnx.AttributeProto.INTS, "strides": onnx.AttributeProto.INTS,
                       "pads": onnx.AttributeProto.INTS, "ceil_mode": onnx.AttributeProto.INT,
                       "dilations": onnx.AttributeProto.INTS, "auto_pad": onnx.AttributeProto.STRING,
                       "storage_order": onnx.AttributeProto.INT}

META_PREFIX = "snnconvert."
DEFAULT_META = {
    "format_version": FORMAT_VERSION,
    "timesteps": "32",
    "encoding": "analog",
    "readout": "membrane",
}


@dataclass
class Neuron:
    """A view of one neuron node with its parameters as arrays."""

    node: onnx.NodeProto
    threshold: np.ndarray
    v_init: np.ndarray
    reset: str
    leak: float

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def input(self) -> str:
        return self.node.input[0]

    @property
    def output(self) -> str:
        return self.node.output[0]


def _neuron_function(opset: int) -> onnx.FunctionProto:
    """ONNX function giving IF its rate-limit meaning, clip(x, 0, threshold)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Min", ["r", "threshold"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN, NEURON_OP, ["x", "threshold", "v_init"], ["y"], nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=["reset", "leak"],
    )


def _spiking_max_pool_function(opset: int) -> onnx.FunctionProto:
    """ONNX function giving SpikingMaxPool its rate-limit meaning: MaxPool with the same attributes."""
    body = helper.make_node("MaxPool", ["x"], ["y"])
    body.attribute.extend(helper.make_attribute_ref(k, t) for k, t in MAX_POOL_ATTRIBUTES.items())
    return helper.make_function(DOMAIN, SPIKING_MAX_POOL, ["x"], ["y"], [body],
                                opset_imports=[helper.make_opsetid("", opset)],
                                attributes=list(MAX_POOL_ATTRIBUTES))


def ensure_domain(model: onnx.ModelProto) -> None:
    """Declare the snnconvert domain and its functions (IF, SpikingMaxPool) on ``model`` (idempotent)."""
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    for name, make in ((NEURON_OP, _neuron_function), (SPIKING_MAX_POOL, _spiking_max_pool_function)):
        if not any(f.domain == DOMAIN and f.name == name for f in model.functions):
            model.functions.append(make(opset))


def is_spiking_max_pool(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == SPIKING_MAX_POOL


def spiking_max_pools(model: onnx.ModelProto) -> list[str]:
    """In place: every MaxPool downstream of a neuron becomes a SpikingMaxPool (same attributes);
    returns the names of the rewritten nodes."""
    varying: set[str] = set()
    done = []
    for node in model.graph.node:
        if is_neuron(node):
            varying.update(node.output)
            continue
        if not any(i in varying for i in node.input):
            continue
        varying.update(node.output)
        if node.op_type == "MaxPool" and node.domain in ("", "ai.onnx"):
            node.op_type, node.domain = SPIKING_MAX_POOL, DOMAIN
            del node.output[1:]
            done.append(node.name)
    if done:
        ensure_domain(model)
    return done


def make_neuron(name: str, x: str, y: str, threshold: np.ndarray, v_init: np.ndarray,
                reset: str = "subtract", leak: float = 0.0
                ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """Build an IF node and its two initializers (named ``<name>.threshold``/``.v_init``)."""
    if reset not in RESET_MODES:
        raise ValueError(f"reset must be one of {RESET_MODES}, got {reset!r}")
    th_name, v0_name = f"{name}.threshold", f"{name}.v_init"
    inits = [numpy_helper.from_array(np.asarray(threshold, np.float32), th_name),
             numpy_helper.from_array(np.asarray(v_init, np.float32), v0_name)]
    node = helper.make_node(NEURON_OP, [x, th_name, v0_name], [y], name=name, domain=DOMAIN,
                            reset=reset, leak=float(leak))
    return node, inits


def is_neuron(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == NEURON_OP


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def get_initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace (or add) the initializer ``name`` with ``value``, keeping its dtype."""
    graph = model.graph
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            dtype = numpy_helper.to_array(t).dtype
            graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(value, dtype), name))
            return
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def neurons(model: onnx.ModelProto) -> list[Neuron]:
    """All neuron nodes of ``model`` in graph (topological) order."""
    inits = initializer_map(model)
    out = []
    for node in model.graph.node:
        if not is_neuron(node):
            continue
        reset = _attr(node, "reset", "subtract")
        if isinstance(reset, bytes):
            reset = reset.decode()
        out.append(Neuron(node=node,
                          threshold=numpy_helper.to_array(inits[node.input[1]]),
                          v_init=numpy_helper.to_array(inits[node.input[2]]),
                          reset=reset, leak=float(_attr(node, "leak", 0.0))))
    return out


def get_meta(model: onnx.ModelProto, key: str, default: str | None = None) -> str | None:
    full = META_PREFIX + key
    for p in model.metadata_props:
        if p.key == full:
            return p.value
    return DEFAULT_META.get(key, default)


def set_meta(model: onnx.ModelProto, key: str, value: Any) -> None:
    full = META_PREFIX + key
    text = value if isinstance(value, str) else json.dumps(value)
    for p in model.metadata_props:
        if p.key == full:
            p.value = text
            return
    model.metadata_props.add(key=full, value=text)


DERIVED_KEY = "derived"
"""Metadata key (``snnconvert.derived``) of the target data a model carries: a JSON object
``{initializer prefix: digest of the float model it was derived from}``."""


def source_digest(model: onnx.ModelProto) -> str:
    """A digest of what target data is derived from: the nodes, every initializer that is not
    itself derived data, and the timesteps the IR is tuned for."""
    derived = tuple(derived_prefixes(model))
    h = hashlib.sha256()
    h.update(get_meta(model, "timesteps").encode())
    for node in model.graph.node:
        h.update(node.SerializeToString(deterministic=True))
    for t in sorted((t for t in model.graph.initializer if not t.name.startswith(derived)),
                    key=lambda t: t.name):
        arr = numpy_helper.to_array(t)
        h.update(f"{t.name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def derived_prefixes(model: onnx.ModelProto) -> dict[str, str]:
    """``{prefix: digest}`` of the target data stamped on ``model``."""
    for p in model.metadata_props:
        if p.key == META_PREFIX + DERIVED_KEY:
            return dict(json.loads(p.value))
    return {}


def stamp_derived(model: onnx.ModelProto, prefix: str) -> str:
    """Record that the initializers named ``prefix*`` derive from ``model``'s current float
    parameters; returns the digest."""
    stamps = derived_prefixes(model)
    stamps[prefix] = ""
    set_meta(model, DERIVED_KEY, stamps)  # the prefix is excluded from the digest
    stamps[prefix] = source_digest(model)
    set_meta(model, DERIVED_KEY, stamps)
    return stamps[prefix]


def derived_state(model: onnx.ModelProto, prefix: str) -> str:
    """"absent" (no ``prefix*`` initializers), "fresh" (stamped with the model's current
    digest) or "stale" (derived from other parameters, or never stamped)."""
    if not any(t.name.startswith(prefix) for t in model.graph.initializer):
        return "absent"
    digest = derived_prefixes(model).get(prefix)
    return "fresh" if digest is not None and digest == source_digest(model) else "stale"


def drop_derived(model: onnx.ModelProto, prefixes: tuple[str, ...] | None = None) -> list[str]:
    """Remove target data (all stamped prefixes, or ``prefixes``) and its stamps; returns the
    names of the removed initializers."""
    stamps = derived_prefixes(model)
    drop = tuple(prefixes if prefixes is not None else stamps)
    if not drop:
        return []
    removed = [t.name for t in model.graph.initializer if t.name.startswith(drop)]
    keep = [t for t in model.graph.initializer if not t.name.startswith(drop)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for p in drop:
        stamps.pop(p, None)
    if stamps:
        set_meta(model, DERIVED_KEY, stamps)
    else:
        for i, p in enumerate(model.metadata_props):
            if p.key == META_PREFIX + DERIVED_KEY:
                del model.metadata_props[i]
                break
    return removed


def is_snn(model: onnx.ModelProto) -> bool:
    """True when ``model`` is a converted network (declares the snnconvert domain)."""
    return any(o.domain == DOMAIN for o in model.opset_import) or any(
        p.key.startswith(META_PREFIX) for p in model.metadata_props)


def timesteps(model: onnx.ModelProto) -> int:
    return int(get_meta(model, "timesteps"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Check and atomically write a ``.snn.onnx`` file."""
    ensure_domain(model)
    for key, value in DEFAULT_META.items():
        if not any(p.key == META_PREFIX + key for p in model.metadata_props):
            set_meta(model, key, value)
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a ``.snn.onnx`` file written by :func:`save`."""
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise ModelLoadError(f"file not found: {path}") from None
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX file ({type(exc).__name__})",
                             hint="Pass a model written by 'snnconvert convert'.") from None
    if not is_snn(model):
        raise ModelLoadError(f"{path} is an ONNX model but not a converted SNN",
                             hint="Convert it first with 'snnconvert convert', or pass --calib.")
    if get_meta(model, "format_version") == "1":  # v1 ran a MaxPool on spikes as the gated max
        spiking_max_pools(model)
        set_meta(model, "format_version", FORMAT_VERSION)
    return model
