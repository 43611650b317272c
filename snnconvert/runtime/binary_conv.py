"""Convolution of binary spike inputs by table look-up: additions of precomputed weight sums.

A conv fed by a neuron layer sees inputs that are 0 or the neuron's threshold θ_c. Packing the
C channel bits of an input position into groups of ``bits`` (8, or 4 for big layers) channels,
the contribution of one group through one kernel tap depends only on the group's bit pattern:
``table[tap, g, pattern, :] = Σ_{j in pattern} θ_{gb+j} · w[:, gb+j, ky, kx]`` (summed once in
float64). An output position then costs one O-lane vector addition per (tap, group) instead of
C multiply-adds per tap: 18 additions of 16 lanes for a 16->16 3x3 conv against 144 FMAs dense,
whatever the firing rate. The kernel is output-stationary and channel-last: it keeps the sums of
4-8 neighbouring outputs in vector registers and writes each output once.

Two layouts: *direct* sums every (tap, group) row, zero patterns included (they read a zero row
that stays in L1); *compact* first lists each output's nonzero groups (one vector compress-store
per 4 or 8 groups) and sums those, which pays when a row is four or more vectors (O >= 64:
0.19 vs 0.27 ms for ResNet-20's 64x8x8 -> 64 at 10 % firing, T=32; for O = 32, 0.41 vs 0.36).

Layout of the data: spikes ``[F, H, W, C]`` uint8 0/1 → out ``[F, OH, OW, O]`` (adds into
``out``). Each frame is packed into a zero-bordered ``[H + pads, W + pads, G]`` byte image first
(64 spikes per vector compare), so taps that fall in the padding read pattern 0 (no bounds tests).

Cost model for choosing this kernel against scatter or dense per layer: :meth:`BinaryConv.time`
measures it on the caller's spikes; :meth:`BinaryConv.lookups` counts its vector additions (its
time follows them: about 0.5-0.7 ns each here, one thread).
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

    from .simd import nonzero64
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

LANES = 16
"""Output channels per vector; tables pad O to a multiple of this."""

TABLE_BUDGET = 8 << 20
"""Largest table (bytes) for 8-bit groups; beyond it 4-bit groups (16x smaller, 2x the look-ups).
Measured: 8-bit groups are faster up to ResNet-20's 64->64 3x3 (a 4.7 MB float32 table): at
10-15 % firing a tap's likely patterns (0-2 bits set) are a small part of it."""


