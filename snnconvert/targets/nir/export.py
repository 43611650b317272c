"""Translate the spiking IR into a NIR graph, folding what NIR cannot state and listing the rest.

NIR's IF has ``v > threshold`` firing, reset to ``v_reset`` and no initial state. Scales are
carried lazily: every NIR edge holds ``true value * pending`` (``pending`` per channel), and
each consumer absorbs it exactly (into weights, into a threshold, or into a ``Scale`` node only
when nothing else can). Spikes leave a NIR neuron as 0/1, so the IR's ``threshold * s`` output
becomes a pending factor ``1/threshold`` folded into the next weights. A neuron fed by a fresh
linear layer gets that layer's rows divided by its threshold, so NIR sees threshold 1.
Time unit: one IR step is ``dt = 1``; a leaky neuron becomes ``LIF(tau=1/leak, r=1/leak)``,
exact under forward Euler with ``dt = 1``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from ... import ir, ops
from ...graph import attrs as graph_attrs
from ...graph import constants, is_constant
from ...errors import TargetError

POOL_MODES = ("sum", "avg")


@dataclass(frozen=True)
class Loss:
    """One thing the NIR graph does not reproduce exactly."""

    node: str
    what: str

    def __str__(self) -> str:
        return f"{self.node}: {self.what}"


@dataclass
class _Src:
    """NIR nodes whose summed outputs equal ``true value * pending``."""

    nodes: list[str]
    pending: np.ndarray
    adjustable: bool = False


@dataclass
class _Builder:
    nodes: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)

    def add(self, name: str, node, inputs: list[str]) -> str:
        key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "node"
        base, i = key, 1
        while key in self.nodes:
            key, i = f"{base}_{i}", i + 1
        self.nodes[key] = node
        self.edges.extend((src, key) for src in inputs)
        return key


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes (batch 1) of every tensor."""
    return {k: (1, *v) for k, v in ops.tensor_shapes(model).items()}


