"""Convolution of binary spike inputs by table look-up: additions of precomputed weight sums.

A conv fed by a neuron layer sees inputs that are 0 or the neuron's threshold θ_c. Packing the
C channel bits of an input position into groups of ``bits`` (8 or 4) channels, the contribution of
one group through one kernel tap is a weight sum that depends only on the group's bit pattern:
``table[tap, g, pattern, :] = Σ_{j in pattern} θ_{gb+j} · w[:, gb+j, ky, kx]`` (computed once in
float64). An output position then costs, per tap, one O-lane vector addition per *nonzero* group
instead of C multiply-adds: the kernel is output-stationary (loops over output positions, keeps the
O-lane sum in registers, writes once), channel-last, and skips the all-zero groups (at 12 % firing,
0.88⁸ ≈ 36 % of the bytes are zero), so its cost falls with density but stays bounded at 100 %.

Layout: spikes ``[F, H, W, C]`` uint8 0/1 → out ``[F, OH, OW, O]`` (adds into ``out``). Each frame
is packed into a zero-bordered ``[H + pads, W + pads, G]`` byte image first, so taps that fall in the
padding read pattern 0 and are skipped like any zero group (no bounds tests in the inner loop).

Cost model for choosing this kernel against scatter or dense per layer: :meth:`BinaryConv.time`
measures it on the caller's spikes, :meth:`BinaryConv.lookups` counts the vector additions a
frame set needs (the kernel's work is proportional to it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .event_kernels import _aligned_zeros

try:
    import numba
    from llvmlite import ir as llir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

LANES = 16
"""Output channels per vector; tables pad O to a multiple of this."""

TABLE_BUDGET = 640 * 1024
"""Largest table (bytes) for 8-bit groups; beyond it 4-bit groups keep the table near L2 size."""


def _padded(n: int) -> int:
    return -(-n // LANES) * LANES


if numba is not None:
    def _rows_sum(chunks: int, indirect: bool):
        """Intrinsic that sums table rows in vector registers: for k < ``chunks``,
        ``dst[dst_off+16k : +16] (+)= Σ_{i<n} table[off_i + shift + 16k : +16]`` with
        ``off_i = offs[i]`` (``rows_sum(dst, dst_off, table, offs, n, shift, add)``) or, when
        ``indirect``, ``off_i = prow[base + eq[i]] + et[i]``
        (``rows_sum(dst, dst_off, table, prow, base, eq, et, n, shift, add)``). Several
        independent sums run side by side so that additions overlap; ``add`` keeps dst's previous
        value, otherwise it is overwritten."""
        unroll = max(1, 4 // chunks)

        def codegen(context, builder, signature, args):
            if indirect:
                dv, doff, tv, pv, pbase, eqv, etv, n, shift, add = args
                dty, _, tty, pty, _, eqty, etty = signature.args[:7]
                pdata = context.make_array(pty)(context, builder, pv).data
                eqdata = context.make_array(eqty)(context, builder, eqv).data
                etdata = context.make_array(etty)(context, builder, etv).data
            else:
                dv, doff, tv, ov, n, shift, add = args
                dty, _, tty, oty = signature.args[:4]
                odata = context.make_array(oty)(context, builder, ov).data
            elt = context.get_data_type(tty.dtype)
            vec = llir.VectorType(elt, LANES)
            size = elt.get_abi_size(context.target_data)
            i64 = llir.IntType(64)
            tdata = context.make_array(tty)(context, builder, tv).data
            ddata = context.make_array(dty)(context, builder, dv).data
            zero = llir.Constant(vec, None)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(chunks)]
                    for _ in range(unroll)]

            def add_row(index, acc_row):
                if indirect:
                    q = builder.add(pbase, builder.load(builder.gep(eqdata, [index])))
                    off = builder.add(builder.load(builder.gep(pdata, [q])),
                                      builder.load(builder.gep(etdata, [index])))
                else:
                    off = builder.load(builder.gep(odata, [index]))
                off = builder.add(off, shift)
                for k in range(chunks):
                    p = builder.gep(tdata, [builder.add(off, llir.Constant(i64, LANES * k))])
                    row = builder.load(builder.bitcast(p, vec.as_pointer()), align=size)
                    builder.store(builder.fadd(builder.load(acc_row[k]), row), acc_row[k])

            blocks = builder.udiv(n, llir.Constant(i64, unroll)) if unroll > 1 else n
            with cgutils.for_range(builder, blocks) as loop:
                base = builder.mul(loop.index, llir.Constant(i64, unroll))
                for u in range(unroll):
                    add_row(builder.add(base, llir.Constant(i64, u)), accs[u])
            if unroll > 1:
                start = builder.mul(blocks, llir.Constant(i64, unroll))
                with cgutils.for_range(builder, n, start=start) as loop:
                    add_row(loop.index, accs[0])
            for k in range(chunks):
                total = builder.load(accs[0][k])
                for u in range(1, unroll):
                    total = builder.fadd(total, builder.load(accs[u][k]))
                p = builder.gep(ddata, [builder.add(doff, llir.Constant(i64, LANES * k))])
                p = builder.bitcast(p, vec.as_pointer())
                with builder.if_then(add):
                    builder.store(builder.fadd(builder.load(p, align=size), total), p,
                                  align=size)
                with builder.if_then(builder.not_(add)):
                    builder.store(total, p, align=size)
            return context.get_dummy_value()

        if indirect:
            @intrinsic
            def rows_sum(typingctx, dst, dst_off, table, prow, base, eq, et, n, shift, add):
                return types.void(dst, types.intp, table, prow, types.intp, eq, et, types.intp,
                                  types.intp, types.boolean), codegen
        else:
            @intrinsic
            def rows_sum(typingctx, dst, dst_off, table, offs, n, shift, add):
                return types.void(dst, types.intp, table, offs, types.intp, types.intp,
                                  types.boolean), codegen
        return rows_sum

    rows_sum1 = _rows_sum(1, False)
    rows_sum2 = _rows_sum(2, False)
    rows_sum4 = _rows_sum(4, False)
    taps_sum1 = _rows_sum(1, True)
    taps_sum2 = _rows_sum(2, True)
    taps_sum4 = _rows_sum(4, True)

    _jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")

    _GATHER8 = np.uint64(sum(1 << (7 * j + 7) for j in range(8)))
    """(word · _GATHER8) >> 56 packs the low bits of a uint64's 8 bytes (0/1 each) into one byte,
    bit i from byte i: every partial product lands on its own bit, so nothing carries."""

    @_jit
    def frame_rows(spikes, f, rows, cnt, geom, gsize, OP):  # pragma: no cover - compiled
        """Frame ``f`` of ``spikes`` [F, H, W, C] (0/1): for each input position, at its index q
        in the zero-bordered [Hp, Wp] image, the table row offsets ``g·gsize + pattern·OP`` of
        its channel groups go to ``rows[q·G : (q+1)·G]``; when ``geom[6]`` (compact) only the
        nonzero groups', in the first ``cnt[q]`` places (border: cnt stays 0)."""
        _, H, W, C = spikes.shape
        pt, pl, bits, Wp, compact = geom[0], geom[1], geom[4], geom[5], geom[6] != 0
        G = rows.shape[0] // cnt.shape[0]
        if C % 8 == 0 and (bits == 8 or bits == 4):
            words = C // 8
            s64 = spikes.reshape(-1).view(np.uint64)
            for y in range(H):
                for x in range(W):
                    w0 = ((f * H + y) * W + x) * words
                    q = (y + pt) * Wp + x + pl
                    r = q * G
                    c = 0
                    for w in range(words):
                        p = np.int64((s64[w0 + w] * _GATHER8) >> np.uint64(56))
                        if bits == 8:
                            rows[r + c] = w * gsize + p * OP
                            c += p != 0 if compact else 1
                        else:
                            lo = p & 15
                            hi = p >> 4
                            rows[r + c] = 2 * w * gsize + lo * OP
                            c += lo != 0 if compact else 1
                            rows[r + c] = (2 * w + 1) * gsize + hi * OP
                            c += hi != 0 if compact else 1
                    cnt[q] = c
            return
        for y in range(H):
            for x in range(W):
                q = (y + pt) * Wp + x + pl
                r = q * G
                c = 0
                for g in range(G):
                    c0 = g * bits
                    p = 0
                    for ch in range(c0, min(C, c0 + bits)):
                        if spikes[f, y, x, ch] != 0:
                            p |= 1 << (ch - c0)
                    rows[r + c] = g * gsize + p * OP
                    c += p != 0 if compact else 1
                cnt[q] = c

    @_jit
    def _sum_rows(dst, dst_off, table, offs, n, nchunks, add):  # pragma: no cover - compiled
        k = 0
        while nchunks - k >= 4:
            rows_sum4(dst, dst_off + LANES * k, table, offs, n, LANES * k, add)
            k += 4
        if nchunks - k >= 2:
            rows_sum2(dst, dst_off + LANES * k, table, offs, n, LANES * k, add)
            k += 2
        if nchunks - k >= 1:
            rows_sum1(dst, dst_off + LANES * k, table, offs, n, LANES * k, add)

    @_jit
    def _sum_taps(dst, dst_off, table, rows, base, eq, et, nchunks, add
                  ):  # pragma: no cover - compiled
        k = 0
        n = eq.shape[0]
        while nchunks - k >= 4:
            taps_sum4(dst, dst_off + LANES * k, table, rows, base, eq, et, n, LANES * k, add)
            k += 4
        if nchunks - k >= 2:
            taps_sum2(dst, dst_off + LANES * k, table, rows, base, eq, et, n, LANES * k, add)
            k += 2
        if nchunks - k >= 1:
            taps_sum1(dst, dst_off + LANES * k, table, rows, base, eq, et, n, LANES * k, add)

    @_jit
    def binary_conv_frames(spikes, out, table, taps, geom, rows, cnt, offs, acc, eq, et
                           ):  # pragma: no cover - compiled
        """out [F, OH, OW, O] += conv(spikes [F, H, W, C] 0/1 · amplitude) by table look-up.

        ``table`` [taps · G · 2^bits · OP] (flat, 64-byte aligned); ``taps`` [n, 2] int64:
        (dy·Wp + dx, table offset) of each kernel tap in the zero-bordered [Hp, Wp] input;
        ``geom`` int64 [pad top, pad left, stride y, stride x, bits, Wp, compact]; scratch:
        ``rows`` int64 [Hp·Wp·G] (border: g·2^bits·OP, the zero rows), ``cnt`` int64 [Hp·Wp]
        (zeros), ``offs`` int64 [taps·G], ``acc`` [OP] of out's dtype; ``eq``, ``et`` int64
        [taps·G]: entry t·G + j reads ``rows[q0·G + eq] + et`` (dy·Wp·G + dx·G + j, table
        offset of tap t) for the output whose top-left input is q0.

        compact: each output position first lists the table rows of its nonzero groups (cost
        per group, branch-free) and sums only those; otherwise it sums all taps·G rows (zero
        patterns read a zero row), which is cheaper when a row is one or two vectors.
        """
        compact = geom[6] != 0
        F = spikes.shape[0]
        _, OH, OW, O = out.shape
        sh, sw, bits, Wp = geom[2], geom[3], geom[4], geom[5]
        G = rows.shape[0] // cnt.shape[0]
        OP = acc.shape[0]
        nchunks = OP // LANES
        gsize = (1 << bits) * OP
        ntaps = taps.shape[0]
        outf = out.reshape(-1)
        direct = O == OP
        for f in range(F):
            frame_rows(spikes, f, rows, cnt, geom, gsize, OP)
            for oy in range(OH):
                for ox in range(OW):
                    q0 = oy * sh * Wp + ox * sw
                    base = ((f * OH + oy) * OW + ox) * O
                    if not compact:
                        if direct:
                            _sum_taps(outf, base, table, rows, q0 * G, eq, et, nchunks, True)
                        else:
                            _sum_taps(acc, 0, table, rows, q0 * G, eq, et, nchunks, False)
                            for o in range(O):
                                outf[base + o] += acc[o]
                        continue
                    n = 0
                    for t in range(ntaps):
                        q = q0 + taps[t, 0]
                        toff = taps[t, 1]
                        r = q * G
                        for j in range(G):  # all G, branch-free; only cnt[q] of them count
                            offs[n + j] = rows[r + j] + toff
                        n += cnt[q]
                    if direct:
                        _sum_rows(outf, base, table, offs, n, nchunks, True)
                    else:
                        _sum_rows(acc, 0, table, offs, n, nchunks, False)
                        for o in range(O):
                            outf[base + o] += acc[o]


