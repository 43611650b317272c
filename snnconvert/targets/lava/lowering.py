"""Lower the spiking IR to a layer graph: neuron populations joined by chains of linear ops.

Every neuron input (and the graph output) is decomposed into
``sum_k chain_k(spikes of population k) + input_prefix(x) + constant``. Chains hold canonical
ops (``conv`` in ONNX layout, ``dense``, ``flatten``); each ``conv``/``dense`` op becomes one
Lava synapse process (one step of delay), ``flatten`` is a port reshape. A ``transpose`` (e.g.
NCHW -> NHWC before a Keras flatten) becomes a ``gather`` after the flatten and is folded into
the next dense layer's columns; on the host-side input prefix it is applied as is. Spikes are binary:
the source threshold is folded into the first weighted op. The time-invariant prefix (terms
fed by the graph input) is evaluated on the host and injected as a per-sample bias.
Branches of unequal latency get relay populations (identity IF) so that every population
has one depth and pipelined resets reproduce zero-delay semantics exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ... import ir
from ...errors import TargetError
from ...ops import GraphView, lookup
from ...graph import attrs, constants, is_constant

from .support import TRANSPOSED_HINT, supports

INPUT = "<input>"
OUTPUT = "<output>"


@dataclass
class Op:
    """One linear, bias-free op on a single sample (NCHW without batch, or flat)."""

    kind: str                       # "conv" | "dense" | "delay" | "flatten" | "transpose" | "gather"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray | None = None   # conv: (Cout, Cin/g, kH, kW); dense: (Fout, Fin)
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)      # symmetric (H, W)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    perm: tuple[int, ...] | None = None   # transpose: per-sample axis order
    index: np.ndarray | None = None       # gather: out[i] = in[index[i]] (flat)
    delays: np.ndarray | None = None      # delay: integer delay per weight (Fout, Fin)
    max_delay: int = 0                    # delay: D, the longest delay it holds

    @property
    def is_process(self) -> bool:
        return self.kind in ("conv", "dense", "delay")

    @property
    def is_pointwise(self) -> bool:
        return (self.kind == "conv" and self.weight.shape[2:] == (1, 1) and self.stride == (1, 1)
                and self.pad == (0, 0))


@dataclass
class Term:
    source: str           # population name
    ops: list[Op]


@dataclass
class Population:
    """A neuron layer (or the read-out when ``name == OUTPUT``)."""

    name: str
    shape: tuple[int, ...]
    threshold: np.ndarray           # full shape
    v_init: np.ndarray              # full shape
    reset: str = "subtract"
    leak: float = 0.0
    bias: np.ndarray | None = None  # constant current, full shape
    step_bias: np.ndarray | None = None  # the neuron's step bias [S, *full shape] (see ir)
    terms: list[Term] = field(default_factory=list)
    input_ops: list[list[Op]] = field(default_factory=list)  # host-side analog prefix chains
    depth: int = 0
    spike_value: np.ndarray | None = None   # value of one spike (full shape): the threshold
    relay_of: str | None = None

    @property
    def is_output(self) -> bool:
        return self.name == OUTPUT

    def step_rows(self, timesteps: int) -> np.ndarray | None:
        """The step bias of steps 1..T, [T, *shape] (None without one)."""
        return None if self.step_bias is None else ir.step_bias_at(self.step_bias, 0, timesteps)


@dataclass
class LayerGraph:
    input_name: str
    input_shape: tuple[int, ...]
    populations: dict[str, Population]      # topological order, OUTPUT last
    output_name: str

    @property
    def neurons(self) -> list[Population]:
        return [p for p in self.populations.values() if not p.is_output]

    @property
    def output(self) -> Population:
        return self.populations[OUTPUT]

    @property
    def depth(self) -> int:
        return max(p.depth for p in self.populations.values())

    @property
    def delay_steps(self) -> int:
        """Steps a sample's spikes can still be in flight in delay synapses after its window:
        the longest delays of every delay synapse, added up (bounds any path through them)."""
        return sum(o.max_delay for p in self.populations.values() for t in p.terms for o in t.ops
                   if o.kind == "delay")


# ---------------------------------------------------------------- op arithmetic (torch, f64)

def apply_op(op: Op, x: torch.Tensor) -> torch.Tensor:
    """Apply ``op`` to a batch ``x`` [N, *op.in_shape] (float64)."""
    if op.kind == "flatten":
        return x.reshape(x.shape[0], -1)
    if op.kind == "transpose":
        return x.permute(0, *(a + 1 for a in op.perm))
    if op.kind == "gather":
        return x[:, torch.as_tensor(op.index)]
    w = torch.as_tensor(op.weight, dtype=x.dtype)
    if op.kind in ("dense", "delay"):  # a delay synapse's time-invariant part: its rate limit
        return x @ w.T
    return F.conv2d(x, w, stride=op.stride, padding=op.pad, dilation=op.dilation, groups=op.groups)


def apply_chain(ops: list[Op], x: torch.Tensor) -> torch.Tensor:
    for op in ops:
        x = apply_op(op, x)
    return x


def delay_in_time(op: Op, x: torch.Tensor) -> torch.Tensor:
    """A delay synapse over a whole sequence ``x`` [N, T, in]: y_t = sum_i w[j, i] x_{t - d[j, i]}
    (0 before the first step), as one causal convolution over time."""
    w = torch.as_tensor(op.weight, dtype=x.dtype)
    taps = F.one_hot(torch.as_tensor(np.array(op.delays)), op.max_delay + 1).to(x.dtype)
    kernel = (taps * w.unsqueeze(-1)).flip(-1)          # tap k carries delay D - k
    seq = F.pad(x.transpose(1, 2), (op.max_delay, 0))   # [N, in, D + T]
    return F.conv1d(seq, kernel).transpose(1, 2)


def apply_chain_in_time(ops: list[Op], x: torch.Tensor) -> torch.Tensor:
    """``ops`` on one input per step, ``x`` [N, T, *in]: delay synapses across time, every other
    op on each step."""
    n, steps = x.shape[:2]
    for op in ops:
        if op.kind == "delay":
            x = delay_in_time(op, x)
        else:
            y = apply_op(op, x.reshape(n * steps, *x.shape[2:]))
            x = y.reshape(n, steps, *y.shape[1:])
    return x


def _full_conv_weight(op: Op) -> np.ndarray:
    """Expand a grouped conv weight to groups=1 form."""
    if op.groups == 1:
        return op.weight
    cout, cg = op.weight.shape[:2]
    og = cout // op.groups
    full = np.zeros((cout, cg * op.groups) + op.weight.shape[2:])
    for g in range(op.groups):
        full[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = op.weight[g * og:(g + 1) * og]
    return full


def _fold(a: Op, b: Op) -> Op | None:
    """Compose b∘a into one op when exact and cheap, else None."""
    if a.kind == "gather" and b.kind == "dense":
        w = np.empty_like(b.weight)
        w[:, a.index] = b.weight  # input feature index[i] meets the weights of gathered feature i
        return Op("dense", a.in_shape, b.out_shape, w)
    if a.kind == "dense" and b.kind == "dense":
        return Op("dense", a.in_shape, b.out_shape, b.weight @ a.weight)
    if _is_placement(a) and b.kind == "conv" and not b.is_pointwise:
        # a (scaled) channel placement, i.e. a Concat, in front of a conv: split the conv's weights
        am = a.weight[:, :, 0, 0]
        w = np.einsum("ocij,ck->okij", _full_conv_weight(b), am)
        return Op("conv", a.in_shape, b.out_shape, w, b.stride, b.pad, b.dilation, 1)
    if a.kind == "conv" and b.is_pointwise:
        if b.groups == b.weight.shape[0] == a.out_shape[0] and b.weight.shape[1] == 1:
            w = a.weight * b.weight.reshape(-1, 1, 1, 1)
            return Op("conv", a.in_shape, b.out_shape, w, a.stride, a.pad, a.dilation, a.groups)
        bm = _full_conv_weight(b)[:, :, 0, 0]
        w = np.einsum("oc,cikl->oikl", bm, _full_conv_weight(a))
        return Op("conv", a.in_shape, b.out_shape, w, a.stride, a.pad, a.dilation, 1)
    return None


def _is_placement(op: Op) -> bool:
    """A 1x1 conv sending each input channel to at most one output channel (with a scale)."""
    if not op.is_pointwise or op.groups != 1:
        return False
    return bool(np.all(np.count_nonzero(op.weight[:, :, 0, 0], axis=0) <= 1))


def _transpose_then_flatten(ops: list[Op]) -> list[Op]:
    """Rewrite transpose -> flatten as flatten -> gather (a permutation of the flat features)."""
    out: list[Op] = []
    for op in ops:
        if op.kind == "flatten" and out and out[-1].kind == "transpose":
            t = out.pop()
            idx = np.arange(int(np.prod(t.in_shape))).reshape(t.in_shape).transpose(t.perm).reshape(-1)
            n = idx.size
            out += [Op("flatten", t.in_shape, (n,)), Op("gather", (n,), (n,), index=idx)]
        else:
            out.append(op)
    return out


def simplify(ops: list[Op]) -> list[Op]:
    out: list[Op] = []
    for op in _transpose_then_flatten(ops):
        merged = _fold(out[-1], op) if out else None
        if merged is not None:
            out[-1] = merged
        else:
            out.append(op)
    return out


def identity_op(shape: tuple[int, ...]) -> Op:
    """A depthwise 1x1 conv with weight 1 (flat shapes use the (F,1,1) view)."""
    c = shape[0]
    if len(shape) == 1:
        return Op("dense", shape, shape, np.eye(c))
    return Op("conv", shape, shape, np.ones((c, 1, 1, 1)), groups=c)


def scale_into(ops: list[Op], scale: np.ndarray) -> list[Op]:
    """Fold an elementwise input scale (full shape of the chain's input) into the chain."""
    ops = [Op(**vars(o)) for o in ops]
    for i, op in enumerate(ops):
        if op.kind == "flatten":
            scale = scale.reshape(-1)
            continue
        if op.kind == "transpose":
            scale = scale.transpose(op.perm)
            continue
        if op.kind == "gather":
            scale = scale[op.index]
            continue
        if op.kind in ("dense", "delay"):
            op.weight = op.weight * scale.reshape(1, -1)
            return ops
        per_c = scale.reshape(scale.shape[0], -1)
        if not np.all(per_c == per_c[:, :1]):
            raise TargetError("a spatially varying threshold cannot be folded into a convolution",
                              hint="Use scalar or per-channel thresholds for the lava target.")
        s = per_c[:, 0]
        cg = op.weight.shape[1]
        og = op.weight.shape[0] // op.groups
        w = op.weight.copy()
        for g in range(op.groups):
            w[g * og:(g + 1) * og] *= s[g * cg:(g + 1) * cg].reshape(1, cg, 1, 1)
        op.weight = w
        return ops
    raise TargetError("empty synapse chain")


# ---------------------------------------------------------------- ONNX -> expressions

@dataclass
class _Expr:
    """sum of terms (source, ops) + constant (full per-sample array)."""

    terms: list[tuple[str, list[Op]]]
    const: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.const.shape)


