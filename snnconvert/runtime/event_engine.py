"""A compiled, per-sample, channel-last event engine for CPU inference of whole networks.

The graph interpreter (:mod:`.network`) runs one node at a time over chunks of steps, with
float NCHW tensors between nodes; on sparse spiking nets the conversions, transposes and
neuron passes between layers cost more than the synaptic work. This engine runs the part
of the graph between the time-invariant input prefix and the readout tail *layer-major per
sample*: for one sample (or a small group), a neuron layer runs all T steps before the next
layer starts, and its spikes are stored as a compact uint8 train ``[samples, T, H, W, C]``
(0/1, channel-last; the spike amplitude, the neuron's threshold per channel, is applied
when the train is read). At each step a layer's synaptic current is built in a channel-last
tile ``[H*W, O padded to 16]``: the bias (or the constant current of the first layer), then
a Conv on binary spikes adds its output by table look-up (:mod:`.binary_conv`: sums of weight
rows per 8-channel spike pattern), and the other synapses (a Conv or Gemm on pooled spike
counts, identity and subsampled shortcuts) scatter: for each input position, the rows of its
channels that fired (weights prescaled by the spike's amplitude) are summed in registers and
added once to every output row segment they reach (:func:`.simd.rows_add`). The neuron step
(:func:`.simd.neuron16`, 16 neurons a vector) reads the tile and writes the next spikes and
counts directly. No float spike tensor, no transpose, no per-node dispatch. A layer whose
current is constant (the first one: bias plus the prefix's output) runs time-major instead
(:func:`.event_layers.constant_layer`: 64 neurons' potentials stay in registers for all T
steps), reading the prefix's NCHW output as it is and writing the 2 x 2 pooled counts directly.

Supported between the prefix and the tail: Conv (any stride, padding, dilation; group 1),
Gemm/MatMul (after Flatten/Reshape or on 1-D layers), IF/LIF neurons with reset by subtraction
or to zero and a per-channel (or scalar) threshold, k x k stride-k AveragePool on spikes,
Add of currents (residual blocks), spatial zero Pad before a Conv, Slice subsampling and channel
zero Pad on a shortcut (ResNet option A). Anything else: :meth:`EventEngine.compile` returns
None with the reason logged, and the interpreter runs the graph as before.

Float64 spike counts equal the dense runtime's (tests, ``benchmarks/bench_speed.py``): the
neuron arithmetic is the same, sums differ only in order (bias first, then events).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import torch

from .. import ir
from ..ops.base import explicit_pads
from .binary_conv import BinaryConv, binary_conv_row, pack_frame
from .event_kernels import _aligned_zeros, _column_runs, _padded, _tap_maps
from .event_layers import constant_layer, supports_constant_layer

try:
    import numba
    from numba import uint64

    from .simd import (BYTE_LANES, bytes16_sum4, lowest_bit, neuron16, nonzero64, rows_add1, rows_add2,
                       rows_add3, rows_add4, rows_add5, rows_add6, rows_add7, rows_add8,
                       spikes16_add)
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

log = logging.getLogger(__name__)

GROUP_BYTES = 4 << 20
"""Spike trains of one group of samples (all layers) are kept near this size, so that a
layer's train is still in cache when the next layer reads it..."""

CALL_FRAMES = 160
"""...but each layer runs at least this many frames (samples x steps) per call: its look-up
tables (up to a few MB) come into cache once per call, so short calls pay for them again and
again (ResNet-20 T=8, 100 images, CPU ms, two runs each: 2 samples a call 480/506, 9: 360/354,
19: 282/306, 39: 320/353; T=32, 50 images: 1 sample 653/711, 4: 594/603, 9: 597/518)."""

GROUP_LIMIT = 64 << 20
"""The most bytes of spike trains one group may hold (memory bound on the rule above)."""

# fields of one row of the synapse table (int64) that the kernel reads
(F_SRC, F_SSTRIDE, F_TSTRIDE, F_HS, F_WS, F_CS, F_KH, F_KW, F_OW, F_OP, F_RUNS, F_W, F_YMAP,
 F_XMAP, F_XRUN, F_ROWCOL, F_AMPN, F_SELECT, F_OH, F_SY, F_SX, F_BEFORE, N_FIELDS) = range(23)