def available() -> bool:
    return numba is not None


def _out_size(size: int, k: int, stride: int, pad_total: int, dil: int) -> int:
    return (size + pad_total - dil * (k - 1) - 1) // stride + 1


@dataclass
class BinaryConv:
    """A Conv (group 1, no bias) over binary spikes, its weights laid out as look-up tables.

    Build once per layer (:meth:`build`), then :meth:`accumulate` per batch of frames. Holds
    scratch buffers: one instance must not be used by two threads at once.
    """
    weight_shape: tuple[int, int, int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    bits: int
    groups: int
    table: np.ndarray
    taps: np.ndarray
    geom: np.ndarray
    rows: np.ndarray
    cnt: np.ndarray
    offs: np.ndarray
    acc: np.ndarray
    eq: np.ndarray
    et: np.ndarray

    @classmethod
    def build(cls, weight: np.ndarray, amplitude: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0),
              dilations=(1, 1), in_hw: tuple[int, int] = (1, 1), dtype=np.float32,
              bits: int | None = None, compact: bool | None = None) -> "BinaryConv":
        """``weight`` [O, C, KH, KW]; ``amplitude`` [C]: the value of a spike per input channel;
        ``pads`` ONNX order (top, left, bottom, right); ``bits`` per table group (1, 2, 4 or 8;
        default: 8 unless the table would exceed :data:`TABLE_BUDGET`, then 4)."""
        if numba is None:  # pragma: no cover - numba is a declared dependency
            raise RuntimeError("BinaryConv needs numba")
        weight = np.asarray(weight, np.float64)
        o, c, kh, kw = weight.shape
        amplitude = np.broadcast_to(np.asarray(amplitude, np.float64).reshape(-1), (c,))
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"BinaryConv dtype must be float32 or float64, not {dtype}")
        sh, sw = strides
        dh, dw = dilations
        pt, pl, pb, pr = pads
        h, w = in_hw
        oh, ow = _out_size(h, kh, sh, pt + pb, dh), _out_size(w, kw, sw, pl + pr, dw)
        if oh <= 0 or ow <= 0:
            raise ValueError(f"conv of {in_hw} by {(kh, kw)} has no output")
        op = _padded(o)
        if bits is None:
            bits = 8 if kh * kw * -(-c // 8) * 256 * op * dtype.itemsize <= TABLE_BUDGET else 4
        if bits not in (1, 2, 4, 8):
            raise ValueError(f"bits must be 1, 2, 4 or 8, not {bits}")
        g = -(-c // bits)
        scaled = weight * amplitude[None, :, None, None]  # [O, C, KH, KW]
        patterns = (np.arange(1 << bits)[:, None] >> np.arange(bits)[None, :]) & 1
        table = np.zeros((kh * kw, g, 1 << bits, op))
        for ky in range(kh):
            for kx in range(kw):
                for gi in range(g):
                    c0, c1 = gi * bits, min(c, gi * bits + bits)
                    table[ky * kw + kx, gi, :, :o] = patterns[:, :c1 - c0] @ scaled[:, c0:c1, ky, kx].T
        flat = _aligned_zeros(table.size, dtype)
        flat[:] = table.reshape(-1)
        tap_size = g * (1 << bits) * op
        hp, wp = h + pt + pb, w + pl + pr
        taps = np.array([(ky * dh * wp + kx * dw, (ky * kw + kx) * tap_size)
                         for ky in range(kh) for kx in range(kw)], np.int64)
        if compact is None:
            compact = op > 2 * LANES
        geom = np.array([pt, pl, sh, sw, bits, wp, compact], np.int64)
        rows = np.tile(np.arange(g, dtype=np.int64) * (1 << bits) * op, hp * wp)
        eq = np.array([tq * g + j for tq, _ in taps for j in range(g)], np.int64)
        et = np.repeat(taps[:, 1], g)
        return cls((o, c, kh, kw), (h, w), (oh, ow), bits, g, flat, taps, geom, rows,
                   np.zeros(hp * wp, np.int64), np.zeros(kh * kw * g, np.int64),
                   _aligned_zeros(op, dtype), eq, et)

    @property
    def dtype(self) -> np.dtype:
        return self.table.dtype

    def accumulate(self, spikes: np.ndarray, out: np.ndarray) -> None:
        """``out`` [F, OH, OW, O] += conv(``spikes`` [F, H, W, C] (uint8 0/1) · amplitude)."""
        o, c, _, _ = self.weight_shape
        h, w = self.in_hw
        oh, ow = self.out_hw
        if spikes.dtype != np.uint8 or spikes.ndim != 4 or spikes.shape[1:] != (h, w, c) \
                or not spikes.flags.c_contiguous:
            raise ValueError(f"spikes must be C-contiguous uint8 [F, {h}, {w}, {c}], "
                             f"got {spikes.dtype} {spikes.shape}")
        if out.dtype != self.dtype or out.shape != (spikes.shape[0], oh, ow, o) \
                or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {self.dtype} "
                             f"[{spikes.shape[0]}, {oh}, {ow}, {o}], got {out.dtype} {out.shape}")
        binary_conv_frames(spikes, out, *self.kernel_args())

    def lookups(self, spikes: np.ndarray) -> int:
        """Vector additions (16 lanes) the kernel does on ``spikes``: per output position and
        tap, the input position's nonzero groups (compact layout) or all G groups (direct);
        times O/16. With a fixed cost per output position, the kernel's time follows it."""
        _, _, kh, kw = self.weight_shape
        f = spikes.shape[0]
        oh, ow = self.out_hw
        chunks = self.acc.shape[0] // LANES
        if not self.geom[6]:
            return f * oh * ow * kh * kw * self.groups * chunks
        pt, pl, sh, sw, bits, wp = (int(v) for v in self.geom[:6])
        h, w = self.in_hw
        hp = self.cnt.shape[0] // wp
        groups = np.zeros((f, h, w, self.groups * bits), bool)
        groups[..., :spikes.shape[3]] = spikes != 0
        nz = np.zeros((f, hp, wp), np.int64)
        nz[:, pt:pt + h, pl:pl + w] = groups.reshape(f, h, w, self.groups, bits).any(-1).sum(-1)
        total = 0
        for dq in self.taps[:, 0]:
            dy, dx = divmod(int(dq), wp)
            total += int(nz[:, dy:dy + (oh - 1) * sh + 1:sh, dx:dx + (ow - 1) * sw + 1:sw].sum())
        return total * chunks

    def kernel_args(self) -> tuple:
        """The arguments after ``spikes, out`` of :func:`binary_conv_frames`, for numba code."""
        return (self.table, self.taps, self.geom, self.rows, self.cnt, self.offs, self.acc,
                self.eq, self.et)

    def time(self, spikes: np.ndarray, repeats: int = 3) -> float:
        """Best CPU seconds of :meth:`accumulate` on ``spikes`` over ``repeats`` runs (after a
        warm-up run): the caller compares it with its other kernels on the same frames."""
        out = np.zeros((spikes.shape[0], *self.out_hw, self.weight_shape[0]), self.dtype)
        self.accumulate(spikes, out)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            self.accumulate(spikes, out)
            best = min(best, time.process_time() - t0)
        return best
