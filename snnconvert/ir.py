"""The spiking IR: an ONNX graph whose spiking neurons are nodes of the ``snnconvert`` domain.

A converted network is a plain, valid ONNX model. Linear parts (Conv, Gemm, pooling,
Add, Concat, Pad, Slice, ...) stay standard ONNX ops and are applied at every time step.
Each ReLU/Clip becomes one neuron node::

    y = IF(x, threshold, v_init[, step_bias])        domain "snnconvert", version 1
        x          input current at each step (the ANN pre-activation)
        threshold  initializer, scalar or per-channel (shape broadcastable to x without
                   the batch axis, e.g. [C,1,1] for NCHW or [F] for [N,F])
        v_init     initializer, initial membrane potential (absolute units, same
                   broadcast shape rules as threshold); theta/2 by default
        step_bias  optional initializer [S, *c]: a current added at steps 1..S only, one row
                   per step (c: the threshold's broadcast shape, e.g. [C,1,1] or [F]); its
                   rows sum to zero (any constant part belongs in the synapse's bias), so it
                   moves spikes in time without changing the rate limit. Calibration for T
                   fits it with S = T (:mod:`snnconvert.passes.step_bias`); a run of more
                   than S steps gets no step bias after step S (:func:`step_bias_at`).
        attribute reset  "subtract" (soft reset, default) or "zero" (hard reset)
        attribute leak   float in [0, 1): v <- (1 - leak) * v before integrating (0 = IF)
        y          spikes scaled by the threshold: y = threshold * s, s in {0, 1}

    Each step t = 1..T:  v = (1 - leak) * v + x + step_bias[t]  (step_bias[t] = 0 for t > S);
                s = v >= threshold;
                v = v - threshold * s  (subtract)   or   v = v * (1 - s)  (zero)

Over T steps the mean of ``y`` approximates ``clip(x, 0, threshold)``; the model-local
ONNX function shipped with every IR file defines ``IF`` as exactly that clipped ReLU, so
onnxruntime runs a ``.snn.onnx`` as its rate-limit ANN (useful for calibration and
diagnostics; the step bias, summing to zero, is not part of it).

A max-pool fed (directly or through linear ops) by spiking neurons is its own op::

    y = SpikingMaxPool(x)     domain "snnconvert", the attributes of ONNX MaxPool

    Each window emits, at every step, the increase of the largest running sum of its inputs
    (gated by accumulated input, Rueckauer et al. 2017), so over t steps its output sums to
    exactly the max of the accumulated inputs. Its ONNX function is MaxPool itself: the rate
    limit is the max of the input rates. A plain ``MaxPool`` in the IR is a per-step max.

A dense synapse with one integer delay per connection (learned by DCLS, or fixed) is its own op::

    y = DelayDense(x, weights, delays, bias)    domain "snnconvert"
        x        [N, in] at each step
        weights  initializer [out, in] (float)
        delays   initializer [out, in] (int64, 0 <= d <= max_delay): steps synapse (j, i) holds a value
        bias     initializer [out]
        attribute max_delay  D, the largest delay the synapse can hold (its ring buffer keeps the
                             last D + 1 input steps)

    At step t:  y_t[j] = bias[j] + sum_i weights[j, i] * x_{t - delays[j, i]}[i],  x_t = 0 for t < 1.

    Delay 0 is the plain zero-delay dense synapse of every other op. Its ONNX function is the
    rate limit, Gemm(x, weights^T) + bias: delays shift spikes in time but not their rates.

``snnconvert.ir_reference`` executes this semantics in numpy; every target is tested against it.
Graph-level metadata lives in ``metadata_props`` under ``snnconvert.*`` keys; two of them say
how the network meets time at its two ends (:class:`Encoding`, :class:`Readout`):

    snnconvert.encoding   what enters the graph input at step t = 1..T
        analog                     the sample x itself at every step (default)
        frames (alias spikes)      x[:, t-1] of a time-varying sample [N, T, *input]
        rate:bernoulli[:SEED]      spikes s_t = (u_t < clip(x, 0, 1)), u_t uniform from
                                   :func:`rate_uniforms` (SEED, default 0)
        rate:deterministic         an integrate-and-fire encoder: a_0 = 1/2,
                                   a_t = a_{t-1} + clip(x, 0, 1); s_t = a_t >= 1; a_t -= s_t
    snnconvert.readout    what the network answers from its per-step output y_t
        membrane                   (1/T) sum_t y_t, the mean membrane (default)
        last                       y_T, the membrane at the last step
        window:K                   the mean of y_t over the last K steps (all T when T < K)
        spikes                     sum_t s_t, the spike count of the output neurons (the
                                   graph output must be a neuron's output, y = threshold * s)

An ``x`` with one more axis than the graph input (axis 1 = time) is time-varying input under
every encoding but ``rate``: frames are the input of each step whatever the IR was converted for.
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

from .errors import DataError, ModelLoadError, TargetError

DOMAIN = "snnconvert"
DOMAIN_VERSION = 1
NEURON_OP = "IF"
NEURON_INPUTS = ("x", "threshold", "v_init", "step_bias")
SPIKING_MAX_POOL = "SpikingMaxPool"
DELAY_DENSE = "DelayDense"
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


ENCODINGS = ("analog", "frames", "spikes", "rate")
RATE_MODES = ("bernoulli", "deterministic")
READOUTS = ("membrane", "last", "window", "spikes")


@dataclass(frozen=True)
class Encoding:
    """How the input enters the network at each step (``snnconvert.encoding``; see above)."""

    kind: str = "analog"          # analog | frames | rate ("spikes" is read as frames)
    mode: str = "bernoulli"       # rate only
    seed: int = 0                 # rate:bernoulli only

    @property
    def time_varying(self) -> bool:
        """Whether the graph input changes from step to step (frames, rate)."""
        return self.kind != "analog"

    @classmethod
    def parse(cls, text: str) -> "Encoding":
        """Read ``analog``, ``frames``, ``spikes``, ``rate[:bernoulli[:SEED]|:deterministic]``."""
        parts = str(text).strip().split(":")
        kind = parts[0]
        if kind not in ENCODINGS:
            raise ValueError(f"unknown input encoding {text!r}: use one of analog, frames, spikes, "
                             "rate:bernoulli[:SEED], rate:deterministic")
        if kind == "spikes":
            kind = "frames"
        if kind != "rate":
            if len(parts) > 1:
                raise ValueError(f"input encoding {text!r}: '{kind}' takes no parameters")
            return cls(kind)
        mode = parts[1] if len(parts) > 1 else "bernoulli"
        if mode not in RATE_MODES or len(parts) > (3 if mode == "bernoulli" else 2):
            raise ValueError(f"input encoding {text!r}: use rate:bernoulli[:SEED] or rate:deterministic")
        try:
            seed = int(parts[2]) if len(parts) > 2 else 0
        except ValueError:
            raise ValueError(f"input encoding {text!r}: the seed must be an integer") from None
        return cls("rate", mode, seed)

    def __str__(self) -> str:
        if self.kind != "rate":
            return self.kind
        return f"rate:bernoulli:{self.seed}" if self.mode == "bernoulli" else "rate:deterministic"


@dataclass(frozen=True)
class Readout:
    """What the network answers from its per-step output (``snnconvert.readout``; see above)."""

    kind: str = "membrane"        # membrane | last | window | spikes
    window: int = 0               # window only: K steps

    @classmethod
    def parse(cls, text: str) -> "Readout":
        """Read ``membrane``, ``last``, ``window:K`` or ``spikes``."""
        parts = str(text).strip().split(":")
        if parts[0] not in READOUTS or (parts[0] == "window") != (len(parts) == 2) or len(parts) > 2:
            raise ValueError(f"unknown readout {text!r}: use membrane, last, window:K or spikes")
        if parts[0] != "window":
            return cls(parts[0])
        try:
            k = int(parts[1])
        except ValueError:
            k = 0
        if k < 1:
            raise ValueError(f"readout {text!r}: the window must be a positive number of steps")
        return cls("window", k)

    def span(self, timesteps: int) -> tuple[int, int]:
        """(first step, number of steps) of a ``timesteps``-step run whose outputs this readout
        averages: all T (membrane, and spikes, whose count covers every step), the last (last),
        the last min(K, T) (window:K)."""
        if self.kind == "last":
            return timesteps - 1, 1
        if self.kind == "window":
            k = min(self.window, timesteps)
            return timesteps - k, k
        return 0, timesteps

    def __str__(self) -> str:
        return f"window:{self.window}" if self.kind == "window" else self.kind


def encoding(model: onnx.ModelProto) -> Encoding:
    """The input encoding recorded in ``model`` (ModelLoadError when it is not one we know)."""
    try:
        return Encoding.parse(get_meta(model, "encoding"))
    except ValueError as exc:
        raise ModelLoadError(f"the IR's metadata snnconvert.encoding: {exc}") from None


def readout(model: onnx.ModelProto) -> Readout:
    """The readout recorded in ``model``; a spike-count readout needs a neuron at the output."""
    try:
        r = Readout.parse(get_meta(model, "readout"))
    except ValueError as exc:
        raise ModelLoadError(f"the IR's metadata snnconvert.readout: {exc}") from None
    if r.kind == "spikes" and output_neuron(model) is None:
        raise ModelLoadError(f"readout 'spikes' needs the graph output "
                             f"'{model.graph.output[0].name}' to be a neuron's output",
                             hint="Use readout membrane, last or window:K, or end the network "
                                  "with a neuron layer.")
    return r


def output_neuron(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The neuron node producing the graph output, if one does."""
    out = model.graph.output[0].name
    return next((n for n in model.graph.node if is_neuron(n) and n.output[0] == out), None)