def _apply_expr(e: _Expr, op: Op, const_extra: np.ndarray | None = None) -> _Expr:
    c = apply_op(op, torch.as_tensor(e.const[None], dtype=torch.float64))[0].numpy()
    if const_extra is not None:
        c = c + const_extra
    return _Expr([(s, ops + [op]) for s, ops in e.terms], c)


def _conv_op(node, attrs, in_shape, w) -> Op:
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise TargetError("auto_pad is not supported", node=node.name, op=node.op_type,
                          hint="Export with explicit pads.")
    if w.ndim != 4 or len(in_shape) != 3:
        raise TargetError("only 2-D convolutions map to Lava", node=node.name, op=node.op_type)
    if pads[:2] != pads[2:]:
        raise TargetError(f"asymmetric padding {pads} is not expressible in Lava Conv",
                          node=node.name, op=node.op_type,
                          hint="Use symmetric padding (e.g. padding=k//2 with stride 1).")
    stride = tuple(attrs.get("strides", [1, 1]))
    dil = tuple(attrs.get("dilations", [1, 1]))
    groups = int(attrs.get("group", 1))
    out = F.conv2d(torch.zeros((1,) + in_shape, dtype=torch.float64),
                   torch.as_tensor(w, dtype=torch.float64), stride=stride, padding=tuple(pads[:2]),
                   dilation=dil, groups=groups).shape[1:]
    return Op("conv", in_shape, tuple(out), w.astype(np.float64), stride, tuple(pads[:2]), dil, groups)


