"""SpikingNetwork: a torch nn.Module that simulates a spiking-IR ONNX graph.

Semantics (shared by every target): layer-synchronous with zero delay. At every step the
input of that step (see :class:`snnconvert.ir.Encoding`: the constant analog input, a frame
of a time-varying sample [B, T, ...], or rate-coded spikes) flows through all nodes in
topological order; neuron nodes keep a membrane potential across the steps of a sample; the
readout (:class:`snnconvert.ir.Readout`) reads the graph output.

Speed: under analog input, tensors that depend only on the input are *time-invariant* and
computed once (the first layer's synaptic operation); every other tensor holds a whole chunk
of time steps stacked into the batch axis ([T*B, ...]), so each synaptic op runs once per
chunk and only the neuron recurrence loops over time. Time-varying input makes the input
itself such a chunked tensor (a second plan of the graph, built on first use).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from tqdm.auto import tqdm

from .. import ir
from ..graph import attrs as graph_attrs, set_attr
from ..graph import constant_value, is_constant
from ..errors import SnnConvertError, UnsupportedModelError
from ..results import SimResult
from ..ops import lookup
from . import fused, fused_training
from . import neurons as nrn
from .encoding import StepInput, step_encoder
from .event_engine import EventEngine
from .event_kernels import EventSynapses
from .memory import HeapGuard
from .ort_kernels import OrtKernels

CONST, INVARIANT, VARYING = 0, 1, 2

NeuronHook = Callable[[str, torch.Tensor, int, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
"""(neuron name, synaptic current, number of leading axes (1: [B, ...] constant, 2: [T, B, ...]),
fire(current) -> spikes [T, B, ...]) -> the spikes to propagate. The current is the synapses'
alone: ``fire`` adds the neuron's step bias, whose rows sum to zero, so a hook that replaces the
neuron by its rate limit (clip(current, 0, θ), the ANN twin of one-step runs) gets that limit's
input, as the IR's ONNX function does."""

ValueHook = Callable[[onnx.NodeProto, torch.Tensor, int], torch.Tensor]
"""(node, its output, steps stacked in the output's batch axis: 1 for a time-invariant value)
-> the value to propagate instead (training-time layers inserted after a node)."""


CPU_CHUNK_ELEMENTS = 5_000_000
"""Target size (elements) of the largest activation of one CPU time chunk. Measured on this
project's benchmarks (1 thread): 16 steps per chunk ran 1.5-1.8x slower than 2-4 steps on MNIST
nets at batch 256 and on ResNet-20 at batch 100; about 5 M elements (20 MB) was near the best."""


def param_key(name: str) -> str:
    """ParameterDict key for an initializer name ('.' is not allowed in module keys)."""
    return name.replace(".", "__")