def _padded(n: int) -> int:
    return -(-n // LANES) * LANES


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")

    @intrinsic
    def _store_u64(typingctx, array, offset, value):
        """Bytes array[offset:offset+8] = value (little-endian), one unaligned store."""
        sig = types.void(array, types.intp, types.uint64)

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            ptr = builder.bitcast(builder.gep(data, [args[1]]), llir.IntType(64).as_pointer())
            builder.store(args[2], ptr, align=1)
            return context.get_dummy_value()

        return sig, codegen

    def _vector_sums(builder, chunks, positions, elt):
        """positions x chunks zeroed vector accumulators (promoted to registers by LLVM)."""
        zero = llir.Constant(llir.VectorType(elt, LANES), None)
        return [[cgutils.alloca_once_value(builder, zero) for _ in range(chunks)]
                for _ in range(positions)]

    def _add_row(builder, tdata, off, acc_row, elt, size):
        """acc_row[k] += table[off + 16k : +16] for each chunk k."""
        vec = llir.VectorType(elt, LANES)
        for k, acc in enumerate(acc_row):
            q = builder.gep(tdata, [builder.add(off, llir.Constant(off.type, LANES * k))])
            row = builder.load(builder.bitcast(q, vec.as_pointer()), align=size)
            builder.store(builder.fadd(builder.load(acc), row), acc)

    def _write_sums(builder, ddata, doff, dstep, accs, add, elt, size):
        """dst[doff + p·dstep + 16k : +16] (+)= accs[p][k]."""
        vec = llir.VectorType(elt, LANES)
        i64 = llir.IntType(64)
        for p, acc_row in enumerate(accs):
            pbase = builder.add(doff, builder.mul(dstep, llir.Constant(i64, p)))
            for k, acc in enumerate(acc_row):
                q = builder.gep(ddata, [builder.add(pbase, llir.Constant(i64, LANES * k))])
                q = builder.bitcast(q, vec.as_pointer())
                total = builder.load(acc)
                with builder.if_else(add) as (then, otherwise):
                    with then:
                        builder.store(builder.fadd(builder.load(q, align=size), total), q,
                                      align=size)
                    with otherwise:
                        builder.store(total, q, align=size)

    def _taps_sum(chunks: int, positions: int):
        """Intrinsic ``taps_sum(dst, dst_off, dst_step, table, packed, base, base_step, eq, et,
        n, row, shift, add)``: for each of ``positions`` outputs p and k < ``chunks``,
        ``dst[dst_off + p·dst_step + 16k : +16] (+)= Σ_{i<n} table[et[i] + shift + 16k +
        row · packed[base + p·base_step + eq[i]] : +16]``: entry i is one (tap, group), its
        pattern byte selects the table row. Neighbouring outputs are summed side by side
        (independent additions; each entry's eq/et is read once for all of them)."""
        def codegen(context, builder, signature, args):
            dv, doff, dstep, tv, pv, base, bstep, eqv, etv, n, row, shift, add = args
            dty, _, _, tty, pty, _, _, eqty, etty = signature.args[:9]
            ddata, tdata, pdata, eqdata, etdata = [
                context.make_array(ty)(context, builder, v).data
                for ty, v in ((dty, dv), (tty, tv), (pty, pv), (eqty, eqv), (etty, etv))]
            elt = context.get_data_type(tty.dtype)
            size = elt.get_abi_size(context.target_data)
            i64 = llir.IntType(64)
            accs = _vector_sums(builder, chunks, positions, elt)
            bases = [builder.add(base, builder.mul(bstep, llir.Constant(i64, p)))
                     for p in range(positions)]
            with cgutils.for_range(builder, n) as loop:
                e = builder.load(builder.gep(eqdata, [loop.index]))
                t = builder.add(builder.load(builder.gep(etdata, [loop.index])), shift)
                for p in range(positions):
                    pattern = builder.load(builder.gep(pdata, [builder.add(bases[p], e)]))
                    off = builder.add(t, builder.mul(builder.zext(pattern, i64), row))
                    _add_row(builder, tdata, off, accs[p], elt, size)
            _write_sums(builder, ddata, doff, dstep, accs, add, elt, size)
            return context.get_dummy_value()

        @intrinsic
        def taps_sum(typingctx, dst, dst_off, dst_step, table, packed, base, base_step, eq, et,
                     n, row, shift, add):
            return types.void(dst, types.intp, types.intp, table, packed, types.intp, types.intp,
                              eq, et, types.intp, types.intp, types.intp, types.boolean), codegen
        return taps_sum

    def _compact(width: int):
        """Intrinsic ``compact(offs, n, packed, start, et, e0, row) -> n'``: lists the table rows
        of the nonzero patterns among packed[start:start+width] (entries e0.., row ``et[e] +
        pattern·row``) at offs[n:] by one vector compress-store; returns n plus their number."""
        def codegen(context, builder, signature, args):
            ov, n, pv, start, etv, e0, row = args
            oty, _, pty, _, ety = signature.args[:5]
            odata, pdata, edata = [context.make_array(ty)(context, builder, v).data
                                   for ty, v in ((oty, ov), (pty, pv), (ety, etv))]
            i64 = llir.IntType(64)
            vb, vq = llir.VectorType(llir.IntType(8), width), llir.VectorType(i64, width)
            vmask = llir.VectorType(llir.IntType(1), width)
            pats = builder.load(builder.bitcast(builder.gep(pdata, [start]), vb.as_pointer()),
                                align=1)
            base = builder.load(builder.bitcast(builder.gep(edata, [e0]), vq.as_pointer()),
                                align=8)
            splat = builder.insert_element(llir.Constant(vq, None), row,
                                           llir.Constant(llir.IntType(32), 0))
            splat = builder.shuffle_vector(
                splat, llir.Constant(vq, None),
                llir.Constant(llir.VectorType(llir.IntType(32), width), [0] * width))
            values = builder.add(base, builder.mul(builder.zext(pats, vq), splat))
            mask = builder.icmp_unsigned("!=", pats, llir.Constant(vb, None))
            compress = cgutils.get_or_insert_function(
                builder.module, llir.FunctionType(llir.VoidType(), [vq, i64.as_pointer(), vmask]),
                f"llvm.masked.compressstore.v{width}i64")
            builder.call(compress, [values, builder.gep(odata, [n]), mask])
            bits = llir.IntType(width)
            ctpop = cgutils.get_or_insert_function(
                builder.module, llir.FunctionType(bits, [bits]), f"llvm.ctpop.i{width}")
            count = builder.call(ctpop, [builder.bitcast(mask, bits)])
            return builder.add(n, builder.zext(count, i64))

        @intrinsic
        def compact(typingctx, offs, n, packed, start, et, e0, row):
            return types.intp(offs, types.intp, packed, types.intp, et, types.intp,
                              types.intp), codegen
        return compact

    _compact4, _compact8 = _compact(4), _compact(8)

    def _rows_sum(chunks: int):
        """Intrinsic ``rows_sum(dst, dst_off, table, offs, n, shift, add)``: for k < ``chunks``,
        ``dst[dst_off+16k : +16] (+)= Σ_{i<n} table[offs[i] + shift + 16k : +16]`` (four
        independent sums a chunk, so that additions overlap)."""
        unroll = max(1, 4 // chunks)

        def codegen(context, builder, signature, args):
            dv, doff, tv, ov, n, shift, add = args
            dty, _, tty, oty = signature.args[:4]
            ddata, tdata, odata = [context.make_array(ty)(context, builder, v).data
                                   for ty, v in ((dty, dv), (tty, tv), (oty, ov))]
            elt = context.get_data_type(tty.dtype)
            size = elt.get_abi_size(context.target_data)
            i64 = llir.IntType(64)
            accs = _vector_sums(builder, chunks, unroll, elt)

            def add_entry(index, acc_row):
                off = builder.add(builder.load(builder.gep(odata, [index])), shift)
                _add_row(builder, tdata, off, acc_row, elt, size)

            blocks = builder.udiv(n, llir.Constant(i64, unroll)) if unroll > 1 else n
            with cgutils.for_range(builder, blocks) as loop:
                first = builder.mul(loop.index, llir.Constant(i64, unroll))
                for u in range(unroll):
                    add_entry(builder.add(first, llir.Constant(i64, u)), accs[u])
            if unroll > 1:
                start = builder.mul(blocks, llir.Constant(i64, unroll))
                with cgutils.for_range(builder, n, start=start) as loop:
                    add_entry(loop.index, accs[0])
            for k in range(chunks):
                for u in range(1, unroll):
                    total = builder.fadd(builder.load(accs[0][k]), builder.load(accs[u][k]))
                    builder.store(total, accs[0][k])
            _write_sums(builder, ddata, doff, llir.Constant(i64, 0), accs[:1], add, elt, size)
            return context.get_dummy_value()

        @intrinsic
        def rows_sum(typingctx, dst, dst_off, table, offs, n, shift, add):
            return types.void(dst, types.intp, table, offs, types.intp, types.intp,
                              types.boolean), codegen
        return rows_sum

    P1, P2, P4 = 8, 8, 4
    """Outputs summed side by side for rows of 1, 2 and 4 16-lane chunks (T=32 frames, one
    thread, 16-32 channels: 1 output 2x slower than 4; 4, 8 and 16 within 10 % of each other;
    64 channels: 8 outputs, 32 accumulators, spill registers in float64 and run 2x slower)."""
    taps_sum_1x1, taps_sum_1xP = _taps_sum(1, 1), _taps_sum(1, P1)
    taps_sum_2x1, taps_sum_2xP = _taps_sum(2, 1), _taps_sum(2, P2)
    taps_sum_4x1, taps_sum_4xP = _taps_sum(4, 1), _taps_sum(4, P4)
    rows_sum1, rows_sum2, rows_sum4 = _rows_sum(1), _rows_sum(2), _rows_sum(4)

    @numba.njit(inline="always")
    def _byte_pattern(flat, start):  # pragma: no cover - compiled
        """Bit j set where flat[start + j] != 0, j < 8."""
        p = 0
        for j in range(8):
            if flat[start + j] != 0:
                p |= 1 << j
        return p

    @numba.njit(inline="always")
    def _nibbles(m):  # pragma: no cover - compiled
        """The 8 nibbles of a 32-bit value, one a byte (low nibble first)."""
        m = (m | (m << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
        m = (m | (m << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
        return (m | (m << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)

    @_jit
    def pack_frame(spikes, f, packed, geom):  # pragma: no cover - compiled
        """Frame ``f`` of ``spikes`` [F, H, W, C] (0/1) -> ``packed`` (flat [Hp, Wp, G] bytes):
        group g's pattern (bit j = channel g·bits + j) at (y + pad top, x + pad left); the
        zero border is not written."""
        _, H, W, C = spikes.shape
        pt, pl, bits, Wp, G = geom[0], geom[1], geom[4], geom[5], geom[7]
        flat = spikes.reshape(-1)
        if C % 8 == 0 and (bits == 8 or bits == 4):
            # 64 spike bytes -> 8 pattern bytes by one vector compare (4-bit groups: each mask
            # half spread to one nibble a byte); rows of W·C bytes, 8 spikes at a time at the end
            n = W * C  # a pattern byte holds ``bits`` spikes
            for y in range(H):
                src = (f * H + y) * n
                dst = ((y + pt) * Wp + pl) * G
                b = 0
                while b + 64 <= n:
                    m = nonzero64(flat, src + b)
                    if bits == 8:
                        _store_u64(packed, dst + b // 8, m)
                    else:
                        _store_u64(packed, dst + b // 4, _nibbles(m & np.uint64(0xFFFFFFFF)))
                        _store_u64(packed, dst + b // 4 + 8, _nibbles(m >> np.uint64(32)))
                    b += 64
                while b < n:
                    p = _byte_pattern(flat, src + b)
                    if bits == 8:
                        packed[dst + b // bits] = p
                    else:
                        packed[dst + b // bits] = p & 15
                        packed[dst + b // bits + 1] = p >> 4
                    b += 8
            return
        for y in range(H):
            for x in range(W):
                dst = ((y + pt) * Wp + x + pl) * G
                for g in range(G):
                    c0 = g * bits
                    p = 0
                    for c in range(c0, min(C, c0 + bits)):
                        if spikes[f, y, x, c] != 0:
                            p |= 1 << (c - c0)
                    packed[dst + g] = p

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
    def _sum_taps_row(dst, dst_off, dst_step, table, packed, base, base_step, eq, et, OP,
                      count, add):  # pragma: no cover - compiled
        """``count`` outputs of one row, every (tap, group) entry: blocks of 4/2/1 chunks,
        each over the row in groups of P1/P2/P4 outputs, then one at a time."""
        n = eq.shape[0]
        nchunks = OP // LANES
        k = 0
        while k < nchunks:
            cs = 4 if nchunks - k >= 4 else (2 if nchunks - k >= 2 else 1)
            shift = LANES * k
            x = 0
            if cs == 4:
                while x + P4 <= count:
                    taps_sum_4xP(dst, dst_off + x * dst_step + shift, dst_step, table, packed,
                                 base + x * base_step, base_step, eq, et, n, OP, shift, add)
                    x += P4
            elif cs == 2:
                while x + P2 <= count:
                    taps_sum_2xP(dst, dst_off + x * dst_step + shift, dst_step, table, packed,
                                 base + x * base_step, base_step, eq, et, n, OP, shift, add)
                    x += P2
            else:
                while x + P1 <= count:
                    taps_sum_1xP(dst, dst_off + x * dst_step + shift, dst_step, table, packed,
                                 base + x * base_step, base_step, eq, et, n, OP, shift, add)
                    x += P1
            while x < count:
                if cs == 4:
                    taps_sum_4x1(dst, dst_off + x * dst_step + shift, dst_step, table, packed,
                                 base + x * base_step, base_step, eq, et, n, OP, shift, add)
                elif cs == 2:
                    taps_sum_2x1(dst, dst_off + x * dst_step + shift, dst_step, table, packed,
                                 base + x * base_step, base_step, eq, et, n, OP, shift, add)
                else:
                    taps_sum_1x1(dst, dst_off + x * dst_step + shift, dst_step, table, packed,
                                 base + x * base_step, base_step, eq, et, n, OP, shift, add)
                x += 1
            k += cs

    @_jit
    def _list_rows(offs, packed, b, eq, et, G, OP):  # pragma: no cover - compiled
        """Into ``offs``, the table rows of the nonzero groups of the output whose top-left
        pattern byte is ``b`` (compact layout); returns how many."""
        n_entries = eq.shape[0]
        n = 0
        if G % 8 == 0:
            for i in range(0, n_entries, 8):
                n = _compact8(offs, n, packed, b + eq[i], et, i, OP)
        elif G % 4 == 0:
            for i in range(0, n_entries, 4):
                n = _compact4(offs, n, packed, b + eq[i], et, i, OP)
        else:
            for i in range(n_entries):
                p = np.int64(packed[b + eq[i]])
                offs[n] = et[i] + p * OP
                n += p != 0
        return n

    @_jit
    def binary_conv_row(out, rowbase, oy, OW, OP, table, geom, packed, eq, et, offs
                        ):  # pragma: no cover - compiled
        """Output row ``oy`` of the frame packed in ``packed`` (:func:`pack_frame`):
        ``out[rowbase + ox·OP + o] +=`` its conv (OP: O padded to 16; a row's OW·OP values
        contiguous)."""
        sh, sw, Wp, compact, G = geom[2], geom[3], geom[5], geom[6], geom[7]
        q_row = oy * sh * Wp
        if compact == 0:
            _sum_taps_row(out, rowbase, OP, table, packed, q_row * G, sw * G, eq, et, OP, OW, True)
            return
        for ox in range(OW):
            n = _list_rows(offs, packed, (q_row + ox * sw) * G, eq, et, G, OP)
            _sum_rows(out, rowbase + ox * OP, table, offs, n, OP // LANES, True)

    @_jit
    def binary_conv_frames(spikes, out, table, geom, packed, eq, et, offs, acc
                           ):  # pragma: no cover - compiled
        """out [F, OH, OW, O] += conv(spikes [F, H, W, C] 0/1 · amplitude) by table look-up.

        Any argument may be a view into a larger flat buffer (``flat[a:b]``, reshaped for
        spikes and out); ``out``'s last axis may be O or O padded to 16 (a padded tile).
        ``table`` [taps · G · (2^bits + 1) · OP] (flat, 64-byte aligned is fastest); ``geom`` int64
        [pad top, pad left, stride y, stride x, bits, Wp, compact, G]; ``packed`` uint8
        [Hp · Wp · G] (zero border; scratch); ``eq``, ``et`` int64 [taps · G]: entry
        i = (tap, group g) reads the pattern byte at ``q0·G + eq[i]`` (eq = (dy·Wp + dx)·G + g)
        for the output whose top-left input is q0, and its table row at ``et[i] +
        pattern·OP``; scratch ``offs`` int64 [taps · G] and ``acc`` [OW · OP] of out's dtype.

        direct (geom[6] == 0): sums all taps·G rows (zero patterns read a zero row), 4-8
        outputs side by side; compact: each output first lists the rows of its nonzero groups
        (a vector compress-store per 4 or 8 groups when G allows, else branch-free scalar code)
        and sums only those, which pays when a row is 4+ vectors.
        """
        F = spikes.shape[0]
        _, OH, OW, O = out.shape
        sh, sw, Wp, compact, G = geom[2], geom[3], geom[5], geom[6], geom[7]
        OP = (O + LANES - 1) // LANES * LANES
        nchunks = OP // LANES
        outf = out.reshape(-1)
        direct = O == OP
        for f in range(F):
            pack_frame(spikes, f, packed, geom)
            for oy in range(OH):
                rowbase = (f * OH + oy) * OW * O
                q_row = oy * sh * Wp
                if direct:
                    binary_conv_row(outf, rowbase, oy, OW, OP, table, geom, packed, eq, et, offs)
                    continue
                if compact == 0:
                    _sum_taps_row(acc, 0, OP, table, packed, q_row * G, sw * G, eq, et, OP, OW,
                                  False)
                    for ox in range(OW):
                        for o in range(O):
                            outf[rowbase + ox * O + o] += acc[ox * OP + o]
                    continue
                for ox in range(OW):
                    n = _list_rows(offs, packed, (q_row + ox * sw) * G, eq, et, G, OP)
                    _sum_rows(acc, 0, table, offs, n, nchunks, False)
                    for o in range(O):
                        outf[rowbase + ox * O + o] += acc[o]


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
    taps: np.ndarray  # [taps, 2]: (dy·Wp + dx, table offset)
    geom: np.ndarray
    packed: np.ndarray
    eq: np.ndarray
    et: np.ndarray
    offs: np.ndarray
    acc: np.ndarray

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
        # one spare row after each group's 2^bits rows: group tables 2^bits rows apart would
        # start 4 KiB-aligned, so the same pattern's rows of all taps (the zero row above all)
        # would share one L1 set and evict each other (measured: the spare row makes 16->16
        # and 32->32 3x3 layers 10-20 % faster)
        table = np.zeros((kh * kw, g, (1 << bits) + 1, op))
        for ky in range(kh):
            for kx in range(kw):
                for gi in range(g):
                    c0, c1 = gi * bits, min(c, gi * bits + bits)
                    table[ky * kw + kx, gi, :-1, :o] = patterns[:, :c1 - c0] @ scaled[:, c0:c1, ky, kx].T
        flat = _aligned_zeros(table.size, dtype)
        flat[:] = table.reshape(-1)
        group_size = table.shape[2] * op
        hp, wp = h + pt + pb, w + pl + pr
        taps = np.array([(ky * dh * wp + kx * dw, (ky * kw + kx) * g * group_size)
                         for ky in range(kh) for kx in range(kw)], np.int64)
        if compact is None:
            compact = op > 2 * LANES
        geom = np.array([pt, pl, sh, sw, bits, wp, compact, g], np.int64)
        eq = np.array([dq * g + j for dq, _ in taps for j in range(g)], np.int64)
        et = np.array([toff + j * group_size for _, toff in taps for j in range(g)], np.int64)
        return cls((o, c, kh, kw), (h, w), (oh, ow), bits, g, flat, taps, geom,
                   np.zeros(hp * wp * g, np.uint8), eq, et, np.zeros(eq.size, np.int64),
                   _aligned_zeros(ow * op, dtype))

    @property
    def dtype(self) -> np.dtype:
        return self.table.dtype

    def accumulate(self, spikes: np.ndarray, out: np.ndarray) -> None:
        """``out`` [F, OH, OW, O] += conv(``spikes`` [F, H, W, C] (uint8 0/1) · amplitude).

        ``out`` may also have O rounded up to a multiple of 16 channels (a padded tile): the
        extra channels get zeros added."""
        o, c, _, _ = self.weight_shape
        h, w = self.in_hw
        oh, ow = self.out_hw
        if spikes.dtype != np.uint8 or spikes.ndim != 4 or spikes.shape[1:] != (h, w, c) \
                or not spikes.flags.c_contiguous:
            raise ValueError(f"spikes must be C-contiguous uint8 [F, {h}, {w}, {c}], "
                             f"got {spikes.dtype} {spikes.shape}")
        if out.dtype != self.dtype or out.shape[:3] != (spikes.shape[0], oh, ow) \
                or out.ndim != 4 or out.shape[3] not in (o, _padded(o)) \
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
        chunks = _padded(self.weight_shape[0]) // LANES
        if not self.geom[6]:
            return f * oh * ow * kh * kw * self.groups * chunks
        pt, pl, sh, sw, bits, wp = (int(v) for v in self.geom[:6])
        h, w = self.in_hw
        hp = self.packed.size // (wp * self.groups)
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
        return self.table, self.geom, self.packed, self.eq, self.et, self.offs, self.acc

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