# F_SELECT: a shortcut (identity or Slice-subsampled, channels zero-padded) of binary spikes,
# added 16 channels at a time (F_W: the amplitudes [C] in the weight arena)


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    _inline = numba.njit(nogil=True, boundscheck=False, error_model="numpy", inline="always")

    @_inline
    def _rows(tile, tb, wflat, woffs, shift, nf, nvec):  # pragma: no cover - compiled
        """tile[tb : tb + 16 nvec] += the sum of the nf weight rows wflat[woffs[j] + shift:]."""
        o = 0
        while nvec - o >= 8:
            rows_add8(tile, tb + 16 * o, wflat, woffs, shift + 16 * o, nf)
            o += 8
        r = nvec - o
        tb += 16 * o
        shift += 16 * o
        if r == 1:
            rows_add1(tile, tb, wflat, woffs, shift, nf)
        elif r == 2:
            rows_add2(tile, tb, wflat, woffs, shift, nf)
        elif r == 3:
            rows_add3(tile, tb, wflat, woffs, shift, nf)
        elif r == 4:
            rows_add4(tile, tb, wflat, woffs, shift, nf)
        elif r == 5:
            rows_add5(tile, tb, wflat, woffs, shift, nf)
        elif r == 6:
            rows_add6(tile, tb, wflat, woffs, shift, nf)
        elif r == 7:
            rows_add7(tile, tb, wflat, woffs, shift, nf)

    @_inline
    def _scatter(trains, g, b, t, wflat, imaps, tile, woffs):  # pragma: no cover - compiled
        """One step of one synapse, position by position: the channels of sample ``b``'s input
        position that fired at step ``t`` (its bytes, 64 at a time) are listed (their weight
        rows, prescaled by the spike's amplitude), then each output row segment they reach gets
        the sum of their rows (one load and one store of the segment per position)."""
        src = g[F_SRC] + b * g[F_SSTRIDE] + t * g[F_TSTRIDE]
        cs, ampn, rowcol = g[F_CS], g[F_AMPN], g[F_ROWCOL]
        kh, kw, ow, op, hs, ws = g[F_KH], g[F_KW], g[F_OW], g[F_OP], g[F_HS], g[F_WS]
        runs, ymap, xmap, xrun = g[F_RUNS], g[F_YMAP], g[F_XMAP], g[F_XRUN]
        cstride = kh * kw * op
        for q in range(hs * ws):
            base = src + q * cs
            nf = 0
            for c0 in range(0, cs, 64):
                mask = nonzero64(trains, base + c0)
                if cs - c0 < 64:
                    mask &= (uint64(1) << uint64(cs - c0)) - uint64(1)
                while mask:
                    c = c0 + np.int64(lowest_bit(mask))
                    mask &= mask - uint64(1)
                    woffs[nf] = (c * ampn + np.int64(trains[uint64(base + c)])) * cstride
                    nf += 1
            if nf == 0:
                continue
            iy = imaps[uint64(rowcol + 2 * q)]
            ix = imaps[uint64(rowcol + 2 * q + 1)]
            for ky in range(kh):
                oy = imaps[uint64(ymap + ky * hs + iy)]
                if oy < 0:
                    continue
                wrow = g[F_W] + ky * kw * op
                if runs:
                    r = uint64(xrun + 3 * ix)
                    _rows(tile, (oy * ow + imaps[r + uint64(2)]) * op, wflat, woffs,
                          wrow + imaps[r] * op, nf, imaps[r + uint64(1)] * op // 16)
                else:
                    for kx in range(kw):
                        ox = imaps[uint64(xmap + kx * ws + ix)]
                        if ox >= 0:
                            _rows(tile, (oy * ow + ox) * op, wflat, woffs, wrow + kx * op, nf,
                                  op // 16)

    @_inline
    def _select(trains, g, b, t, wflat, tile):  # pragma: no cover - compiled
        """One step of a shortcut synapse: output (oy, ox) channel ``before + c`` gets input
        (oy·sy, ox·sx) channel c's spike times its amplitude, 16 channels a vector op."""
        src = g[F_SRC] + b * g[F_SSTRIDE] + t * g[F_TSTRIDE]
        cs, ws, op, oh, ow = g[F_CS], g[F_WS], g[F_OP], g[F_OH], g[F_OW]
        sy, sx, before, amp = g[F_SY], g[F_SX], g[F_BEFORE], g[F_W]
        wide = cs // 16 * 16
        for oy in range(oh):
            for ox in range(ow):
                s = src + (oy * sy * ws + ox * sx) * cs
                d = (oy * ow + ox) * op + before
                for c in range(0, wide, 16):
                    spikes16_add(tile, d + c, trains, s + c, wflat, amp + c)
                for c in range(wide, cs):
                    if trains[uint64(s + c)]:
                        tile[uint64(d + c)] += wflat[uint64(amp + c)]

    @_inline
    def _neurons(v, tile, base, bb, bstep, theta, decay, leaky, subtract, zero, trains, ob, c8,
                 p0, p1, channels, op, direct):  # pragma: no cover - compiled
        """One IF/LIF step of the neurons at positions p0:p1: current from the tile (or, with
        ``direct``, the base itself), spikes to the train at ``ob``, counts to c8; the tile
        reset to the base. Returns how many fired."""
        wide = channels // 16 * 16
        fired_now = 0
        for p in range(p0, p1):
            tp = p * op
            vp = p * channels
            bp = bb + p * bstep
            for o in range(0, wide, 16):
                if direct:  # no synapse: the current is the base itself
                    fired_now += neuron16(v, vp + o, base, bp + o, base, bp + o, theta, o,
                                          decay, leaky, subtract, trains, ob + vp + o, c8, vp + o)
                else:
                    fired_now += neuron16(v, vp + o, tile, tp + o, base, bp + o, theta, o,
                                          decay, leaky, subtract, trains, ob + vp + o, c8, vp + o)
            for o in range(wide, channels):
                cur = tile[uint64(tp + o)]
                tile[uint64(tp + o)] = base[uint64(bp + o)]
                vi = v[uint64(vp + o)] * decay if leaky else v[uint64(vp + o)]
                vi = vi + cur
                th = theta[o]
                fired = vi >= th
                if subtract:
                    v[uint64(vp + o)] = vi - (th if fired else zero)
                else:
                    v[uint64(vp + o)] = zero if fired else vi
                trains[uint64(ob + vp + o)] = fired
                c8[uint64(vp + o)] += fired
                fired_now += fired
        return fired_now

    @_jit
    def _run_layer(trains, synapses, wflat, imaps, base, per_sample_base, v0, theta,
                   bstep, decay, leaky, subtract, zero, steps, hw, channels, op, out, out_stride,
                   counts, counts_off, per_step, snap_steps, snaps, tile, v, bc_on, bc_geo, table,
                   geom, packed, eq, et, offs, acc):  # pragma: no cover - compiled
        """All ``steps`` steps of one neuron layer for every sample of the group.

        trains: the group's spike trains (uint8, all layers); synapses [n, N_FIELDS]: the
        synapses feeding this layer; base: the constant part of the current (bias, the first
        layer's input current), [samples, hw, op] (``bstep`` = op) or [op] (``bstep`` = 0);
        v0 [hw*channels]; theta [channels];
        out: offset of this layer's train; counts: flat int32 running counts, [samples,
        hw*channels] from ``counts_off``;
        per_step [steps] (int64, summed over samples); snaps [samples, len(snap_steps),
        hw*channels]: the running counts after each step in ``snap_steps`` (1-based)."""
        n = hw * channels
        n_samples = snaps.shape[0]
        widest = 1
        for j in range(synapses.shape[0]):
            widest = max(widest, synapses[j, F_CS])
        woffs = np.empty(widest, np.int64)
        direct = synapses.shape[0] == 0 and not bc_on
        c8 = np.zeros(n, np.uint8)  # this sample's counts since the last flush
        for b in range(n_samples):
            bb = b * hw * op if per_sample_base else 0  # base: [hw, op] per sample, or [op]
            for i in range(n):
                v[i] = v0[i]
            for p in range(hw):
                for o in range(op):
                    tile[uint64(p * op + o)] = base[uint64(bb + p * bstep + o)]
            for i in range(n):
                c8[i] = 0
            cb = counts_off + b * n
            snap = 0
            for t in range(steps):
                for j in range(synapses.shape[0]):
                    if synapses[j, F_SELECT]:
                        _select(trains, synapses[j], b, t, wflat, tile)
                    else:
                        _scatter(trains, synapses[j], b, t, wflat, imaps, tile, woffs)
                ob = out + b * out_stride + t * n
                if bc_on:  # the table look-up synapse: bc_geo = (train, H, W, C, OH, OW)
                    # row by row, each followed by its neurons' step (the row still in L1)
                    frame = bc_geo[1] * bc_geo[2] * bc_geo[3]
                    s0 = bc_geo[0] + (b * steps + t) * frame
                    spikes = trains[s0:s0 + frame].reshape((1, bc_geo[1], bc_geo[2], bc_geo[3]))
                    pack_frame(spikes, 0, packed, geom)
                    ow = bc_geo[5]
                    fired_now = 0
                    for oy in range(bc_geo[4]):
                        binary_conv_row(tile, oy * ow * op, oy, ow, op, table, geom, packed, eq,
                                        et, offs)
                        fired_now += _neurons(v, tile, base, bb, bstep, theta, decay, leaky,
                                              subtract, zero, trains, ob, c8, oy * ow,
                                              (oy + 1) * ow, channels, op, False)
                else:
                    fired_now = _neurons(v, tile, base, bb, bstep, theta, decay, leaky, subtract,
                                         zero, trains, ob, c8, 0, hw, channels, op, direct)
                per_step[t] += fired_now
                if snap < snap_steps.size and snap_steps[snap] == t + 1:
                    for i in range(n):
                        snaps[b, snap, i] = counts[uint64(cb + i)] + c8[i]
                    snap += 1
                if (t + 1) % 255 == 0 or t + 1 == steps:  # uint8 counts: flushed before overflow
                    for i in range(n):
                        counts[uint64(cb + i)] += c8[i]
                        c8[i] = 0

    @_jit
    def _pool_trains(trains, src, dst, frames, height, width, channels, k):  # pragma: no cover
        """k x k, stride-k sums of ``frames`` consecutive [height, width, channels] uint8
        frames at ``src`` into [height//k, width//k, channels] frames at ``dst``."""
        ph, pw = height // k, width // k
        fin = height * width * channels
        fout = ph * pw * channels
        wide = channels // 16 * 16 if k == 2 else 0
        for f in range(frames):
            s0 = src + f * fin
            d0 = dst + f * fout
            for py in range(ph):
                for px in range(pw):
                    d = d0 + (py * pw + px) * channels
                    s = s0 + (py * k * width + px * k) * channels
                    for c in range(0, wide, 16):  # 2 x 2 windows, 16 channels at a time
                        bytes16_sum4(trains, d + c, trains, s + c, s + channels + c,
                                     s + width * channels + c, s + (width + 1) * channels + c)
                    for c in range(wide, channels):
                        trains[uint64(d + c)] = 0
                    for dy in range(k):
                        for dx in range(k):
                            s1 = s + (dy * width + dx) * channels
                            for c in range(wide, channels):
                                trains[uint64(d + c)] += trains[uint64(s1 + c)]


def available() -> bool:
    return numba is not None


def _use_binary(pool: int) -> bool:
    """Whether a Conv synapse runs by table look-up (:mod:`.binary_conv`) rather than by
    scatter. Measured (CPU ms, T=32): on binary spikes the look-up is 1.5-2.5x faster than
    scatter (ResNet-20: 333 vs 426 ms for 20 images); on pooled spikes (the kernel spread over
    k x k, k*k times the taps) it is slower (sinabs 124 vs 64 ms, example 54 vs 50 ms)."""
    return pool == 1


# ------------------------------------------------------------------ graph analysis
@dataclass
class _View:
    """A source neuron layer's spikes as seen through shape-only ops (a linear map of them)."""
    layer: int
    pool: int = 1                         # k x k stride-k average pool first
    step: tuple[int, int] = (1, 1)        # Slice subsampling of rows, columns
    channel_pad: tuple[int, int] = (0, 0)
    spatial_pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    flat: int = 0                         # 0: as is; -1: flattened; n: reshaped to [batch, n]


@dataclass
class _Synapse:
    """A weighted op on a view: 'conv' (weight name, attrs), 'gemm' (weight, transB, alpha),
    or 'select' (the view itself added to the current: identity / subsampled shortcut)."""
    kind: str
    view: _View
    weight: str = ""
    attrs: dict = field(default_factory=dict)


@dataclass
class _Layer:
    node: onnx.NodeProto
    attrs: dict
    synapses: list[_Synapse]
    biases: list[str]               # constants added to the current (Conv/Gemm biases, Adds)
    consts: list[str]               # time-invariant tensors added to the current


class Unsupported(Exception):
    """Why a graph cannot run on the engine (logged; the interpreter runs it)."""


def _analyse(nodes, kinds: dict, tail: set, value: Callable, CONST: int,
             VARYING: int) -> tuple[list[_Layer], list[str]]:
    """The engine's neuron layers of a graph and their output names (Unsupported if the part
    between the prefix and the readout tail holds anything the engine does not run)."""
    producer = {}
    for node, attrs, kind in nodes:
        for o in node.output:
            producer[o] = (node, attrs, kind)
    layers: list[_Layer] = []
    index: dict[str, int] = {}
    covered: set[str] = set()

    def is_const(name):
        return kinds.get(name) == CONST

    def const_value(name):
        v = value(name)
        return None if v is None else v.detach().cpu().numpy()

    def terms(name: str) -> list:
        """The tensor as a sum of _View, _Synapse, ('bias', name) and ('const', name)."""
        if kinds.get(name) == CONST:
            return [("bias", name)]
        if kinds.get(name) != VARYING:
            return [("const", name)]
        if name in index:
            return [_View(index[name])]
        node, attrs, _ = producer[name]
        covered.add(node.name)
        op = node.op_type
        if node.name in tail:
            raise Unsupported(f"{node.name} is in the readout tail but feeds a neuron")
        if ir.is_neuron(node):
            raise Unsupported(f"neuron {node.name} is used before it runs")
        if op == "Add":
            return terms(node.input[0]) + terms(node.input[1])
        if op in ("Conv", "Gemm", "MatMul"):
            if not all(is_const(i) for i in node.input[1:] if i):
                raise Unsupported(f"{op} {node.name} has a varying weight")
            view = _one_view(node.input[0])
            out: list = []
            if op == "Conv":
                if attrs.get("group", 1) != 1:
                    raise Unsupported(f"Conv {node.name} has groups")
                if view.step != (1, 1) or view.channel_pad != (0, 0) or view.flat:
                    raise Unsupported(f"Conv {node.name} reads a sliced or flattened tensor")
                out.append(_Synapse("conv", view, node.input[1], attrs))
                if len(node.input) > 2 and node.input[2]:
                    out.append(("bias", node.input[2]))
                return out
            if op == "Gemm" and (attrs.get("transA", 0) or float(attrs.get("beta", 1.0)) != 1.0):
                raise Unsupported(f"Gemm {node.name} has transA or beta != 1")
            if view.step != (1, 1) or view.channel_pad != (0, 0) or any(view.spatial_pad):
                raise Unsupported(f"{op} {node.name} reads a sliced or padded tensor")
            w = const_value(node.input[1])
            if w.ndim != 2:
                raise Unsupported(f"{op} {node.name} has a {w.ndim}-D weight")
            out.append(_Synapse("gemm", view, node.input[1], dict(attrs, op=op)))
            if len(node.input) > 2 and node.input[2]:
                out.append(("bias", node.input[2]))
            return out
        view = _one_view(node.input[0])
        if op == "AveragePool":
            k = list(attrs.get("kernel_shape", []))
            if not (len(k) == 2 and k[0] == k[1] and list(attrs.get("strides", [1, 1])) == k
                    and not any(attrs.get("pads", [])) and attrs.get("auto_pad", "NOTSET") in (
                        "NOTSET", "VALID", b"NOTSET", b"VALID") and not attrs.get("ceil_mode", 0)
                    and list(attrs.get("dilations", [1, 1])) == [1, 1] and k[0] * k[0] < 256):
                raise Unsupported(f"AveragePool {node.name} is not k x k, stride k, unpadded")
            if view.pool != 1 or view != _View(view.layer, view.pool):
                raise Unsupported(f"AveragePool {node.name} reads a transformed tensor")
            view.pool = int(k[0])
            return [view]
        if op in ("Flatten", "Reshape"):
            if op == "Flatten" and attrs.get("axis", 1) != 1:
                raise Unsupported(f"Flatten {node.name} has axis != 1")
            if op == "Reshape":
                shape = [int(s) for s in const_value(node.input[1])]
                if len(shape) != 2 or shape[0] not in (0, -1) or shape[1] == 0 \
                        or (shape[0] == -1 and shape[1] == -1):
                    raise Unsupported(f"Reshape {node.name} is not a flatten to [batch, n]")
                view.flat = shape[1]  # checked against the size when built
            else:
                view.flat = -1
            if view.step != (1, 1) or view.channel_pad != (0, 0) or any(view.spatial_pad):
                raise Unsupported(f"{op} {node.name} flattens a sliced or padded tensor")
            return [view]
        if op == "Slice":
            starts, ends = const_value(node.input[1]), const_value(node.input[2])
            axes = const_value(node.input[3]) if len(node.input) > 3 and node.input[3] else \
                np.arange(len(starts))
            steps = const_value(node.input[4]) if len(node.input) > 4 and node.input[4] else \
                np.ones(len(starts), np.int64)
            step = [1, 1]
            for s, e, a, st in zip(starts, ends, axes, steps):
                if a not in (2, 3, -2, -1) or s != 0 or e < 2 ** 31 or st < 1:
                    raise Unsupported(f"Slice {node.name} is not a spatial subsampling from 0")
                step[int(a) % 2] = int(st)  # axis 2 / -2 -> rows, 3 / -1 -> columns
            if view.step != (1, 1) or view.flat or any(view.spatial_pad) or view.channel_pad != (0, 0):
                raise Unsupported(f"Slice {node.name} reads a transformed tensor")
            view.step = (step[0], step[1])
            return [view]
        if op == "Pad":
            mode = attrs.get("mode", "constant")
            if mode not in ("constant", b"constant"):
                raise Unsupported(f"Pad {node.name} is not a zero pad")
            if len(node.input) > 2 and node.input[2] and float(const_value(node.input[2])) != 0:
                raise Unsupported(f"Pad {node.name} pads with a nonzero value")
            if len(node.input) > 3 and node.input[3]:
                raise Unsupported(f"Pad {node.name} names axes")
            pads = [int(p) for p in const_value(node.input[1])]
            if len(pads) != 8 or min(pads) < 0 or pads[0] or pads[4] or view.flat:
                raise Unsupported(f"Pad {node.name} is not a zero pad of a 4-D tensor")
            if pads[1] or pads[5]:
                if any(pads[2:4]) or any(pads[6:8]) or view.channel_pad != (0, 0):
                    raise Unsupported(f"Pad {node.name} pads channels and space together")
                view.channel_pad = (pads[1], pads[5])
            else:
                t, l, b, r = view.spatial_pad
                view.spatial_pad = (t + pads[2], l + pads[3], b + pads[6], r + pads[7])
            return [view]
        raise Unsupported(f"{op} {node.name} is not supported by the event engine")

    def _one_view(name: str) -> _View:
        got = terms(name)
        if len(got) != 1 or not isinstance(got[0], _View):
            raise Unsupported(f"{name} is not the spikes of one layer")
        v = got[0]
        return _View(v.layer, v.pool, v.step, v.channel_pad, v.spatial_pad, v.flat)

    for node, attrs, kind in nodes:
        if not ir.is_neuron(node):
            continue
        covered.add(node.name)
        if node.name in tail:
            raise Unsupported(f"neuron {node.name} is in the readout tail")
        if not all(is_const(i) for i in node.input[1:] if i):
            raise Unsupported(f"neuron {node.name} has a varying threshold or potential")
        if ir.step_bias_input(node) is not None:
            raise Unsupported(f"neuron {node.name} has a step bias")
        found = terms(node.input[0])
        layer = _Layer(node, attrs, [], [], [])
        for term in found:
            if isinstance(term, _View):
                term = _Synapse("select", term)
            if isinstance(term, _Synapse):
                layer.synapses.append(term)
            elif term[0] == "bias":
                layer.biases.append(term[1])
            else:
                layer.consts.append(term[1])
        index[node.output[0]] = len(layers)
        layers.append(layer)
    if not layers:
        raise Unsupported("no neuron layer")
    for node, _, kind in nodes:
        if kind == VARYING and node.name not in covered and node.name not in tail:
            raise Unsupported(f"{node.op_type} {node.name} is outside the neuron layers' inputs")
    return layers, list(index)


# ------------------------------------------------------------------ numeric plan
class _Arena:
    """Growing flat arrays (weights, int tables, amplitudes), each piece 64-byte aligned."""

    def __init__(self, dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.pieces: list[np.ndarray] = []
        self.size = 0

    def add(self, a: np.ndarray) -> int:
        align = max(1, 64 // self.dtype.itemsize)
        start = -(-self.size // align) * align
        if start > self.size:
            self.pieces.append(np.zeros(start - self.size, self.dtype))
        self.pieces.append(np.ascontiguousarray(a, self.dtype).reshape(-1))
        self.size = start + self.pieces[-1].size
        return start

    def array(self) -> np.ndarray:
        flat = np.concatenate(self.pieces + [np.zeros(64, self.dtype)])
        buf = np.zeros(flat.size + 64, self.dtype)
        off = (-buf.ctypes.data % 64) // self.dtype.itemsize
        out = buf[off:off + flat.size]
        out[:] = flat
        return out


@dataclass
class _LayerPlan:
    name: str
    shape: tuple[int, int, int]      # C, H, W of the layer (1-D layers: n, 1, 1)
    flat_shape: tuple                # the neuron's per-sample shape in the graph
    synapses: np.ndarray             # [n, N_FIELDS] int64 (train offsets per group filled in)
    sources: list[tuple[int, int]]   # (layer, pool) read by each synapse row
    base: np.ndarray                 # the bias: [op] (bstep 0) or [hw*op] (bstep op)
    bstep: int
    consts: list[str]
    v0: np.ndarray
    theta: np.ndarray                # [C]
    decay: float
    leaky: bool
    subtract: bool
    op: int
    binary: "BinaryConv | None" = None  # the synapse run by table look-up (binary_conv)
    binary_source: int = -1
    pools: list[int] = field(default_factory=list)   # pool sizes consumers read


class EventEngine:
    """A compiled plan of a network's spiking layers; :meth:`run` simulates a batch."""

    def __init__(self, layers: list[_Layer], tail_inputs: list[str], neuron_outputs: list[str]) -> None:
        self.layers = layers
        self.tail_inputs = tail_inputs
        self.neuron_outputs = neuron_outputs
        self._key = None
        self._plans: list[_LayerPlan] = []
        self._buffers: dict = {}  # run buffers kept between runs (see _kept)

    @classmethod
    def compile(cls, nodes, kinds: dict, tail: set, value: Callable, tail_inputs: list[str], CONST: int, VARYING: int) -> "EventEngine | None":
        """The engine for this graph, or None (the reason is logged at debug level)."""
        if not available():
            return None
        try:
            layers, neuron_outputs = _analyse(nodes, kinds, tail, value, CONST, VARYING)
            for name in tail_inputs:
                if name not in neuron_outputs:
                    raise Unsupported(f"the readout reads {name}, which is not a neuron layer's output")
        except Unsupported as exc:
            log.debug("event engine not used: %s", exc)
            return None
        return cls(layers, tail_inputs, neuron_outputs)

    # -------------------------------------------------------------- building
    def _build(self, value: Callable, leaks: Callable, env: dict, dtype: torch.dtype) -> None:
        """Lay out weights, tables and thresholds for ``dtype`` from the current parameter values
        and the prefix's outputs in ``env`` (for the first layer's shape)."""
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        wa, ia = _Arena(np_dtype), _Arena(np.int64)
        plans: list[_LayerPlan] = []

        def array(name):
            return value(name).detach().cpu().numpy().astype(np.float64)

        for li, layer in enumerate(self.layers):
            rows, sources, shapes = [], [], []
            bc, bc_source = None, -1
            for syn in layer.synapses:
                row, out_shape, binary = self._synapse_row(syn, plans, array, wa, ia)
                shapes.append(out_shape)
                if binary is not None and bc is None and _use_binary(syn.view.pool):
                    weight, amplitude, strides, pads, dilations, in_hw = binary
                    bc = BinaryConv.build(weight, amplitude, strides, pads, dilations, in_hw,
                                          np_dtype)
                    bc_source = syn.view.layer
                    continue
                rows.append(row)
                sources.append((syn.view.layer, syn.view.pool))
            for name in layer.consts:
                shapes.append(tuple(env[name].shape[1:]))
            if not shapes:
                raise Unsupported(f"neuron {layer.node.name} has no input")
            graph_shape = shapes[0]
            shape3 = _as3(graph_shape, layer.node.name)
            for s in shapes[1:]:
                if _as3(s, layer.node.name) != shape3:
                    raise Unsupported(f"the inputs of {layer.node.name} differ in shape")
            c, h, w = shape3
            op = _padded(c)
            bias = np.zeros(graph_shape, np.float64) if layer.biases else None
            for name in layer.biases:
                b = _per_sample(array(name), layer.node.name) if array(name).ndim > len(graph_shape) \
                    else array(name)
                if b.ndim == 1 and len(graph_shape) == 3 and b.size == graph_shape[0] > 1:
                    b = b.reshape(-1, 1, 1)  # a Conv's per-channel bias
                try:
                    bias = bias + np.broadcast_to(b, graph_shape)
                except ValueError:
                    raise Unsupported(f"the bias {name} of {layer.node.name} does not broadcast") from None
            base = np.zeros((h * w, op), np_dtype)
            if bias is not None:
                base[:, :c] = np.asarray(bias).reshape(c, h * w).T
            bstep = 0 if (base == base[:1]).all() else op
            base = base[0] if bstep == 0 else base.reshape(-1)
            node = layer.node
            theta_full = np.broadcast_to(_per_sample(array(node.input[1]), node.name), graph_shape
                                         ).reshape(c, h * w)
            if not (theta_full == theta_full[:, :1]).all():
                raise Unsupported(f"the threshold of {node.name} varies within a channel")
            v0 = array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
            v0 = np.broadcast_to(_per_sample(v0, node.name), graph_shape).reshape(c, h * w).T
            reset = layer.attrs.get("reset", "subtract")
            reset = reset.decode() if isinstance(reset, bytes) else reset
            leak = leaks(node.name)
            plans.append(_LayerPlan(
                name=node.name, shape=shape3, flat_shape=graph_shape,
                synapses=np.array(rows, np.int64).reshape(-1, N_FIELDS), sources=sources,
                base=base, bstep=bstep, consts=list(layer.consts),
                v0=np.ascontiguousarray(v0, np_dtype).reshape(-1),
                theta=np.ascontiguousarray(theta_full[:, 0], np_dtype),
                decay=np_dtype(1.0 - leak), leaky=bool(leak), subtract=reset == "subtract", op=op,
                binary=bc, binary_source=bc_source))
        for plan in plans:
            for layer, pool in plan.sources:
                if pool > 1 and pool not in plans[layer].pools:
                    plans[layer].pools.append(pool)
        self._plans = plans
        self._wflat, self._imaps = wa.array(), ia.array()
        self._np_dtype = np_dtype

    def _synapse_row(self, syn: _Synapse, plans, array, wa: _Arena, ia: _Arena):
        view = syn.view
        src = plans[view.layer]
        c, h, w = src.shape
        k = view.pool
        binary = None
        hs, ws = h // k, w // k
        if k > 1 and (hs == 0 or ws == 0):
            raise Unsupported("a pool is larger than its input")
        theta = src.theta  # in the run's dtype: the pooled values are the dense pool's
        amp = np.zeros((c, k * k + 1), theta.dtype)
        for n in range(1, k * k + 1):  # n spikes in a window: summed one by one, then / k*k
            amp[:, n] = amp[:, n - 1] + theta
        if k > 1:
            amp = amp / theta.dtype.type(k * k)
        if syn.kind == "conv":
            wt = array(syn.weight)
            if wt.ndim != 4 or wt.shape[1] != c:
                raise Unsupported(f"conv weight {syn.weight} does not match its input")
            o, _, kh, kw = wt.shape
            attrs = syn.attrs
            ph, pw = hs + view.spatial_pad[0] + view.spatial_pad[2], \
                ws + view.spatial_pad[1] + view.spatial_pad[3]
            pads = explicit_pads(attrs, [ph, pw], [kh, kw])
            pads = [pads[0] + view.spatial_pad[0], pads[1] + view.spatial_pad[1],
                    pads[2] + view.spatial_pad[2], pads[3] + view.spatial_pad[3]]
            sh, sw = attrs.get("strides", [1, 1])
            dh, dw = attrs.get("dilations", [1, 1])
            if k == 1:
                binary = (wt, theta, (sh, sw), pads, (dh, dw), (h, w))
            elif (dh, dw) == (1, 1) and h % k == 0 and w % k == 0:
                # conv(pool_k(s)) = a conv of s by the kernel spread over k x k and / k*k, stride k*s
                spread = np.repeat(np.repeat(wt, k, axis=2), k, axis=3) / (k * k)
                binary = (spread, theta, (sh * k, sw * k), [p * k for p in pads], (1, 1), (h, w))
        elif syn.kind == "gemm":
            wt = array(syn.weight)
            if syn.attrs.get("op") == "Gemm":
                if syn.attrs.get("transB", 0):
                    wt = wt.T
                wt = wt * float(syn.attrs.get("alpha", 1.0))
            size = c * hs * ws
            if not (view.flat or (hs == ws == 1)) or wt.shape[0] != size \
                    or view.flat not in (0, -1, size):
                raise Unsupported(f"{syn.weight} does not match the flattened input")
            o = wt.shape[1]
            wt = wt.T.reshape(o, c, hs, ws)  # rows in NCHW flatten order
            kh, kw = hs, ws
            pads, (sh, sw), (dh, dw) = [0, 0, 0, 0], (1, 1), (1, 1)
        else:
            before, after = view.channel_pad
            o = c + before + after
            wt = np.zeros((o, c, 1, 1))
            wt[np.arange(c) + before, np.arange(c), 0, 0] = 1.0
            kh = kw = 1
            pads, (sh, sw), (dh, dw) = [0, 0, 0, 0], view.step, (1, 1)
        oh = (hs + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
        ow = (ws + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
        if oh <= 0 or ow <= 0:
            raise Unsupported("a synapse has an empty output")
        op = _padded(o)
        if syn.kind == "select" and k == 1 and not any(view.spatial_pad):
            row = np.zeros(N_FIELDS, np.int64)
            row[[F_SELECT, F_HS, F_WS, F_CS, F_OH, F_OW, F_OP, F_SY, F_SX, F_BEFORE]] = \
                1, hs, ws, c, oh, ow, op, sh, sw, view.channel_pad[0]
            row[F_W] = wa.add(theta)
            return row, (o, oh, ow), None
        weights = np.zeros((c, kh, kw, op), amp.dtype)
        weights[..., :o] = wt.transpose(1, 2, 3, 0)
        runs = sw == 1 and dw == 1
        ymap = _tap_maps(hs, oh, kh, sh, pads[0], dh)
        xmap = _tap_maps(ws, ow, kw, sw, pads[1], dw)
        xrun = _column_runs(xmap) if runs else np.zeros((ws, 3), np.int64)
        if runs:
            weights = weights[:, :, ::-1]
        # a row per (channel, spikes in its pool window): weight x amplitude, as the dense
        # path multiplies them (in the run's dtype)
        weights = weights[:, None] * amp[:, :, None, None, None]
        rowcol = np.stack(np.divmod(np.arange(hs * ws, dtype=np.int64), ws), axis=1)
        row = np.zeros(N_FIELDS, np.int64)
        row[[F_HS, F_WS, F_CS, F_KH, F_KW, F_OW, F_OP, F_RUNS, F_AMPN]] = \
            hs, ws, c, kh, kw, ow, op, int(runs), k * k + 1
        row[F_W] = wa.add(weights)
        row[F_YMAP], row[F_XMAP], row[F_XRUN], row[F_ROWCOL] = (ia.add(m) for m in (ymap, xmap, xrun,
                                                                                    rowcol))
        out_shape = (o,) if syn.kind == "gemm" else (o, oh, ow)
        return row, out_shape, binary

    @staticmethod
    def _binary_args(p: _LayerPlan, plans, offsets, dt) -> tuple:
        """The look-up synapse's arguments of :func:`_run_layer` (unused ones without)."""
        if p.binary is None:
            return (False, np.zeros(6, np.int64), *_no_binary(dt))
        c, h, w = plans[p.binary_source].shape
        oh, ow = p.binary.out_hw
        geo = np.array([offsets[(p.binary_source, 1)], h, w, c, oh, ow], np.int64)
        return (True, geo, *p.binary.kernel_args())

    # --------------------------------------------------------------- running
    def run(self, value: Callable, leaks: Callable, env: dict, batch: int, timesteps: int,
            points: list[int], dtype: torch.dtype, key: tuple, record: bool = True
            ) -> tuple[dict, dict, dict]:
        """Simulate ``batch`` samples for ``timesteps`` steps (``env``: the prefix's outputs).

        Returns (with ``record``: spike counts per layer [batch, *shape] float32; per-step spike
        totals per layer [timesteps]; the running sums of each tail input [len(points), batch,
        *shape] at each point: spikes x threshold summed over the steps up to it)."""
        if self._key != key:
            self._build(value, leaks, env, dtype)
            self._key = key
        plans = self._plans
        sizes = [int(np.prod(p.shape)) for p in plans]
        snapped = {i for i in range(len(plans)) if self.neuron_outputs[i] in self.tail_inputs}
        read_whole = {s for p in plans for s in p.sources} | \
            {(p.binary_source, 1) for p in plans if p.binary is not None}
        fused = [_time_major_pool(p, i in snapped) for i, p in enumerate(plans)]
        frames = {}  # (layer, pool) -> bytes of one step of its train
        for i, p in enumerate(plans):
            c, h, w = p.shape
            # a time-major layer writes its whole train only when someone reads it
            frames[(i, 1)] = 0 if fused[i] == 2 and (i, 1) not in read_whole else sizes[i]
            for k in p.pools:
                frames[(i, k)] = c * (h // k) * (w // k)
        per_sample = max(1, timesteps * sum(frames.values()))
        group = max(GROUP_BYTES // per_sample, -(-CALL_FRAMES // timesteps))
        group = max(1, min(batch, group, GROUP_LIMIT // per_sample))
        offsets, size = {}, 0  # train offsets inside one group's buffer
        for key_, frame in frames.items():
            offsets[key_] = size
            size += -(-group * timesteps * frame // 64) * 64
        trains = self._kept("trains", size + BYTE_LANES, np.uint8)
        trains[size:] = 0
        dt = self._np_dtype
        tables = []
        for p in plans:
            syn = p.synapses.copy()
            for j, source in enumerate(p.sources):
                syn[j, F_SRC] = offsets[source]
                syn[j, F_TSTRIDE] = frames[source]
                syn[j, F_SSTRIDE] = timesteps * frames[source]
            tables.append(syn)
        counts = [self._kept(("counts", i), (batch if record else group) * n, np.int32).reshape(-1, n)
                  for i, n in enumerate(sizes)]
        per_step = [np.zeros(timesteps, np.int64) for _ in plans]
        snap_steps = np.array(sorted(set(points)), np.int64)
        snaps = {i: self._kept(("snaps", i), batch * len(snap_steps) * sizes[i], np.int32).reshape(
            batch, len(snap_steps), sizes[i]) for i in snapped}
        no_snaps = np.zeros((batch, 0, 1), np.int32)
        stage, soffs, c32 = _aligned_zeros(128, dt), np.zeros(4, np.int64), np.zeros(64, np.int32)
        scratch = [(self._kept(("tile", i), p.shape[1] * p.shape[2] * p.op + 64, dt),
                    self._kept(("v", i), n, dt)) for i, (p, n) in enumerate(zip(plans, sizes))]
        for start in range(0, batch, group):
            stop = min(batch, start + group)
            for i, p in enumerate(plans):
                c, h, w = p.shape
                n = sizes[i]
                tile, v = scratch[i]
                if record:
                    counts[i][start:stop] = 0
                else:
                    counts[i][:stop - start] = 0
                k0 = fused[i]
                if k0:  # a constant current: time-major
                    constant_layer(trains, self._consts(p, env, start, stop, dt), p.base, p.bstep,
                                   p.v0, p.theta, p.decay, p.leaky, p.subtract, timesteps, h, w, c,
                                   offsets[(i, 1)], timesteps * n, frames[(i, 1)] > 0, k0,
                                   offsets[(i, k0)], timesteps * frames[(i, k0)],
                                   counts[i].reshape(-1), start * n if record else 0, per_step[i],
                                   stop - start, stage, soffs, c32)
                    for k in p.pools:
                        if k != k0:
                            _pool_trains(trains, offsets[(i, 1)], offsets[(i, k)],
                                         (stop - start) * timesteps, h, w, c, k)
                    continue
                base, bstep = (self._constant_current(p, env, start, stop, dt), p.op) if p.consts \
                    else (p.base, p.bstep)
                _run_layer(trains, tables[i], self._wflat, self._imaps, base, bool(p.consts),
                           p.v0, p.theta, bstep, p.decay, p.leaky, p.subtract, dt(0.0), timesteps,
                           h * w, c, p.op, offsets[(i, 1)], timesteps * n, counts[i].reshape(-1),
                           start * n if record else 0, per_step[i],
                           snap_steps if i in snaps else snap_steps[:0],
                           snaps[i][start:stop] if i in snaps else no_snaps[start:stop], tile, v,
                           *self._binary_args(p, plans, offsets, dt))
                for k in p.pools:
                    _pool_trains(trains, offsets[(i, 1)], offsets[(i, k)],
                                 (stop - start) * timesteps, h, w, c, k)
        spike_counts, totals, sums = {}, {}, {}
        for i, p in enumerate(plans):
            c, h, w = p.shape
            totals[p.name] = per_step[i]
            if record:
                cl = torch.from_numpy(counts[i]).view(batch, h, w, c).permute(0, 3, 1, 2)
                spike_counts[p.name] = cl.to(torch.float32).reshape(batch, *p.flat_shape)
            if i in snaps:
                s = torch.from_numpy(snaps[i]).view(batch, -1, h, w, c).permute(1, 0, 4, 2, 3)
                theta = torch.from_numpy(np.array(p.theta)).view(1, 1, c, 1, 1)
                s = s.to(dtype) * theta.to(dtype)
                sums[self.neuron_outputs[i]] = s.reshape(len(snap_steps), batch, *p.flat_shape)
        return spike_counts, totals, sums

    def _kept(self, key, n: int, dtype) -> np.ndarray:
        """A 64-byte aligned flat buffer of n elements kept between runs (its contents are
        whatever the last run left): fresh pages cost a page fault each, and on a VM under
        memory pressure these made a run after a dense one up to 2x slower in CPU time."""
        buf = self._buffers.get(key)
        if buf is None or buf.size < n or buf.dtype != np.dtype(dtype):
            buf = _aligned_zeros(n, dtype)
            self._buffers[key] = buf
        return buf[:n]

    @staticmethod
    def _consts(p: _LayerPlan, env: dict, start: int, stop: int, dt) -> np.ndarray:
        """The prefix's outputs a layer adds to its bias, summed, for samples start:stop:
        [samples, C, H*W] (flat, as the prefix made them; empty if none)."""
        total = None
        for name in p.consts:
            t = env[name][start:stop].detach().reshape(-1).numpy()
            total = t if total is None else total + t
        if total is None:
            return np.zeros(0, dt)
        return np.ascontiguousarray(total, dt)

    @staticmethod
    def _constant_current(p: _LayerPlan, env: dict, start: int, stop: int, dt) -> np.ndarray:
        """The time-invariant part of a layer's current for samples start:stop, channel-last
        [samples, H*W, op] (flat): the prefix's outputs it adds, on top of its bias."""
        c, h, w = p.shape
        total = None
        for name in p.consts:
            t = env[name][start:stop].detach().reshape(stop - start, c, h * w).permute(0, 2, 1)
            total = t.numpy() if total is None else total + t.numpy()
        base = np.zeros((stop - start, h * w, p.op), dt)
        if p.base.any():
            bias = np.broadcast_to(p.base.reshape(-1, p.op), (h * w, p.op))
            base[:, :, :c] = bias[None, :, :c] + total
        else:
            base[:, :, :c] = total
        return base.reshape(-1)


def _time_major_pool(p: _LayerPlan, snapped: bool) -> int:
    """0 if the layer runs step-major (:func:`_run_layer`); else it runs time-major
    (:func:`.event_layers.constant_layer`, its current is constant) with this pool fused (2:
    its only consumers read it 2 x 2 pooled, 1: none fused)."""
    c, h, w = p.shape
    if len(p.synapses) or p.binary is not None or snapped:
        return 0
    k = 2 if p.pools == [2] and supports_constant_layer(c, 2, h, w) else 1
    return k if supports_constant_layer(c, k, h, w) else 0


def _no_binary(dt) -> tuple:
    return (np.zeros(16, dt), np.zeros(8, np.int64), np.zeros(64, np.uint8), np.zeros(1, np.int64),
            np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(16, dt))


def _as3(shape: tuple, name: str) -> tuple[int, int, int]:
    if len(shape) == 1:
        return (int(shape[0]), 1, 1)
    if len(shape) == 3:
        return tuple(int(s) for s in shape)
    raise Unsupported(f"neuron {name} has a {len(shape)}-D per-sample shape")


def _per_sample(a: np.ndarray, name: str) -> np.ndarray:
    """A neuron parameter without a leading batch axis of 1 (per-sample values: refused)."""
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise Unsupported(f"neuron {name} has per-sample parameters")
        return a[0]
    return a