def rate_uniforms(shape: tuple[int, ...], timesteps: int, seed: int) -> np.ndarray:
    """The uniforms u_t [timesteps, *shape] (float32) of ``rate:bernoulli:SEED`` for one
    sample: the same for every sample and every batch split, and a T-step stream is the
    prefix of a longer one (drawn one step at a time from PCG64(seed))."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.stack([rng.random(shape, dtype=np.float32) for _ in range(timesteps)])


def check_constant_input(model: onnx.ModelProto, target: str, per_step_input: bool = False) -> None:
    """Refuse (TargetError) on a target that reads the mean membrane and injects the input as
    one constant current (or, ``per_step_input``, takes each step's input as given: analog and
    frames), a network whose IR asks for another encoding or readout."""
    check_io(encoding(model), readout(model), target, per_step_input)


def check_io(enc: Encoding, out: Readout, target: str, per_step_input: bool = False) -> None:
    """:func:`check_constant_input` on an encoding and a readout (before a conversion)."""
    if per_step_input and enc.kind == "rate":
        raise TargetError(f"the {target} target takes each step's input as it is given and has no "
                          f"rate encoder; this network's input encoding is '{enc}'",
                          hint="Give spike frames x [N, T, ...] (encoding frames), or run it on "
                               "--target torch.")
    if enc.time_varying and not per_step_input:
        raise TargetError(f"the {target} target injects a constant input current; this network's "
                          f"input encoding is '{enc}'",
                          hint="Run it on --target torch, or convert with --encoding analog.")
    if out.kind != "membrane":
        raise TargetError(f"the {target} target reads the mean membrane; this network's readout "
                          f"is '{out}'",
                          hint="Run it on --target torch, or convert with --readout membrane.")


def input_rank(model: onnx.ModelProto) -> int:
    """Axes of the graph input, batch axis included."""
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    return len(inp.type.tensor_type.shape.dim)


def data_steps(model: onnx.ModelProto, x_shape: tuple[int, ...], what: str = "the input") -> int | None:
    """T of a time-varying batch (``x_shape`` = [N, T, *input]), or None for a static one
    [N, *input]; refuses (DataError) data that does not fit the IR's encoding."""
    rank, enc = input_rank(model), encoding(model)
    if len(x_shape) == rank + 1:
        if enc.kind == "rate":
            raise DataError(f"{what} has a time axis ({list(x_shape)}) but the network's input "
                            f"encoding '{enc}' turns static inputs into spikes",
                            hint="Give static samples, or convert with --encoding frames.")
        return int(x_shape[1])
    if len(x_shape) == rank and enc.kind == "frames":
        raise DataError(f"{what} has no time axis ({list(x_shape)}); the network's input encoding "
                        "'frames' takes one input per step, as x [N, T, *input]")
    if len(x_shape) not in (rank, rank + 1):
        raise DataError(f"{what} has {len(x_shape)} axes; the network takes {rank} "
                        f"(or {rank + 1} with time at axis 1)")
    return None