class SpikingNetwork(nn.Module):
    """Simulate an IR model; trainable through surrogate gradients."""

    def __init__(self, model: onnx.ModelProto, surrogate: str = "atan", alpha: float = 2.0,
                 time_chunk: int | str | None = "auto", cpu_kernels: str = "onnxruntime",
                 synapses: str = "dense") -> None:
        """``time_chunk``: steps simulated together (memory grows with chunk × batch; None = all T;
        "auto": 16 on accelerators, and on CPUs as many as keep the largest activation of a chunk
        near :data:`CPU_CHUNK_ELEMENTS`, where cache misses otherwise slow every op).
        ``cpu_kernels``: "onnxruntime" runs Conv/Gemm/MatMul through onnxruntime during CPU
        inference (several times faster than torch on CPUs) and float32 CPU neurons through numba
        kernels (:mod:`.fused` in inference, :mod:`.fused_training` in training); "torch" runs
        every op in torch.
        ``synapses``: how Conv/Gemm/MatMul on spikes run during CPU inference: "dense" (the
        default: one summation order, so float32 results repeat run to run and across process
        counts). "event" and "auto" run inference of an analog input through the compiled event
        engine (:mod:`.event_engine`: per sample, layer-major, channel-last uint8 spike trains)
        when the graph allows it (see :attr:`use_engine`); otherwise "event" always uses the
        per-layer event-driven kernels (:mod:`.event_kernels`) and "auto" times both per layer
        and picks by measured input density (faster where layers fire sparsely, but the timed
        choice can change float32 sums, and so a few spikes, between runs)."""
        super().__init__()
        if cpu_kernels not in ("onnxruntime", "torch"):
            raise ValueError("cpu_kernels must be 'onnxruntime' or 'torch'")
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self._ort = OrtKernels(opset) if cpu_kernels == "onnxruntime" else None
        self.synapses = EventSynapses(synapses)
        self._heap = HeapGuard()
        if surrogate not in nrn.SURROGATES:
            raise ValueError(f"surrogate must be one of {nrn.SURROGATES}")
        if not (time_chunk in (None, "auto") or (isinstance(time_chunk, int) and time_chunk >= 1)):
            raise ValueError("time_chunk must be a positive int, None or 'auto'")
        self.surrogate, self.alpha, self.time_chunk = surrogate, alpha, time_chunk
        self._step_elements = 0  # largest per-sample, per-step activation seen (for "auto")
        self._model = model
        graph = model.graph
        self.params = nn.ParameterDict()
        self._consts: dict[str, torch.Tensor] = {}
        kinds: dict[str, int] = {}
        self._step_biases = {name: "step_bias_" + param_key(name) for name in
                             (ir.step_bias_input(n) for n in graph.node if ir.is_neuron(n)) if name}
        """Neuron step bias initializer -> its buffer (not trained: see :mod:`..ir`)."""
        for t in graph.initializer:
            arr = numpy_helper.to_array(t)
            kinds[t.name] = CONST
            if t.name in self._step_biases:
                self.register_buffer(self._step_biases[t.name],
                                     torch.from_numpy(np.array(arr, dtype=np.float32)))
            elif arr.dtype.kind == "f":
                self.params[param_key(t.name)] = nn.Parameter(
                    torch.from_numpy(np.array(arr, dtype=np.float32)))
            else:
                self._consts[t.name] = torch.from_numpy(np.array(arr))
        inputs = [i.name for i in graph.input if i.name not in kinds]
        if len(inputs) != 1:
            raise UnsupportedModelError(f"the network must have exactly one input, found {inputs}")
        self.input_name = inputs[0]
        self.output_name = graph.output[0].name
        kinds[self.input_name] = INVARIANT
        self._nodes: list[tuple[onnx.NodeProto, dict, int]] = []
        self._entries = {}  # node name -> its op registry entry
        self.neuron_names: list[str] = []
        for i, node in enumerate(graph.node):
            if not node.name:
                node.name = f"{node.op_type}_{i}"
            if is_constant(node):
                value = constant_value(node)
                self.register_buffer(f"const_{i}", torch.from_numpy(np.array(value)), persistent=False)
                self._consts[node.output[0]] = getattr(self, f"const_{i}")
                kinds[node.output[0]] = CONST
                continue
            attrs = graph_attrs(node)
            entry = lookup(node)
            if entry is None or not entry.has_kernel:
                raise UnsupportedModelError("the torch runtime has no implementation for this op",
                                            node=node.name, op=node.op_type,
                                            hint="Run 'snnconvert inspect' for the coverage report.")
            self._entries[node.name] = entry
            k = max((kinds[x] for x in node.input if x), default=CONST)
            if ir.is_neuron(node):
                k = VARYING
                self.neuron_names.append(node.name)
            elif entry.stateful and k == INVARIANT:  # e.g. a delay line: varies on a constant input
                k = VARYING
            for o in node.output:
                kinds[o] = k
            self._nodes.append((node, attrs, k))
        self._kinds = kinds
        self._event_nodes = {node.name for node, _, k in self._nodes if k == VARYING
                             and self._entries[node.name].event_driven
                             and all(kinds.get(i) == CONST for i in node.input[1:] if i)}
        self._pooled = self._pool_pairs(graph)
        self._tail = self._readout_tail(graph)
        self._free_after = self._liveness(graph)
        self._plans = {INVARIANT: (self._nodes, self._kinds, self._tail, self._free_after)}
        self._engine: EventEngine | None | bool = False  # False: not compiled yet
        self.use_engine = True
        """In the event-driven modes, run CPU inference through the compiled event engine
        (:mod:`.event_engine`) where the graph allows; False: the per-layer interpreter."""
        self.encoding, self.readout = ir.encoding(model), ir.readout(model)
        out_neuron = ir.output_neuron(model)
        self._out_threshold = out_neuron.input[1] if out_neuron is not None else None
        self.leaks = nn.ParameterDict({
            param_key(node.name): nn.Parameter(torch.tensor(float(attrs.get("leak", 0.0))),
                                               requires_grad=False)
            for node, attrs, _ in self._nodes if ir.is_neuron(node)})
        """Per-layer LIF leak, trainable when its requires_grad is set (clamped to [0, 0.999])."""
        self.delay_positions = nn.ParameterDict({
            param_key(node.name): nn.Parameter(self._consts[node.input[2]].to(torch.float32),
                                               requires_grad=False)
            for node, _, _ in self._nodes if ir.is_delay_dense(node)})
        """Continuous delay of every synapse of each DelayDense node (DCLS positions, in steps),
        started at its integer delays; used only while :attr:`delay_sigma` is set."""
        self.delay_sigma: float | None = None
        self.delay_rounded = False
        """With :attr:`delay_sigma`: the forward pass uses the rounded positions (the gradient
        is still the Gaussian kernel's)."""
        """While set, DelayDense nodes run the Gaussian kernel of :attr:`delay_positions` at this
        width (DCLS training) instead of their integer delays."""
        self._uniforms: torch.Tensor | None = None
        self.record = False
        self.spike_counts: dict[str, torch.Tensor] = {}
        self.neuron_hook: NeuronHook | None = None
        self.value_hook: ValueHook | None = None
        self.substitutes: dict[str, torch.Tensor] = {}
        """Initializer name -> a tensor used in place of its parameter (weights computed by a
        training-time reparametrization, differentiable in what they are computed from)."""

    def _pool_pairs(self, graph: onnx.GraphProto) -> dict[str, tuple[onnx.NodeProto, int]]:
        """Neuron name -> (its only consumer, a k x k, stride-k, unpadded AveragePool; k): pairs
        that the event-driven modes run as one kernel (:func:`.fused.if_neuron_pool_fused`),
        so the spike tensor between them is never written."""
        users: dict[str, list[onnx.NodeProto]] = {}
        for node, _, _ in self._nodes:
            for i in node.input:
                users.setdefault(i, []).append(node)
        outputs = {o.name for o in graph.output}
        pairs = {}
        for node, _, _ in self._nodes:
            consumers = users.get(node.output[0], [])
            if not ir.is_neuron(node) or node.output[0] in outputs or len(consumers) != 1:
                continue
            pool = consumers[0]
            if pool.op_type != "AveragePool" or pool.output[0] in outputs:
                continue
            attrs = graph_attrs(pool)
            k = list(attrs.get("kernel_shape", []))
            if (len(k) == 2 and k[0] == k[1] and list(attrs.get("strides", [1, 1])) == k
                    and not any(attrs.get("pads", [])) and attrs.get("auto_pad", "NOTSET") in (
                        "NOTSET", "VALID", b"NOTSET", b"VALID")
                    and not attrs.get("ceil_mode", 0)
                    and list(attrs.get("dilations", [1, 1])) == [1, 1]):
                pairs[node.name] = (pool, int(k[0]))
        return pairs

    def _readout_tail(self, graph: onnx.GraphProto) -> set[str]:
        """Names of the affine nodes between the last neurons and the output.

        The mean over time commutes with affine maps, so these run once on time-averaged
        inputs instead of at every step.
        """
        users: dict[str, list[onnx.NodeProto]] = {}
        for node, _, _ in self._nodes:
            for i in node.input:
                users.setdefault(i, []).append(node)
        outputs = {o.name for o in graph.output}
        tail: set[str] = set()
        for node, _, kind in reversed(self._nodes):
            entry = self._entries[node.name]
            if kind != VARYING or ir.is_neuron(node) or not entry.affine:
                continue
            if entry.bilinear and not any(self._kinds.get(i) == CONST for i in node.input[1:]):
                continue
            out = node.output[0]
            consumers = users.get(out, [])
            if all(c.name in tail for c in consumers) and (consumers or out in outputs):
                tail.add(node.name)
        return tail

    def _liveness(self, graph: onnx.GraphProto) -> list[list[str]]:
        """For each node (outside the readout tail), the varying tensors no later node reads:
        dropped right after it runs so a chunk holds only live activations."""
        keep = {o.name for o in graph.output}
        for node, _, _ in self._nodes:
            if node.name in self._tail:
                keep.update(node.input)
        last: dict[str, int] = {}
        for i, (node, _, _) in enumerate(self._nodes):
            if node.name not in self._tail:
                for name in node.input:
                    last[name] = i
        free: list[list[str]] = [[] for _ in self._nodes]
        for name, i in last.items():
            if self._kinds.get(name) == VARYING and name not in keep:
                free[i].append(name)
        return free

    # ----------------------------------------------------------- input plans
    def _use_plan(self, input_kind: int) -> None:
        """Select the graph plan for a time-invariant (analog) or a per-step (VARYING) input."""
        if input_kind not in self._plans:
            nodes, kinds = [], {name: k for name, k in self._plans[INVARIANT][1].items() if k == CONST}
            kinds[self.input_name] = input_kind
            for node, attrs, _ in self._plans[INVARIANT][0]:
                k = VARYING if ir.is_neuron(node) else max(
                    (kinds[x] for x in node.input if x), default=CONST)
                for o in node.output:
                    kinds[o] = k
                nodes.append((node, attrs, k))
            self._nodes, self._kinds = nodes, kinds
            self._tail = self._readout_tail(self._model.graph)
            self._free_after = self._liveness(self._model.graph)
            self._plans[input_kind] = (self._nodes, self._kinds, self._tail, self._free_after)
        self._nodes, self._kinds, self._tail, self._free_after = self._plans[input_kind]

    def data_steps(self, x_shape: tuple[int, ...]) -> int | None:
        """T of a time-varying batch [B, T, *input], None for a static one (see ir.data_steps)."""
        return ir.data_steps(self._model, tuple(x_shape))

    def mean_input(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """The static input whose analog run is the rate limit of this input over ``timesteps``
        steps: the mean frame, the firing probability under rate coding, or ``x`` itself."""
        if self.data_steps(x.shape) is not None:
            return x[:, :timesteps].mean(1)
        if self.encoding.kind == "rate":
            return x.clamp(0.0, 1.0)
        return x

    def _encoder(self, x: torch.Tensor, timesteps: int) -> StepInput | None:
        """step inputs (start, steps) -> [steps * B, *input] for per-step input; None for analog
        (:func:`snnconvert.runtime.encoding.step_encoder`, the one encoder every target uses)."""
        if self.neuron_hook is not None:  # an ANN pass: the input is taken as it is given
            return None
        data_t = self.data_steps(x.shape)
        if data_t is not None:
            ir.check_steps(timesteps, data_t, "the input")
        step, self._uniforms = step_encoder(self.encoding, x, timesteps, data_t is not None,
                                            self._uniforms)
        return step

    # ---------------------------------------------------------------- values
    def _value(self, name: str, env: dict) -> torch.Tensor | None:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self.substitutes:
            return self.substitutes[name]
        if name in self._step_biases:
            return getattr(self, self._step_biases[name])
        key = param_key(name)
        if key in self.params:
            return self.params[key]
        return self._consts[name]

    def parameter(self, name: str) -> nn.Parameter:
        """The parameter holding initializer ``name``."""
        return self.params[param_key(name)]

    # ------------------------------------------------------------- execution
    def _run_chunk(self, x: torch.Tensor, steps: int, state: dict, cache: dict,
                   tail: bool = False, batch: int | None = None) -> dict:
        """Evaluate the graph for ``steps`` steps; returns the value environment.

        ``tail=False`` skips the readout tail; ``tail=True`` runs only the tail, on the
        time-averaged inputs already in ``cache`` (``steps`` then counts averaged points).
        """
        batch = x.shape[0] if batch is None else batch
        env: dict[str, torch.Tensor] = {self.input_name: x}
        env.update(cache)
        pooled: set[str] = set()  # outputs of pools already computed with their neurons
        for index, (node, attrs, kind) in enumerate(self._nodes):
            if (node.name in self._tail) != tail:
                continue
            out_name = node.output[0]
            if kind != VARYING and out_name in cache or out_name in pooled:
                continue
            args = [self._value(n, env) for n in node.input]
            try:
                if ir.is_neuron(node):
                    pool = self._fused_pool(node, args) if not tail else None
                    y = self._neuron(node, attrs, args, steps, batch, state, pool)
                    if pool is not None:
                        out_name = pool[0].output[0]
                        pooled.add(out_name)
                elif kind == VARYING:
                    y = self._varying_op(node, attrs, args, steps, batch, state, events=not tail)
                else:
                    y = self._entries[node.name].kernel(attrs, *args)
                    if self.value_hook is not None:
                        y = self.value_hook(node, y, 1)
                    cache[out_name] = y
            except SnnConvertError as exc:
                if exc.node is None:  # a kernel's refusal: name the node it came from
                    raise type(exc)(exc.message, node=node.name, op=node.op_type,
                                    hint=exc.hint) from None
                raise
            if kind == VARYING and self.value_hook is not None:
                y = self.value_hook(node, y, steps)
            if kind == VARYING and not tail:
                self._step_elements = max(self._step_elements, y.numel() // (steps * batch))
            env[out_name] = y
            if not tail:
                for name in self._free_after[index]:
                    env.pop(name, None)
        return env

    def _promote(self, node: onnx.NodeProto, args: list, steps: int, batch: int) -> list:
        """Repeat time-invariant activations over the chunk's steps to join varying ones."""
        out = []
        for name, a in zip(node.input, args):
            if a is not None and name and self._kinds.get(name) == INVARIANT:
                a = a.unsqueeze(0).expand(steps, *a.shape).reshape(steps * batch, *a.shape[1:])
            out.append(a)
        return out

    def _varying_op(self, node, attrs, args, steps, batch, state, events=True):
        """A non-neuron op on a chunk; ``events=False`` (the readout tail, which runs on
        time-averaged, dense inputs) never uses the event kernels."""
        args = self._promote(node, args, steps, batch)
        if events and node.name in self._event_nodes and not torch.is_grad_enabled():
            return self.synapses.run(node, attrs, args,
                                     lambda: self._dense_op(node, attrs, args, steps, batch, state))
        return self._dense_op(node, attrs, args, steps, batch, state)

    def _dense_op(self, node, attrs, args, steps, batch, state):
        entry = self._entries[node.name]
        if (self._ort is not None and entry.ort_kernel and not torch.is_grad_enabled()
                and args[0].device.type == "cpu"):
            return self._ort.run(node, args)
        if entry.stateful:
            xs = args[0].reshape(steps, batch, *args[0].shape[1:])
            rest, options = self._step_arguments(node.name, attrs, args[1:])
            y, state[node.name] = entry.step(attrs, xs, state.get(node.name), *rest, **options)
            return y.reshape(steps * batch, *y.shape[2:])
        return entry.kernel(attrs, *args)

    def _step_arguments(self, name: str, attrs: dict, rest: list) -> tuple[list, dict]:
        """A stateful op's step arguments after its input: a delay synapse runs the Gaussian
        kernel of its positions while :attr:`delay_sigma` is set, else its positions rounded
        (its integer delays unless positions were trained)."""
        key = param_key(name)
        if key not in self.delay_positions:
            return rest, {}
        positions = self.delay_positions[key]
        if self.delay_sigma is not None:
            return rest, {"positions": positions, "sigma": self.delay_sigma,
                          "rounded": self.delay_rounded}
        top = float(attrs.get("max_delay", 0))
        rounded = positions.detach().clamp(0.0, top).round().long()
        return [rest[0], rounded, *rest[2:]], {}

    def _fused_pool(self, node, args) -> tuple[onnx.NodeProto, int] | None:
        """The pool that this neuron runs with (event-driven inference on CPU), else None."""
        pair = self._pooled.get(node.name)
        if (pair is None or self.synapses.mode == "dense" or self.neuron_hook is not None
                or ir.step_bias_input(node) is not None
                or self.value_hook is not None
                or torch.is_grad_enabled() or not fused.available() or pair[0].name in self._tail):
            return None
        current = args[0]
        if current.device.type != "cpu" or current.dim() != 4 or current.dtype not in (
                torch.float32, torch.float64) or args[1].dtype != current.dtype:
            return None
        th = args[1]
        if th.dim() == 4 and th.shape[0] != 1:
            return None
        return pair

    def _neuron(self, node, attrs, args, steps, batch, state, pool=None):
        """Run a neuron node over the chunk: its spikes [steps * batch, ...], or with ``pool``
        (a pool and its k, see :meth:`_pool_pairs`) the pooled spikes."""
        current, theta, v0 = args[0], args[1], args[2]
        invariant = self._kinds[node.input[0]] != VARYING
        per_sample = current.shape[1:]
        if not invariant:
            current = current.reshape(steps, batch, *per_sample)
        reset = attrs.get("reset", "subtract")
        fast = not torch.is_grad_enabled()
        leak = self.leaks[param_key(node.name)]
        leak = leak.clamp(0.0, 0.999) if leak.requires_grad and not fast else float(leak)
        prev = state.get(node.name)
        start = prev["t"] if prev else 0
        synaptic, lead = current, 1 if invariant else 2
        step = None
        if len(args) > 3 and args[3] is not None:  # the step bias of steps start+1 .. start+steps
            step = ir.step_bias_at(args[3], start, steps).to(current.dtype)
            step = step.reshape(steps, *[1] * (len(per_sample) + 2 - step.dim()), *step.shape[1:])
            invariant = False

        def with_step_bias(cur: torch.Tensor) -> torch.Tensor:
            """The neuron's input at each step: a synaptic current (shaped as ``synaptic``) plus
            the step bias, if the neuron has one."""
            return cur if step is None else (cur.unsqueeze(0) if lead == 1 else cur) + step

        current = with_step_bias(current)

        def fire(cur: torch.Tensor, v: torch.Tensor | None = None) -> tuple:
            """(spikes, v at the end, (counts, per-step totals) when the kernel counted them)."""
            if v is None:
                v = torch.zeros((batch, *per_sample), dtype=cur.dtype, device=cur.device) + v0
            if fast and self._ort is not None and cur.device.type == "cpu" and fused.available() \
                    and cur.dtype == torch.float32:
                counts = self.spike_counts.get(node.name) if self.record else None
                if self.record and counts is None:
                    counts = torch.zeros((batch, *per_sample), dtype=torch.float32)
                s, v_end, *counted = fused.if_neuron_fused(cur, steps, v, theta, reset, leak,
                                                          stats=self.record, inplace=True,
                                                          counts=counts)
                return s, v_end, counted or None
            if fast:
                return (*nrn.if_neuron_fast(cur, steps, v, theta, reset, leak), None)
            if self._ort is not None and fused_training.supports(cur, v, theta, leak):
                return (*fused_training.if_neuron_trained(cur, steps, v, theta, reset, leak, self.surrogate,
                                                          self.alpha), None)
            return (*nrn.if_neuron(cur, steps, v, theta, reset, leak, self.surrogate, self.alpha), None)

        if pool is not None:
            v = prev["v"] if prev else (torch.zeros((batch, *per_sample), dtype=current.dtype) + v0
                                        ).contiguous()
            counts = self.spike_counts.get(node.name)
            out, v_end, counts, per_step = fused.if_neuron_pool_fused(
                current, steps, v, theta, pool[1], reset, leak, counts)
            state[node.name] = {"t": start + steps, "v": v_end}
            if self.record:
                self._add_record(node.name, counts, per_step)
            return out.reshape(steps * batch, *out.shape[2:])
        counted = None
        if self.neuron_hook is not None:
            spikes = self.neuron_hook(node.name, synaptic, lead, lambda c: fire(with_step_bias(c))[0])
        else:
            spikes, v_end, counted = fire(current, prev["v"] if prev else None)
            state[node.name] = {"t": start + steps, "v": v_end}
        if self.record:
            if counted is not None:
                self._add_record(node.name, counted[0], counted[1])
            else:
                self._record(node.name, spikes)
        return spikes.reshape(steps * batch, *per_sample)

    def _chunk_steps(self, x: torch.Tensor, timesteps: int) -> int:
        """Steps of the next chunk (see ``time_chunk``); "auto" on CPU measures one step first."""
        if self.time_chunk != "auto":
            return self.time_chunk or timesteps
        if x.device.type != "cpu":
            return 16
        if not self._step_elements:
            return 1
        return max(1, min(16, round(CPU_CHUNK_ELEMENTS / (x.shape[0] * self._step_elements))))

    def _record(self, name: str, spikes: torch.Tensor) -> None:
        s = (spikes.detach() > 0)
        self._add_record(name, s.sum(0).to(torch.float32), s.flatten(1).sum(1).to(torch.float64))

    def _add_record(self, name: str, counts: torch.Tensor, per_step: torch.Tensor) -> None:
        """Accumulate per-neuron spike counts [batch, ...] (float32; ``counts`` may already be
        the running total, updated in place by the fused kernel) and per-step totals, kept as
        Python numbers: no tensor survives the chunk that made it, so the heap is not
        fragmented by small long-lived blocks."""
        total = self.spike_counts.get(name)
        if total is None:
            self.spike_counts[name] = counts.to(torch.float32)
        elif total is not counts:
            total += counts
        self._per_step.setdefault(name, []).extend(per_step.tolist())

    def _simulate(self, x: torch.Tensor, timesteps: int, checkpoints: list[int] | None = None
                  ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run ``timesteps`` steps; returns (mean output over T, readout at each checkpoint).

        The readout tail runs once per chunk on the running time-means of its inputs, taken
        at the checkpoints that fall in the chunk and at the chunk's last step.
        """
        batch = x.shape[0]
        encode = self._encoder(x, timesteps)
        self._use_plan(INVARIANT if encode is None else VARYING)
        readout = self.readout if self.neuron_hook is None else ir.Readout()
        theta = self._value(self._out_threshold, {}) if readout.kind == "spikes" else None
        engine = self._compiled_engine(x, encode, readout)
        if engine is not None:
            return self._run_engine(engine, x, timesteps, checkpoints, readout, theta)
        history: dict[str, list[torch.Tensor]] = {}
        state: dict = {}
        cache: dict = {}
        sums: dict[str, torch.Tensor] = {}
        self.spike_counts, self._per_step = {}, {}
        marks: dict[int, torch.Tensor] = {}
        wanted = sorted(set(checkpoints or []))
        final = None
        done = 0
        on_cpu = x.device.type == "cpu"
        if on_cpu:
            self._heap.start()
        while done < timesteps:
            steps = min(self._chunk_steps(x, timesteps), timesteps - done)
            env = self._run_chunk(x if encode is None else encode(done, steps), steps, state, cache,
                                  batch=batch)
            # the readout is needed at the checkpoints in this chunk and at the last step only:
            # other chunks just add to the running sums
            points = [t for t in wanted if done < t <= done + steps]
            if done + steps == timesteps and (not points or points[-1] != timesteps):
                points.append(timesteps)
            means: dict[str, torch.Tensor] = {}
            for name in self._tail_inputs(env):
                value = env[name].reshape(steps, batch, *env[name].shape[1:])
                if readout.kind == "spikes":
                    value = value / theta
                if readout.kind == "last":
                    if not points:
                        continue
                    picked = value[[t - done - 1 for t in points]]
                elif points in ([], [done + steps]) and readout.kind != "window":
                    total = value.sum(0) + sums.get(name, 0)
                    picked = total.unsqueeze(0)
                    sums[name] = total
                else:
                    running = value.cumsum(0) + sums.get(name, 0)
                    sums[name] = running[-1]
                    if readout.kind == "window":
                        history.setdefault(name, []).append(running)
                    if not points:
                        continue
                    picked = running[[t - done - 1 for t in points]]
                    if readout.kind == "window":
                        picked = picked - self._window_start(history[name], points, readout.window)
                if not points:
                    continue
                if readout.kind in ("membrane", "window"):
                    scale = torch.tensor([min(t, readout.window) if readout.kind == "window" else t
                                          for t in points], dtype=value.dtype, device=value.device)
                    picked = picked / scale.view(-1, *([1] * (picked.dim() - 1)))
                means[name] = picked.reshape(len(points) * batch, *picked.shape[2:])
            if not points:
                done += steps
                if on_cpu:
                    self._heap.check()
                continue
            if self._kinds[self.output_name] != VARYING:
                out = env[self.output_name]
                out = out.unsqueeze(0).expand(len(points), *out.shape)
            else:
                tail_env = self._run_chunk(x, len(points), {}, {**cache, **means}, tail=True,
                                           batch=batch) if self._tail else means
                out = tail_env[self.output_name]
                out = out.reshape(len(points), batch, *out.shape[1:])
            for i, t in enumerate(points):
                if t in wanted:
                    marks[t] = out[i]
            final = out[-1]
            done += steps
            if on_cpu:
                self._heap.check()
        return final, marks

    def _compiled_engine(self, x: torch.Tensor, encode, readout: ir.Readout) -> EventEngine | None:
        """The event engine (:mod:`.event_engine`) when this run can use it: CPU inference of
        an analog input in an event-driven mode, no hooks or substitutes, a mean or count
        readout, and a graph the engine supports (compiled on first use)."""
        if (self.synapses.mode == "dense" or not self.use_engine or encode is not None
                or torch.is_grad_enabled()
                or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or self.neuron_hook is not None or self.value_hook is not None or self.substitutes
                or readout.kind not in ("membrane", "spikes")
                or any(p.dtype != x.dtype for p in self.params.values())):
            return None
        if self._engine is False:
            self._engine = EventEngine.compile(self._nodes, self._kinds, self._tail,
                                               lambda n: self._value(n, {}),
                                               self._tail_sources(), CONST, VARYING)
        return self._engine

    @property
    def engine(self) -> EventEngine | None:
        """The compiled event engine, once a run has used it (None: the interpreter runs)."""
        return self._engine or None

    def _run_engine(self, engine: EventEngine, x: torch.Tensor, timesteps: int,
                    checkpoints: list[int] | None, readout: ir.Readout, theta) -> tuple:
        """:meth:`_simulate` through the event engine: the time-invariant prefix here, the
        spiking layers in the engine, the readout tail on the mean of its inputs."""
        batch = x.shape[0]
        wanted = sorted(set(checkpoints or []))
        points = sorted(set(wanted) | {timesteps})
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for node, attrs, kind in self._nodes:
            if kind != VARYING and node.name not in self._tail:
                args = [self._value(n, env) for n in node.input]
                env[node.output[0]] = self._entries[node.name].kernel(attrs, *args)
        key = (x.dtype, tuple(x.shape[1:]),
               tuple((p.data_ptr(), p._version) for p in self.params.values()),
               tuple(float(v) for v in self.leaks.values()))
        counts, totals, sums = engine.run(
            lambda n: self._value(n, {}), lambda n: float(self.leaks[param_key(n)]), env, batch,
            timesteps, points, x.dtype, key, record=self.record)
        self.spike_counts, self._per_step = {}, {}
        if self.record:
            self.spike_counts = counts
            self._per_step = {name: steps.tolist() for name, steps in totals.items()}
        means = {}
        for name, running in sums.items():
            if readout.kind == "spikes":
                running = running / theta
            else:
                scale = torch.tensor(points, dtype=running.dtype)
                running = running / scale.view(-1, *([1] * (running.dim() - 1)))
            means[name] = running.reshape(len(points) * batch, *running.shape[2:])
        if self._tail:
            cache = {k: v for k, v in env.items() if k != self.input_name}
            out = self._run_chunk(x, len(points), {}, {**cache, **means}, tail=True,
                                  batch=batch)[self.output_name]
        else:
            out = means[self.output_name]
        out = out.reshape(len(points), batch, *out.shape[1:])
        return out[-1], {t: out[points.index(t)] for t in wanted}

    @staticmethod
    def _window_start(running: list[torch.Tensor], points: list[int], window: int) -> torch.Tensor:
        """The running sums S_{t-K} (0 for t <= K) at each point t, from the per-chunk running sums."""
        steps = torch.cat(running)
        zero = torch.zeros_like(steps[0])
        return torch.stack([steps[t - window - 1] if t > window else zero for t in points])

    def _tail_sources(self) -> list[str]:
        """Varying tensors made outside the readout tail that it (or the output) reads."""
        if not self._tail:
            return [self.output_name]
        made = {o for node, _, _ in self._nodes if node.name in self._tail for o in node.output}
        return list(dict.fromkeys(i for node, _, _ in self._nodes if node.name in self._tail
                                  for i in node.input if self._kinds.get(i) == VARYING
                                  and i not in made))

    def _tail_inputs(self, env: dict) -> list[str]:
        """Varying tensors that the readout tail (or the output itself) consumes."""
        if not self._tail:
            return [self.output_name] if self._kinds[self.output_name] == VARYING else []
        names = []
        for node, _, _ in self._nodes:
            if node.name in self._tail:
                for i in node.input:
                    if i in env and self._kinds.get(i) == VARYING and i not in names:
                        names.append(i)
        return names

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """Readout after ``timesteps`` steps (the IR's readout of the output), [B, n_out].
        ``x`` is [B, *input], or [B, T, *input] for one input per step."""
        return self._simulate(x, timesteps)[0]

    @torch.no_grad()
    def simulate(self, x: np.ndarray, timesteps: list[int] | int, batch_size: int = 256,
                 progress: bool = False, record: bool = False) -> SimResult:
        """Evaluate on numpy inputs; the readout at every T in ``timesteps`` comes from one run
        of max(T) steps (a T-step run is a prefix of a longer one)."""
        ts = [timesteps] if isinstance(timesteps, int) else sorted(set(timesteps))
        t_max = ts[-1]
        device = next(iter(self.params.values())).device if len(self.params) else torch.device("cpu")
        readouts: dict[int, list[np.ndarray]] = {t: [] for t in ts}
        layer_spikes: dict[int, dict[str, float]] = {t: {} for t in ts}
        sizes: dict[str, int] = {}
        counts: dict[str, torch.Tensor] = {}
        previous = self.record
        self.record = True
        n = len(x)
        bar = tqdm(total=n, desc=f"simulating T={t_max}", unit="img", disable=not progress, leave=False)
        try:
            for start in range(0, n, batch_size):
                xb = torch.as_tensor(np.asarray(x[start:start + batch_size], np.float32), device=device)
                _, marks = self._simulate(xb, t_max, ts)
                for t in ts:
                    readouts[t].append(marks[t].float().cpu().numpy())
                for name, steps in self._per_step.items():
                    cum = np.cumsum(np.asarray(steps, np.float64))
                    sizes[name] = int(np.prod(self.spike_counts[name].shape[1:]))
                    for t in ts:
                        layer_spikes[t][name] = layer_spikes[t].get(name, 0.0) + float(cum[t - 1])
                if record:
                    for name, c in self.spike_counts.items():
                        counts.setdefault(name, []).append(c.cpu())
                bar.update(len(xb))
        finally:
            bar.close()
            self.record = previous
        result = SimResult(readout={t: np.concatenate(readouts[t]) for t in ts})
        for t in ts:
            result.add_rates(t, layer_spikes[t], sizes, n)
        if record:
            self.spike_counts = {k: torch.cat(v) for k, v in counts.items()}
        return result

    # ------------------------------------------------------------ write-back
    def export(self) -> onnx.ModelProto:
        """The IR with the current parameter values written back into its initializers."""
        out = onnx.ModelProto()
        out.CopyFrom(self._model)
        for t in out.graph.initializer:
            key = param_key(t.name)
            if key in self.params:
                value = self.params[key].detach().cpu().numpy()
                t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(t).dtype), t.name))
        for node in out.graph.node:
            key = param_key(node.name)
            if ir.is_delay_dense(node) and key in self.delay_positions:
                top = int(graph_attrs(node).get("max_delay", 0))
                delays = self.delay_positions[key].detach().clamp(0, top).round().cpu().numpy()
                ir.set_initializer(out, node.input[2], delays.astype(np.int64))
            if ir.is_neuron(node) and key in self.leaks:
                leak = float(self.leaks[key].detach().clamp(0.0, 0.999))
                if leak != float(graph_attrs(node).get("leak", 0.0)):
                    set_attr(node, "leak", leak)
        return out