def _pool_op(node, attrs, in_shape, whole_plane: bool) -> Op:
    if len(in_shape) != 3:
        raise TargetError(f"only 2-D pooling maps to Lava (per-sample shape {in_shape})",
                          node=node.name, op=node.op_type)
    c, h, w = in_shape
    if whole_plane:
        k, s, pads = [h, w], [1, 1], [0, 0, 0, 0]
    else:
        if attrs.get("ceil_mode", 0):
            raise TargetError("ceil_mode pooling is not supported", node=node.name, op=node.op_type)
        k = list(attrs["kernel_shape"])
        s = list(attrs.get("strides", [1, 1]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if any(pads) and not attrs.get("count_include_pad", 0):
            raise TargetError("average pooling with padding excluded from the count has a "
                              "position-dependent divisor", node=node.name, op=node.op_type,
                              hint="Use count_include_pad=1 or no padding.")
        if pads[:2] != pads[2:]:
            raise TargetError(f"asymmetric padding {pads}", node=node.name, op=node.op_type)
    weight = np.full((c, 1, k[0], k[1]), 1.0 / (k[0] * k[1]))
    return _conv_op(node, {"strides": s, "pads": pads, "group": c}, in_shape, weight)


def _slice_op(node, e: _Expr, inits) -> Op:
    starts, ends = inits[node.input[1]], inits[node.input[2]]
    axes = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
    steps = inits[node.input[4]] if len(node.input) > 4 and node.input[4] else np.ones(len(starts), int)
    shape = e.shape
    probe = torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape((1,) + shape)
    idx = [slice(None)] * (len(shape) + 1)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) % (len(shape) + 1)
        if ax == 0 or int(sp) <= 0:
            raise TargetError("only forward slices of non-batch axes map to Lava",
                              node=node.name, op=node.op_type)
        idx[ax] = slice(int(st), int(min(en, 2 ** 62)), int(sp))
    picked = probe[tuple(idx)][0]
    return _selection_op(node, shape, picked)


def _pad_op(node, e: _Expr, inits, attrs) -> Op:
    if attrs.get("mode", "constant") != "constant":
        raise TargetError("only constant (zero) padding maps to Lava", node=node.name, op=node.op_type)
    pads = inits[node.input[1]] if len(node.input) > 1 else np.asarray(attrs["pads"])
    value = float(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0.0
    if value != 0.0:
        raise TargetError("padding with a non-zero value", node=node.name, op=node.op_type)
    nd = len(pads) // 2
    if pads[0] or pads[nd]:
        raise TargetError("padding the batch axis", node=node.name, op=node.op_type)
    shape = e.shape
    probe = torch.arange(1, int(np.prod(shape)) + 1, dtype=torch.float64).reshape((1,) + shape)
    fpad = []
    for ax in reversed(range(1, nd)):
        fpad += [int(pads[ax]), int(pads[ax + nd])]
    picked = F.pad(probe, fpad)[0] - 1.0  # -1 marks padded positions
    return _selection_op(node, shape, picked)


def _selection_op(node, in_shape, picked: torch.Tensor) -> Op:
    """A 0/1 gather (slice/pad) as a strided 1x1 conv when possible."""
    p = picked.numpy()
    if len(in_shape) != 3 or p.ndim != 3:
        raise TargetError("slice/pad of a non-image tensor", node=node.name, op=node.op_type)
    c, h, w = in_shape
    grid = np.arange(c * h * w).reshape(c, h, w)
    co, ho, wo = p.shape
    for stride in [(sh, sw) for sh in range(1, h + 1) for sw in range(1, w + 1)]:
        sh, sw = stride
        hh, ww = (h - 1) // sh + 1, (w - 1) // sw + 1
        pad_h, pad_w = (ho - hh), (wo - ww)
        if pad_h % 2 or pad_w % 2 or pad_h < 0 or pad_w < 0:
            continue
        ph, pw = pad_h // 2, pad_w // 2
        if ph and sh != 1 or pw and sw != 1:
            continue
        weight = np.zeros((co, c, 1, 1))
        ok = True
        for o in range(co):
            vals = p[o, ph:ph + hh, pw:pw + ww]
            if np.all(vals < 0):
                continue
            ci = int(vals.flat[0]) // (h * w)
            if not np.array_equal(vals, grid[ci, ::sh, ::sw]):
                ok = False
                break
            border = p[o].copy()
            border[ph:ph + hh, pw:pw + ww] = -1
            if np.any(border >= 0):
                ok = False
                break
            weight[o, ci] = 1.0
        if ok:
            return Op("conv", in_shape, (co, ho, wo), weight, (sh, sw), (ph, pw))
    raise TargetError("this slice/pad pattern is not a strided selection Lava can express",
                      node=node.name, op=node.op_type,
                      hint="Lava maps step slices of H/W and channel zero-padding (ResNet option A).")


def lower(model: onnx.ModelProto) -> LayerGraph:
    """Build the :class:`LayerGraph` of the IR ``model`` (raises TargetError if unmappable)."""
    graph = model.graph
    inits = constants(graph)
    real_inputs = [i for i in graph.input if i.name not in inits]
    if len(real_inputs) != 1 or len(graph.output) != 1:
        raise TargetError("the lava target needs exactly one graph input and one output")
    inp = real_inputs[0]
    in_shape = tuple(int(d.dim_value) for d in inp.type.tensor_type.shape.dim[1:])
    if any(d <= 0 for d in in_shape):
        raise TargetError(f"input '{inp.name}' needs static non-batch dimensions, got {in_shape}")
    env: dict[str, _Expr] = {inp.name: _Expr([(INPUT, [])], np.zeros(in_shape))}
    pops: dict[str, Population] = {}

    def get(name: str) -> _Expr:
        if name in env:
            return env[name]
        if name in inits:
            raise TargetError(f"constant tensor '{name}' used as an activation")
        raise TargetError(f"tensor '{name}' is not produced by a mapped node")

    for node in graph.node:
        if is_constant(node):
            continue
        a = attrs(node)
        op = node.op_type
        if ir.is_neuron(node):
            e = get(node.input[0])
            name = node.name
            thr = np.broadcast_to(inits[node.input[1]].astype(np.float64), e.shape).copy()
            v0 = np.broadcast_to(inits[node.input[2]].astype(np.float64), e.shape).copy()
            pops[name] = _population(name, e, thr, v0, a)
            sb_name = ir.step_bias_input(node)
            if sb_name:
                sb = inits[sb_name].astype(np.float64)
                pops[name].step_bias = np.stack([np.broadcast_to(row, e.shape) for row in sb])
            env[node.output[0]] = _Expr([(name, [])], np.zeros(e.shape))
            continue
        env[node.output[0]] = _map_node(node, op, a, get, inits)
    out_name = graph.output[0].name
    e = get(out_name)
    if len(e.shape) != 1:
        raise TargetError(f"the output must be [N, classes], got per-sample shape {e.shape}")
    pops[OUTPUT] = _population(OUTPUT, e, np.full(e.shape, np.inf), np.zeros(e.shape), {})
    lg = LayerGraph(inp.name, in_shape, pops, out_name)
    _assign_depths(lg)
    return lg


def _population(name, e: _Expr, thr, v0, attrs) -> Population:
    terms, inputs = [], []
    for src, ops in e.terms:
        if src == INPUT:
            inputs.append(ops)
        else:
            terms.append(Term(src, ops))
    reset = attrs.get("reset", "subtract")
    return Population(name, e.shape, thr, v0, reset, float(attrs.get("leak", 0.0)),
                      bias=e.const.copy(), terms=terms, input_ops=inputs, spike_value=thr)


def _map_node(node, op, a, get, inits) -> _Expr:
    """Dispatch to ``_lower_<op type>``; the ops this target holds are declared in support.py."""
    handler = globals().get(f"_lower_{op}")
    if handler is None or node.domain not in ("", "ai.onnx", ir.DOMAIN):
        verdict = supports(node, GraphView(onnx.ModelProto()))
        reason, _, hint = verdict.detail.partition(" Hint: ")
        raise TargetError(reason.rstrip("."), node=node.name, op=op,
                          hint=hint[:1].upper() + hint[1:] if hint else None)
    return handler(node, a, get, inits)


def _passthrough(node, a, get, inits) -> _Expr:
    return get(node.input[0])


_lower_Identity = _lower_Dropout = _passthrough


def _sum(node, get, inits, negate_second: bool) -> _Expr:
    parts = []
    for i, name in enumerate(node.input[:2]):
        sign = -1.0 if (negate_second and i == 1) else 1.0
        if name in inits:
            parts.append(("const", sign * inits[name].astype(np.float64)))
        else:
            parts.append(("expr", sign, get(name)))
    exprs = [p for p in parts if p[0] == "expr"]
    consts = [p[1] for p in parts if p[0] == "const"]
    shape = exprs[0][2].shape
    terms, const = [], np.zeros(shape)
    for _, sign, ex in exprs:
        if ex.shape != shape:
            raise TargetError(f"Add of shapes {ex.shape} and {shape} (broadcasting)",
                              node=node.name, op=node.op_type)
        if sign < 0:
            raise TargetError("subtracting an activation", node=node.name, op=node.op_type)
        terms += ex.terms
        const = const + ex.const
    for c in consts:
        const = const + np.broadcast_to(c.reshape(c.shape[1:] if c.ndim > len(shape) else c.shape), shape)
    return _Expr(terms, const)


def _lower_Add(node, a, get, inits) -> _Expr:
    return _sum(node, get, inits, negate_second=False)


def _lower_Sub(node, a, get, inits) -> _Expr:
    return _sum(node, get, inits, negate_second=True)


def _multiply(node, get, inits, invert: bool) -> _Expr:
    e = get(node.input[0])
    if node.input[1] not in inits:
        raise TargetError("multiplying two activations", node=node.name, op=node.op_type)
    c = inits[node.input[1]].astype(np.float64)
    c = 1.0 / c if invert else c
    c = c.reshape(c.shape[1:]) if c.ndim > len(e.shape) else c
    return _scale(node, e, np.broadcast_to(c, e.shape), np.zeros(e.shape))


def _lower_Mul(node, a, get, inits) -> _Expr:
    return _multiply(node, get, inits, invert=False)


def _lower_Div(node, a, get, inits) -> _Expr:
    return _multiply(node, get, inits, invert=True)


def _lower_BatchNormalization(node, a, get, inits) -> _Expr:
    e = get(node.input[0])
    sc, b, mu, var = (inits[n].astype(np.float64) for n in node.input[1:5])
    k = sc / np.sqrt(var + a.get("epsilon", 1e-5))
    bshape = (-1,) + (1,) * (len(e.shape) - 1)
    return _scale(node, e, np.broadcast_to(k.reshape(bshape), e.shape),
                  np.broadcast_to((b - mu * k).reshape(bshape), e.shape))


def _convolution(node, a, get, inits, transposed: bool) -> _Expr:
    e = get(node.input[0])
    if node.input[1] not in inits:
        raise TargetError("a convolution needs constant weights", node=node.name, op=node.op_type)
    w = inits[node.input[1]].astype(np.float64)
    if transposed:  # stride 1: an ordinary convolution (the registry entry's as_conv)
        equivalent = lookup(node).as_conv(a, w)
        if isinstance(equivalent, str):
            raise TargetError(f"{equivalent}; Lava's Conv cannot upsample", node=node.name,
                              op=node.op_type, hint=TRANSPOSED_HINT[:1].upper() + TRANSPOSED_HINT[1:])
        a, w = equivalent
    o = _conv_op(node, a, e.shape, w)
    bias = np.zeros(o.out_shape)
    if len(node.input) > 2 and node.input[2]:
        bias = bias + inits[node.input[2]].astype(np.float64).reshape(-1, 1, 1)
    return _apply_expr(e, o, bias)


def _lower_Conv(node, a, get, inits) -> _Expr:
    return _convolution(node, a, get, inits, transposed=False)


def _lower_ConvTranspose(node, a, get, inits) -> _Expr:
    return _convolution(node, a, get, inits, transposed=True)


def _dense(node, a, get, inits, gemm: bool) -> _Expr:
    e = get(node.input[0])
    if node.input[1] not in inits or a.get("transA", 0) or len(e.shape) != 1:
        raise TargetError("only x @ W with a constant W on flat activations maps to Dense",
                          node=node.name, op=node.op_type, hint="Flatten before the matrix product.")
    w = inits[node.input[1]].astype(np.float64)
    w = w if (gemm and a.get("transB", 0)) else w.T
    w = w * a.get("alpha", 1.0)
    o = Op("dense", e.shape, (w.shape[0],), w)
    bias = np.zeros(o.out_shape)
    if gemm and len(node.input) > 2 and node.input[2]:
        bias = bias + a.get("beta", 1.0) * np.broadcast_to(
            inits[node.input[2]].astype(np.float64).reshape(-1), o.out_shape)
    return _apply_expr(e, o, bias)


def _lower_Gemm(node, a, get, inits) -> _Expr:
    return _dense(node, a, get, inits, gemm=True)


def _lower_MatMul(node, a, get, inits) -> _Expr:
    return _dense(node, a, get, inits, gemm=False)


def _lower_DelayDense(node, a, get, inits) -> _Expr:
    """A dense synapse with per-synapse delays: Lava's DelayDense on the spikes of a neuron
    population (0 before the first step, as the IR's delay line is); on the graph input, a
    host-side delay line feeding per-step currents (:mod:`.inputs`)."""
    e = get(node.input[0])
    w, d, b = (inits.get(n) for n in node.input[1:4])
    if w is None or d is None or b is None or len(e.shape) != 1:
        raise TargetError("a delay synapse needs constant weights, delays and bias on flat spikes",
                          node=node.name, op=node.op_type, hint="Flatten before it.")
    if np.any(e.const != 0):
        raise TargetError("a delay synapse fed by a constant current (a bias before it) has no Lava "
                          "mapping", node=node.name, op=node.op_type,
                          hint="Put a neuron layer before the delay synapse.")
    if any(o.is_process for _, ops in e.terms for o in ops):
        raise TargetError("a delay synapse must take a neuron population's spikes (or the graph "
                          "input) directly", node=node.name, op=node.op_type)
    top = int(a.get("max_delay", 0))
    o = Op("delay", e.shape, (w.shape[0],), w.astype(np.float64), delays=np.asarray(d, np.int64),
           max_delay=top)
    return _apply_expr(e, o, np.asarray(b, np.float64).reshape(-1))


def _lower_AveragePool(node, a, get, inits) -> _Expr:
    e = get(node.input[0])
    return _apply_expr(e, _pool_op(node, a, e.shape, whole_plane=False))


def _lower_GlobalAveragePool(node, a, get, inits) -> _Expr:
    e = get(node.input[0])
    return _apply_expr(e, _pool_op(node, a, e.shape, whole_plane=True))


def _lower_Transpose(node, a, get, inits) -> _Expr:
    e = get(node.input[0])
    perm = [int(p) for p in a.get("perm", reversed(range(len(e.shape) + 1)))]  # ONNX default: reverse
    if perm[0] != 0:
        raise TargetError("a Transpose that moves the batch axis", node=node.name, op=node.op_type)
    per = tuple(p - 1 for p in perm[1:])
    shape = tuple(e.shape[p] for p in per)
    return _apply_expr(e, Op("transpose", e.shape, shape, perm=per))


def _flatten(e: _Expr) -> _Expr:
    if len(e.shape) == 1:
        return e
    return _apply_expr(e, Op("flatten", e.shape, (int(np.prod(e.shape)),)))


def _lower_Flatten(node, a, get, inits) -> _Expr:
    if a.get("axis", 1) != 1:
        raise TargetError("Flatten must keep the batch axis (axis=1)", node=node.name, op=node.op_type)
    return _flatten(get(node.input[0]))


def _lower_Reshape(node, a, get, inits) -> _Expr:
    e = get(node.input[0])
    target = inits.get(node.input[1])
    n = int(np.prod(e.shape))
    # [N, F] and [N, F, 1, ..., 1] (a classifier's trailing singleton axes) are flattens
    if target is None or len(target) < 2 or target[1] not in (-1, n) \
            or any(int(t) != 1 for t in target[2:]):
        raise TargetError("only a reshape to [N, features] maps to Lava", node=node.name, op=node.op_type)
    return _flatten(e)


def _lower_Slice(node, a, get, inits) -> _Expr:
    e = get(node.input[0])
    return _apply_expr(e, _slice_op(node, e, inits))


def _lower_Pad(node, a, get, inits) -> _Expr:
    e = get(node.input[0])
    return _apply_expr(e, _pad_op(node, e, inits, a))


def _lower_Concat(node, a, get, inits) -> _Expr:
    """Concat along channels (or features): each part is placed by a 0/1 channel map, then summed.

    The placement is a 1x1 conv, folded into the next conv or dense layer, so a concatenation
    costs no synapse of its own: the next layer's weights are split per branch.
    """
    if any(name in inits for name in node.input):
        raise TargetError("concatenating a constant tensor", node=node.name, op=node.op_type)
    parts = [get(name) for name in node.input]
    rank = len(parts[0].shape)
    axis = int(a.get("axis", 1))
    axis = axis + rank + 1 if axis < 0 else axis
    if axis != 1 or any(len(p.shape) != rank or p.shape[1:] != parts[0].shape[1:] for p in parts):
        raise TargetError(f"only channel concatenation maps to Lava (axis {a.get('axis', 1)}, "
                          f"shapes {[p.shape for p in parts]})", node=node.name, op=node.op_type)
    total = sum(p.shape[0] for p in parts)
    out_shape = (total,) + parts[0].shape[1:]
    terms, const, offset = [], np.zeros(out_shape), 0
    for p in parts:
        c = p.shape[0]
        place = np.zeros((total, c))
        place[offset:offset + c] = np.eye(c)
        if rank == 1:
            op = Op("dense", p.shape, out_shape, place)
        else:
            op = Op("conv", p.shape, out_shape, place.reshape(total, c, 1, 1))
        e = _apply_expr(p, op)
        terms += e.terms
        const = const + e.const
        offset += c
    return _Expr(terms, const)


def _scale(node, e: _Expr, k: np.ndarray, shift: np.ndarray) -> _Expr:
    shape = e.shape
    if len(shape) == 3:
        per_c = k.reshape(shape[0], -1)
        if not np.all(per_c == per_c[:, :1]):
            raise TargetError("a spatially varying scale cannot be mapped", node=node.name, op=node.op_type)
        o = Op("conv", shape, shape, per_c[:, :1].reshape(-1, 1, 1, 1).copy(), groups=shape[0])
    else:
        o = Op("dense", shape, shape, np.diag(k.reshape(-1)))
    return _apply_expr(e, o, shift)


# ---------------------------------------------------------------- depths and relays

def _finalize_term(pop_src: Population, ops: list[Op]) -> list[Op]:
    """Simplify a chain, fold in the source's spike value, and make sure it ends in a process."""
    ops = scale_into(ops if any(o.is_process for o in ops) else ops + [identity_op(ops[-1].out_shape if ops else pop_src.shape)],
                     pop_src.spike_value)
    ops = push_scales_forward(simplify(ops))
    if any(o.kind == "delay" for o in ops) and sum(o.is_process for o in ops) > 1:
        raise TargetError(f"a delay synapse on the spikes of '{pop_src.name}' is followed by another "
                          "synapse before the next neurons; Lava's DelayDense must feed neurons",
                          hint="Put a neuron layer after every delay synapse.")
    if any(o.kind in ("transpose", "gather") for o in ops):
        raise TargetError(f"a Transpose of the spikes of '{pop_src.name}' that does not feed a "
                          "Flatten and a dense layer cannot be mapped to Lava",
                          hint="Keep activations in NCHW between convolutions.")
    return ops


def _is_selection(op: Op) -> bool:
    return op.kind == "flatten" or bool(np.all((op.weight == 0) | (op.weight == 1)))


def push_scales_forward(ops: list[Op]) -> list[Op]:
    """Move per-channel factors of leading depthwise ops into the last op of the chain.

    Afterwards every op but the last has 0/1 weights, so intermediate graded messages are
    integer counts and only the last op carries real weights (what fixed point needs).
    """
    ops = [Op(**vars(o)) for o in ops]
    procs = [i for i, o in enumerate(ops) if o.is_process]
    for i in procs[:-1]:
        op = ops[i]
        if _is_selection(op):
            continue
        c = op.weight.shape[0]
        per_c = op.weight.reshape(c, -1)
        depthwise = op.kind == "conv" and op.groups == c == op.in_shape[0] and op.weight.shape[1] == 1
        if not depthwise or not np.all(per_c == per_c[:, :1]):
            continue
        factor = np.broadcast_to(per_c[:, 0].reshape((c,) + (1,) * (len(op.out_shape) - 1)), op.out_shape)
        op.weight = np.ones_like(op.weight)
        ops[i + 1:] = scale_into(ops[i + 1:], factor)
    return ops


def fixed_compatible(ops: list[Op]) -> bool:
    procs = [o for o in ops if o.is_process]
    return all(_is_selection(o) for o in procs[:-1])


def chain_delay(ops: list[Op]) -> int:
    return sum(o.is_process for o in ops)


def _assign_depths(lg: LayerGraph) -> None:
    pops = lg.populations
    relays: dict[tuple[str, int], str] = {}
    new_order: dict[str, Population] = {}
    for name, p in list(pops.items()):
        p.input_ops = [simplify(ops) for ops in p.input_ops]
        p.terms = [Term(t.source, _finalize_term(pops[t.source], t.ops)) for t in p.terms]
        lat = [pops[t.source].depth + chain_delay(t.ops) for t in p.terms]
        p.depth = max(lat, default=0)
        fixed_terms = []
        for t, la in zip(p.terms, lat):
            src = t.source
            for k in range(1, p.depth - la + 1):
                key = (t.source, k)
                if key not in relays:
                    prev = pops.get(relays.get((t.source, k - 1)), pops[t.source])
                    relays[key] = _make_relay(prev, pops[t.source], k, new_order, pops)
                src = relays[key]
            fixed_terms.append(Term(src, t.ops))
        p.terms = fixed_terms
        new_order[name] = p
    lg.populations.clear()
    lg.populations.update({k: v for k, v in new_order.items() if k != OUTPUT})
    lg.populations[OUTPUT] = new_order[OUTPUT]


def _make_relay(prev: Population, origin: Population, k: int, order: dict, pops: dict) -> str:
    name = f"{origin.name}#relay{k}"
    shape = origin.shape
    relay = Population(name, shape, np.ones(shape), np.zeros(shape), bias=np.zeros(shape),
                       terms=[Term(prev.name, [identity_op(shape)])], depth=prev.depth + 1,
                       spike_value=origin.spike_value, relay_of=origin.name)
    order[name] = relay
    pops[name] = relay
    return name