def check_steps(timesteps: int, data_t: int | None, source: str) -> None:
    """Refuse (DataError) to run more steps than a time-varying input holds."""
    if data_t is not None and timesteps > data_t:
        raise DataError(f"{source} holds T={data_t} steps per sample; T={timesteps} was asked for",
                        hint=f"Use T <= {data_t} (the default is the data's length).")


@dataclass
class Neuron:
    """A view of one neuron node with its parameters as arrays."""

    node: onnx.NodeProto
    threshold: np.ndarray
    v_init: np.ndarray
    reset: str
    leak: float
    step_bias: np.ndarray | None = None

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
    """ONNX function giving IF its rate-limit meaning, clip(x, 0, threshold) (the optional
    step bias sums to zero over its steps: no term in the limit)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Min", ["r", "threshold"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN, NEURON_OP, list(NEURON_INPUTS), ["y"], nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=["reset", "leak"],
    )


def _spiking_max_pool_function(opset: int) -> onnx.FunctionProto:
    """ONNX function giving SpikingMaxPool its rate-limit meaning: MaxPool with the same attributes."""
    body = helper.make_node("MaxPool", ["x"], ["y"])
    body.attribute.extend(helper.make_attribute_ref(k, t) for k, t in MAX_POOL_ATTRIBUTES.items())
    return helper.make_function(DOMAIN, SPIKING_MAX_POOL, ["x"], ["y"], [body],
                                opset_imports=[helper.make_opsetid("", opset)],
                                attributes=list(MAX_POOL_ATTRIBUTES))


def _delay_dense_function(opset: int) -> onnx.FunctionProto:
    """ONNX function giving DelayDense its rate-limit meaning: Gemm(x, weights^T, bias) (the
    delays move spikes in time, not their rates)."""
    body = helper.make_node("Gemm", ["x", "weights", "bias"], ["y"], transB=1)
    return helper.make_function(DOMAIN, DELAY_DENSE, ["x", "weights", "delays", "bias"], ["y"], [body],
                                opset_imports=[helper.make_opsetid("", opset)],
                                attributes=["max_delay"])


def ensure_domain(model: onnx.ModelProto) -> None:
    """Declare the snnconvert domain and its functions (IF, SpikingMaxPool, DelayDense) on
    ``model`` (idempotent)."""
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    for name, make in ((NEURON_OP, _neuron_function), (SPIKING_MAX_POOL, _spiking_max_pool_function),
                       (DELAY_DENSE, _delay_dense_function)):
        old = [i for i, f in enumerate(model.functions) if f.domain == DOMAIN and f.name == name]
        if old and name == NEURON_OP and len(model.functions[old[0]].input) < len(NEURON_INPUTS):
            del model.functions[old[0]]  # an IR file from before the step bias input
            old = []
        if not old:
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


def is_delay_dense(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == DELAY_DENSE


def make_delay_dense(name: str, x: str, y: str, weights: np.ndarray, delays: np.ndarray,
                     bias: np.ndarray | None = None, max_delay: int | None = None
                     ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """Build a DelayDense node and its initializers ``<name>.weights``/``.delays``/``.bias``;
    ``max_delay`` defaults to the largest delay."""
    weights = np.asarray(weights, np.float32)
    delays = np.asarray(delays)
    if delays.shape != weights.shape or weights.ndim != 2:
        raise ValueError(f"weights and delays must both be [out, in], got {weights.shape} and {delays.shape}")
    if np.any(delays != np.round(delays)) or np.any(delays < 0):
        raise ValueError("delays must be non-negative integers")
    delays = delays.astype(np.int64)
    top = int(delays.max(initial=0))
    max_delay = top if max_delay is None else int(max_delay)
    if max_delay < top:
        raise ValueError(f"max_delay {max_delay} is below the largest delay {top}")
    bias = np.zeros(weights.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32)
    names = [f"{name}.weights", f"{name}.delays", f"{name}.bias"]
    inits = [numpy_helper.from_array(a, n) for a, n in zip((weights, delays, bias.reshape(-1)), names)]
    node = helper.make_node(DELAY_DENSE, [x, *names], [y], name=name, domain=DOMAIN, max_delay=max_delay)
    return node, inits


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
        sb = step_bias_input(node)
        out.append(Neuron(node=node,
                          threshold=numpy_helper.to_array(inits[node.input[1]]),
                          v_init=numpy_helper.to_array(inits[node.input[2]]),
                          reset=reset, leak=float(_attr(node, "leak", 0.0)),
                          step_bias=None if sb is None else numpy_helper.to_array(inits[sb])))
    return out


def step_bias_input(node: onnx.NodeProto) -> str | None:
    """The name of neuron ``node``'s step bias initializer (None: it has none)."""
    k = NEURON_INPUTS.index("step_bias")
    return node.input[k] if len(node.input) > k and node.input[k] else None