def _channel(vec: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A length-C vector reshaped to broadcast over axis 0 of ``shape``."""
    return np.asarray(vec, np.float64).reshape((-1,) + (1,) * (len(shape) - 1))


def _per_channel(p: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``p`` as a length-C vector over axis 0 of ``shape``, or None if it varies elsewhere."""
    full = np.broadcast_to(np.asarray(p, np.float64), shape)
    flat = full.reshape(shape[0], -1)
    if not np.allclose(flat, flat[:, :1], rtol=1e-6, atol=0):
        return None
    return flat[:, 0].copy()


class _Exporter:
    def __init__(self, model: onnx.ModelProto, pool: str) -> None:
        if pool not in POOL_MODES:
            raise TargetError(f"pool must be one of {POOL_MODES}, got {pool!r}")
        self.model = model
        self.pool = pool
        self.b = _Builder()
        self.shapes = _shapes(model)
        self.consts = constants(model.graph)
        self.src: dict[str, _Src] = {}
        self.uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for out in model.graph.output:
            self.uses[out.name] = self.uses.get(out.name, 0) + 1

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.shapes[name][1:])

    def fail(self, node: onnx.NodeProto, message: str, hint: str | None = None) -> None:
        raise TargetError(message, node=node.name, op=node.op_type, hint=hint)

    def lose(self, node: onnx.NodeProto, what: str) -> None:
        self.b.losses.append(Loss(node.name, what))

    # --- scale bookkeeping -------------------------------------------------------------
    def adjust(self, s: _Src, factor: np.ndarray, shape: tuple[int, ...]) -> bool:
        """Multiply the outputs of the fresh linear nodes in ``s`` by per-channel ``factor``."""
        import nir

        if not s.adjustable:
            return False
        f = np.broadcast_to(np.asarray(factor, np.float64).reshape(-1), (shape[0],))
        for key in s.nodes:
            node = self.b.nodes[key]
            w = node.weight * f.reshape((-1,) + (1,) * (node.weight.ndim - 1))
            node.weight = w.astype(np.float32)
            if not isinstance(node, nir.Linear):
                node.bias = (node.bias * f).astype(np.float32)
        s.pending = s.pending * _channel(f, shape)
        return True

    def rescale(self, s: _Src, target: np.ndarray, shape: tuple[int, ...], name: str) -> _Src:
        """Return a source equal to ``s`` but carrying pending ``target``."""
        import nir

        ratio = np.broadcast_to(np.asarray(target, np.float64) / s.pending, shape)
        if np.allclose(ratio, 1.0, rtol=1e-7):
            return _Src(s.nodes, np.asarray(target), s.adjustable)
        per_c = _per_channel(ratio, shape)
        if per_c is not None and self.adjust(s, per_c, shape):
            return _Src(s.nodes, np.asarray(target), s.adjustable)
        key = self.b.add(name + "_scale", nir.Scale(scale=np.asarray(ratio, np.float32).copy()),
                         s.nodes)
        return _Src([key], np.asarray(target), False)

    def get(self, node: onnx.NodeProto, name: str) -> _Src:
        if name not in self.src:
            self.fail(node, f"input '{name}' is a constant or unknown tensor; NIR edges carry "
                            "only signals", hint="Fold constant branches before exporting.")
        return self.src[name]

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    # --- main loop ---------------------------------------------------------------------
    def run(self):
        import nir

        g = self.model.graph
        inits = set(self.consts)
        for inp in g.input:
            if inp.name in inits:
                continue
            key = self.b.add(inp.name, nir.Input(input_type={"input": np.array(self.shape(inp.name))}),
                             [])
            self.src[inp.name] = _Src([key], np.asarray(1.0))
        for node in g.node:
            if is_constant(node):
                continue
            handler = getattr(self, f"op_{node.op_type}", None)
            if ir.is_neuron(node):
                handler = self.op_neuron
            if handler is None:
                self.fail(node, f"{node.op_type} cannot be expressed as a NIR graph",
                          hint="NIR has Affine/Linear, Conv, Sum/AvgPool, Flatten, Scale and "
                               "neurons; rewrite the layer with those or use the torch target.")
            handler(node)
        for out in g.output:
            s = self.src.get(out.name)
            if s is None:
                raise TargetError(f"graph output '{out.name}' is not computed from the input")
            shape = self.shape(out.name)
            s = self.rescale(s, np.asarray(1.0), shape, out.name)
            self.b.add(f"output_{out.name}", nir.Output(output_type={"output": np.array(shape)}),
                       s.nodes)
        graph = nir.NIRGraph(nodes=self.b.nodes, edges=self.b.edges)
        return graph, self.b.losses

    # --- handlers ----------------------------------------------------------------------
    def _fresh(self, node: onnx.NodeProto, keys: list[str]) -> None:
        out = node.output[0]
        self.src[out] = _Src(keys, np.asarray(1.0), adjustable=self.uses.get(out, 0) == 1)

    def op_ConvTranspose(self, node):
        w = self.const(node.input[1])
        if w is None or w.ndim != 4:
            self.fail(node, "only 2-D transposed convolutions with constant weights map to NIR Conv2d")
        equivalent = ops.lookup(node).as_conv(graph_attrs(node), w)
        if isinstance(equivalent, str):
            self.fail(node, f"{equivalent}; NIR has no transposed convolution",
                      hint="Use stride 1, or the torch target.")
        self.op_Conv(node, *equivalent)

    def op_Conv(self, node, a: dict | None = None, w: np.ndarray | None = None):
        import nir

        a = graph_attrs(node) if a is None else a
        x = self.get(node, node.input[0])
        w = self.const(node.input[1]) if w is None else w
        if w is None or w.ndim != 4:
            self.fail(node, "only 2-D convolutions with constant weights map to NIR Conv2d")
        b = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        b = np.zeros(w.shape[0], np.float32) if b is None else b
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            self.fail(node, f"auto_pad={a['auto_pad']} is not supported",
                      hint="Export the ONNX model with explicit pads.")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            self.fail(node, f"asymmetric padding {pads} cannot be expressed in NIR Conv2d")
        in_shape = self.shape(node.input[0])
        groups = int(a.get("group", 1))
        p = _per_channel(x.pending, in_shape)
        if p is None:
            x = self.rescale(x, np.asarray(1.0), in_shape, node.name + "_in")
            p = np.ones(in_shape[0])
        cin_g, cout_g = w.shape[1], w.shape[0] // groups
        idx = (np.arange(w.shape[0]) // cout_g)[:, None] * cin_g + np.arange(cin_g)[None, :]
        w = (w / p[idx][:, :, None, None]).astype(np.float32)
        conv = nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=w,
                          stride=tuple(a.get("strides", [1, 1])), padding=tuple(pads[:2]),
                          dilation=tuple(a.get("dilations", [1, 1])), groups=groups,
                          bias=np.asarray(b, np.float32))
        self._fresh(node, [self.b.add(node.name or node.output[0], conv, x.nodes)])

    def _affine(self, node, x: _Src, w: np.ndarray, b: np.ndarray | None):
        import nir

        in_shape = self.shape(node.input[0])
        if len(in_shape) != 1:
            self.fail(node, f"a dense layer on a {len(in_shape) + 1}-D tensor is not supported",
                      hint="Flatten its input first.")
        p = np.broadcast_to(np.asarray(x.pending, np.float64).reshape(-1), in_shape)
        w = (w / p[None, :]).astype(np.float32)
        layer = nir.Linear(weight=w) if b is None else nir.Affine(weight=w, bias=b.astype(np.float32))
        self._fresh(node, [self.b.add(node.name or node.output[0], layer, x.nodes)])

    def op_DelayDense(self, node):
        """Per-synapse delays as a chain NIR can state: NIR's Delay delays each element of its
        input by its own amount, so each input channel i is copied once per delay its synapses
        use (a 0/1 Linear), the copies go through one Delay node (the delay of each copy), and
        an Affine holds the weights of every synapse on the copy of its channel and delay. One
        IR step is dt = 1."""
        import nir

        x = self.get(node, node.input[0])
        in_shape = self.shape(node.input[0])
        if len(in_shape) != 1:
            self.fail(node, "a delay synapse on a multi-axis tensor is not supported",
                      hint="Flatten its input first.")
        w, d, b = (self.const(n) for n in node.input[1:4])
        p = np.broadcast_to(np.asarray(x.pending, np.float64), in_shape).reshape(-1)
        w = np.asarray(w, np.float64) / p[None, :]
        copies = [(i, int(k)) for i in range(w.shape[1]) for k in np.unique(d[:, i])]
        fan = np.zeros((len(copies), w.shape[1]), np.float32)
        weight = np.zeros((w.shape[0], len(copies)), np.float32)
        for c, (i, k) in enumerate(copies):
            fan[c, i] = 1.0
            weight[:, c] = np.where(d[:, i] == k, w[:, i], 0.0)
        name = node.name or node.output[0]
        fan_key = self.b.add(f"{name}_fanout", nir.Linear(weight=fan), x.nodes)
        delay = nir.Delay(delay=np.array([float(k) for _, k in copies], np.float32))
        delay_key = self.b.add(f"{name}_delay", delay, [fan_key])
        layer = nir.Affine(weight=weight, bias=np.asarray(b, np.float32).reshape(-1))
        self._fresh(node, [self.b.add(name, layer, [delay_key])])

    def op_Gemm(self, node):
        a = graph_attrs(node)
        if a.get("transA", 0):
            self.fail(node, "Gemm with transA=1 is not supported")
        w = self.const(node.input[1])
        if w is None:
            self.fail(node, "Gemm needs constant weights")
        w = float(a.get("alpha", 1.0)) * (w if a.get("transB", 0) else w.T)
        c = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        b = None if c is None else np.broadcast_to(float(a.get("beta", 1.0)) * c, (w.shape[0],))
        self._affine(node, self.get(node, node.input[0]), w, b)

    def op_MatMul(self, node):
        w = self.const(node.input[1])
        if w is None or w.ndim != 2:
            self.fail(node, "MatMul needs a constant 2-D right operand")
        self._affine(node, self.get(node, node.input[0]), w.T, None)

    def op_Add(self, node):
        import nir

        consts = [self.const(n) for n in node.input]
        shape = self.shape(node.output[0])
        if consts[0] is not None or consts[1] is not None:
            i = 0 if consts[1] is not None else 1
            s, c = self.get(node, node.input[i]), consts[1 - i]
            keys = s.nodes
            if len(keys) != 1 or not s.adjustable or not isinstance(
                    self.b.nodes[keys[0]], (nir.Linear, nir.Affine, nir.Conv2d)):
                self.fail(node, "adding a constant is only expressible as the bias of the "
                                "preceding dense/conv layer")
            layer = self.b.nodes[keys[0]]
            bias = np.broadcast_to(c, shape).reshape(shape[0], -1)[:, 0] * \
                np.broadcast_to(np.asarray(s.pending, np.float64).reshape(-1), (shape[0],))
            if isinstance(layer, nir.Linear):
                self.b.nodes[keys[0]] = nir.Affine(weight=layer.weight,
                                                   bias=bias.astype(np.float32))
            else:
                layer.bias = (layer.bias + bias).astype(np.float32)
            self.src[node.output[0]] = _Src(keys, s.pending, self.uses.get(node.output[0], 0) == 1)
            return
        a, b = (self.get(node, n) for n in node.input)
        if self.shape(node.input[0]) != self.shape(node.input[1]):
            self.fail(node, "broadcasting Add cannot be expressed as NIR fan-in")
        if a.adjustable and not b.adjustable:
            a, b = b, a
        b = self.rescale(b, a.pending, shape, node.name or node.output[0])
        self.src[node.output[0]] = _Src(a.nodes + b.nodes, a.pending,
                                        a.adjustable and b.adjustable
                                        and self.uses.get(node.output[0], 0) == 1)

    def op_neuron(self, node):
        import nir

        n = next(v for v in ir.neurons(self.model) if v.name == node.name)
        x = self.get(node, node.input[0])
        shape = self.shape(node.input[0])
        theta = np.broadcast_to(n.threshold.astype(np.float64), shape)
        if np.any(theta <= 0):
            self.fail(node, "thresholds must be positive to map to NIR")
        th_c = _per_channel(theta, shape)
        p_c = _per_channel(x.pending, shape)
        if th_c is not None and p_c is not None and x.adjustable:
            self.adjust(x, 1.0 / (th_c * p_c), shape)
        thr = np.broadcast_to(theta * x.pending, shape).astype(np.float32)
        # IR fires on v >= theta, NIR on v > theta: the next float32 below is the same test.
        thr = np.nextafter(thr, np.float32(-np.inf), dtype=np.float32)
        if n.reset == "subtract":
            self.lose(node, "reset by subtraction becomes reset to zero (NIR IF/LIF reset to "
                            "v_reset)")
        if np.any(n.v_init != 0):
            self.lose(node, "initial potential v_init (theta/2 by default) dropped: NIR "
                            "neurons start at 0")
        ones = np.ones(shape, np.float32)
        if n.leak > 0:
            tau = np.float32(1.0 / n.leak) * ones
            r = tau.copy()
            # r = τ makes the input unscaled, as in the IR; fold it into the fresh weights when
            # possible (r = 1), since importers such as Norse ignore r (the membrane keeps the
            # units the threshold was set in: the factor is applied after it)
            if x.adjustable and self.adjust(x, np.float64(tau.reshape(-1)[0]), shape):
                r = ones.copy()
            neuron = nir.LIF(tau=tau, r=r, v_leak=0 * ones, v_threshold=thr, v_reset=0 * ones)
        else:
            neuron = nir.IF(r=ones, v_threshold=thr, v_reset=0 * ones)
        key = self.b.add(node.name, neuron, x.nodes)
        pending = 1.0 / theta
        pc = _per_channel(pending, shape)
        if pc is not None:
            pending = _channel(pc, shape)
        self.src[node.output[0]] = _Src([key], pending)

    def _pool(self, node, kernel, strides, pads, divisor_exact: bool):
        import nir

        x = self.get(node, node.input[0])
        shape = self.shape(node.input[0])
        if pads[:2] != pads[2:]:
            self.fail(node, f"asymmetric pool padding {pads} cannot be expressed in NIR")
        if not divisor_exact:
            self.lose(node, "padded average pool without count_include_pad: border outputs "
                            "are divided by the full kernel size in NIR")
        args = dict(kernel_size=np.array(kernel), stride=np.array(strides),
                    padding=np.array(pads[:2]))
        if self.pool == "sum":
            layer = nir.SumPool2d(**args)
            pending = x.pending * float(np.prod(kernel))
        else:
            layer = nir.AvgPool2d(**args)
            pending = x.pending
        p = _per_channel(pending, shape)
        if p is None:
            x = self.rescale(x, np.asarray(1.0), shape, node.name + "_in")
            pending = np.asarray(float(np.prod(kernel)) if self.pool == "sum" else 1.0)
        key = self.b.add(node.name or node.output[0], layer, x.nodes)
        self.src[node.output[0]] = _Src([key], np.asarray(pending))

    def op_AveragePool(self, node):
        a = graph_attrs(node)
        k = list(a["kernel_shape"])
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if a.get("ceil_mode", 0):
            self.fail(node, "ceil_mode pooling is not supported")
        exact = not any(pads) or bool(a.get("count_include_pad", 0))
        self._pool(node, k, list(a.get("strides", k)), pads, exact)

    def op_GlobalAveragePool(self, node):
        k = list(self.shape(node.input[0])[1:])
        self._pool(node, k, k, [0, 0, 0, 0], True)

    def op_MaxPool(self, node):
        a = graph_attrs(node)
        k = list(a["kernel_shape"])
        self.lose(node, "MaxPool has no NIR node; approximated by average pooling")
        self._pool(node, k, list(a.get("strides", k)), list(a.get("pads", [0, 0, 0, 0])), True)

    op_SpikingMaxPool = op_MaxPool

    def _flatten(self, node):
        import nir

        x = self.get(node, node.input[0])
        shape = self.shape(node.input[0])
        out_shape = self.shape(node.output[0])
        if len(out_shape) != 1 or int(np.prod(shape)) != out_shape[0]:
            self.fail(node, f"only flattening to [N, {int(np.prod(shape))}] is supported")
        pending = np.broadcast_to(np.asarray(x.pending), shape).reshape(-1).copy()
        if np.allclose(pending, pending[0], rtol=1e-7):
            pending = np.asarray(pending[0])
        if len(shape) == 1:
            self.src[node.output[0]] = _Src(x.nodes, pending, x.adjustable)
            return
        # NIR types have no batch axis, so dims count from the channel axis (nir.read checks it).
        layer = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
        key = self.b.add(node.name or node.output[0], layer, x.nodes)
        self.src[node.output[0]] = _Src([key], pending)

    def op_Flatten(self, node):
        if int(graph_attrs(node).get("axis", 1)) != 1:
            self.fail(node, "Flatten must keep the batch axis (axis=1)")
        self._flatten(node)

    def op_Reshape(self, node):
        self._flatten(node)

    def _passthrough(self, node):
        self.src[node.output[0]] = self.get(node, node.input[0])

    op_Identity = op_Dropout = _passthrough

    def _mul(self, node, invert: bool):
        consts = [self.const(n) for n in node.input[:2]]
        i = 0 if consts[1] is not None else 1
        c = consts[1 - i]
        if c is None or (invert and i == 1):
            self.fail(node, f"{node.op_type} of two signals cannot be expressed in NIR")
        c = np.asarray(c, np.float64)
        if np.any(c == 0):
            self.fail(node, "multiplying by zero cannot be folded")
        s = self.get(node, node.input[i])
        shape = self.shape(node.output[0])
        c = c.reshape(c.shape[-len(shape):] if c.ndim > len(shape) else c.shape)
        pending = s.pending * c if invert else s.pending / c
        self.src[node.output[0]] = _Src(s.nodes, pending, False)

    def op_Mul(self, node):
        self._mul(node, invert=False)

    def op_Div(self, node):
        self._mul(node, invert=True)


def to_nir(model: onnx.ModelProto, pool: str = "sum"):
    """Return ``(nir.NIRGraph, losses)`` for the IR ``model``; raises TargetError when an op
    cannot be expressed at all. ``pool``: "sum" (SumPool2d, read by Norse/Sinabs) or "avg"."""
    return _Exporter(model, pool).run()