def step_bias_at(step_bias, start: int, steps: int):
    """The step bias of steps start+1 .. start+steps (0-based rows start .. start+steps-1) of a
    run, [steps, *c]: zero past its S rows (numpy array or torch tensor, as given)."""
    part = step_bias[start:start + steps]
    if len(part) == steps:
        return part
    shape = (steps, *step_bias.shape[1:])
    out = np.zeros(shape, step_bias.dtype) if isinstance(step_bias, np.ndarray) \
        else step_bias.new_zeros(shape)
    out[:len(part)] = part
    return out


def set_step_bias(model: onnx.ModelProto, node: onnx.NodeProto, step_bias: np.ndarray | None) -> None:
    """Give neuron ``node`` the step bias ``step_bias`` [S, *c] (rows summing to zero; None or
    all zeros: none), as the initializer ``<name>.step_bias``."""
    name = f"{node.name}.step_bias"
    drop = step_bias is None or not np.any(step_bias)
    old = step_bias_input(node)
    if old is not None:
        del node.input[NEURON_INPUTS.index("step_bias"):]
        keep = [t for t in model.graph.initializer if t.name != old]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    if drop:
        return
    total = np.abs(np.asarray(step_bias, np.float64).sum(0)).max()
    if total > 1e-4 * max(1.0, float(np.abs(step_bias).max()) * len(step_bias)):
        raise ValueError(f"the step bias of {node.name} must sum to zero over its steps "
                         f"(largest sum {total:.3g}); fold its mean into the synapse's bias")
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(step_bias, np.float32), name))
    node.input.append(name)
    ensure_domain(model)


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
