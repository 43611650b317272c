"""Explicit 16-lane vector operations for the numba event kernels (LLVM intrinsics).

numba cannot tell LLVM that two arrays do not alias, so a short scatter loop like
``tile[i:i + 16] += a * w[j:j + 16]`` stays scalar or falls into a scalar remainder when the
vectorizer picks 64-wide blocks. These helpers emit one ``<16 x float>`` (or double) load,
multiply-add and store, so each synaptic row update is a handful of vector instructions.
"""
from __future__ import annotations

from llvmlite import ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16
"""Elements per vector operation; kernels pad their output channels to a multiple of this."""


def _vector_pointer(context, builder, array_type, array, offset):
    data = context.make_array(array_type)(context, builder, array).data
    elt = context.get_data_type(array_type.dtype)
    vec = llir.VectorType(elt, LANES)
    return builder.bitcast(builder.gep(data, [offset]), vec.as_pointer()), vec, \
        elt.get_abi_size(context.target_data)


@intrinsic
def axpy16(typingctx, dst, dst_offset, src, src_offset, scale):
    """``dst[dst_offset:dst_offset+16] += scale * src[src_offset:src_offset+16]`` (same dtype)."""
    sig = types.void(dst, types.intp, src, types.intp, dst.dtype)

    def codegen(context, builder, signature, args):
        dv, do, sv, so, a = args
        dp, vec, size = _vector_pointer(context, builder, signature.args[0], dv, do)
        sp, _, _ = _vector_pointer(context, builder, signature.args[2], sv, so)
        d = builder.load(dp, align=size)
        s = builder.load(sp, align=size)
        splat = builder.insert_element(llir.Constant(vec, None), a, llir.Constant(llir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, llir.Constant(vec, None),
                                       llir.Constant(llir.VectorType(llir.IntType(32), LANES), [0] * LANES))
        builder.store(builder.fadd(d, builder.fmul(s, splat)), dp, align=size)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def nonzero16(typingctx, array, offset):
    """Bit mask (uint64, bit j for element offset+j) of the nonzero elements among 16."""
    sig = types.uint64(array, types.intp)

    def codegen(context, builder, signature, args):
        p, vec, size = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        x = builder.load(p, align=size)
        mask = builder.fcmp_unordered("!=", x, llir.Constant(vec, None))
        return builder.zext(builder.bitcast(mask, llir.IntType(LANES)), llir.IntType(64))

    return sig, codegen


@intrinsic
def lowest_bit(typingctx, mask):
    """Index of the lowest set bit of a nonzero uint64."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], llir.Constant(llir.IntType(1), 1))

    return sig, codegen


BYTE_LANES = 64
"""Bytes :func:`nonzero64` tests at once (one 512-bit compare)."""


@intrinsic
def nonzero64(typingctx, array, offset):
    """Bit mask (uint64, bit j for byte offset+j) of the nonzero bytes among 64 of a uint8
    array (the 64 bytes must lie inside the array's buffer)."""
    sig = types.uint64(array, types.intp)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        vec = llir.VectorType(llir.IntType(8), BYTE_LANES)
        p = builder.bitcast(builder.gep(data, [args[1]]), vec.as_pointer())
        x = builder.load(p, align=1)
        mask = builder.icmp_unsigned("!=", x, llir.Constant(vec, None))
        return builder.bitcast(mask, llir.IntType(BYTE_LANES))

    return sig, codegen




@intrinsic
def neuron16(typingctx, v, v_off, tile, t_off, base, b_off, theta, th_off, decay, leaky, subtract,
             spikes, s_off, counts, c_off):
    """One IF/LIF step of 16 neurons, vectorized: ``vi = (v * decay if leaky else v) + tile``;
    fired = vi >= theta; v = vi - theta (``subtract``) or 0 where fired, else vi; spikes
    (uint8) = fired; counts (uint8) += fired; tile = base (the next step's starting current).
    Returns how many fired. The arithmetic is the scalar kernels' (no fused multiply-add)."""
    sig = types.intp(v, types.intp, tile, types.intp, base, types.intp, theta, types.intp,
                     v.dtype, types.boolean, types.boolean, spikes, types.intp, counts, types.intp)

    def codegen(context, builder, signature, args):
        (vv, vo, tv, to, bv, bo, thv, tho, dec, lk, sub, sv, so, cv, co) = args
        sa = signature.args
        vp, vec, size = _vector_pointer(context, builder, sa[0], vv, vo)
        tp, _, _ = _vector_pointer(context, builder, sa[2], tv, to)
        bp, _, _ = _vector_pointer(context, builder, sa[4], bv, bo)
        thp, _, _ = _vector_pointer(context, builder, sa[6], thv, tho)
        x = builder.load(vp, align=size)
        cur = builder.load(tp, align=size)
        th = builder.load(thp, align=size)
        builder.store(builder.load(bp, align=size), tp, align=size)
        splat = builder.insert_element(llir.Constant(vec, None), dec, llir.Constant(llir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, llir.Constant(vec, None),
                                       llir.Constant(llir.VectorType(llir.IntType(32), LANES), [0] * LANES))
        lkb = builder.trunc(lk, llir.IntType(1)) if lk.type != llir.IntType(1) else lk
        subb = builder.trunc(sub, llir.IntType(1)) if sub.type != llir.IntType(1) else sub
        x = builder.select(lkb, builder.fmul(x, splat), x)
        vi = builder.fadd(x, cur)
        fired = builder.fcmp_ordered(">=", vi, th)
        zero = llir.Constant(vec, None)
        subtracted = builder.fsub(vi, builder.select(fired, th, zero))
        zeroed = builder.select(fired, zero, vi)
        builder.store(builder.select(subb, subtracted, zeroed), vp, align=size)
        sdata = context.make_array(sa[11])(context, builder, sv).data
        bytes16 = llir.VectorType(llir.IntType(8), LANES)
        sp = builder.bitcast(builder.gep(sdata, [so]), bytes16.as_pointer())
        ones = builder.zext(fired, bytes16)
        builder.store(ones, sp, align=1)
        cdata = context.make_array(sa[13])(context, builder, cv).data
        cp = builder.bitcast(builder.gep(cdata, [co]), bytes16.as_pointer())
        builder.store(builder.add(builder.load(cp, align=1), ones), cp, align=1)
        bits = builder.bitcast(fired, llir.IntType(LANES))
        n = builder.ctpop(bits)
        return builder.zext(n, llir.IntType(64))

    return sig, codegen


def _rows_add(chunks: int):
    """Intrinsic ``rows_add(dst, dst_off, src, offs, shift, n)``: for k < ``chunks``,
    ``dst[dst_off + 16k : +16] += sum_{j<n} src[offs[j] + shift + 16k : +16]``; the sums are
    kept in registers (two independent ones, so that additions overlap) and ``dst`` is read and
    written once."""
    def codegen(context, builder, signature, args):
        dv, doff, sv, ov, shift, n = args
        dty, _, sty, oty = signature.args[:4]
        ddata = context.make_array(dty)(context, builder, dv).data
        sdata = context.make_array(sty)(context, builder, sv).data
        odata = context.make_array(oty)(context, builder, ov).data
        elt = context.get_data_type(sty.dtype)
        size = elt.get_abi_size(context.target_data)
        vec = llir.VectorType(elt, LANES)
        i64 = llir.IntType(64)
        accs = [[cgutils.alloca_once_value(builder, llir.Constant(vec, None)) for _ in range(chunks)]
                for _ in range(2)]

        def add(j, acc):
            base = builder.add(builder.load(builder.gep(odata, [j])), shift)
            for k in range(chunks):
                p = builder.gep(sdata, [builder.add(base, llir.Constant(i64, LANES * k))])
                row = builder.load(builder.bitcast(p, vec.as_pointer()), align=size)
                builder.store(builder.fadd(builder.load(acc[k]), row), acc[k])

        pairs = builder.lshr(n, llir.Constant(i64, 1))
        with cgutils.for_range(builder, pairs) as loop:
            j = builder.shl(loop.index, llir.Constant(i64, 1))
            add(j, accs[0])
            add(builder.add(j, llir.Constant(i64, 1)), accs[1])
        odd = builder.trunc(n, llir.IntType(1))
        with builder.if_then(odd):
            add(builder.sub(n, llir.Constant(i64, 1)), accs[0])
        for k in range(chunks):
            p = builder.bitcast(builder.gep(ddata, [builder.add(doff, llir.Constant(i64, LANES * k))]),
                                vec.as_pointer())
            total = builder.fadd(builder.load(accs[0][k]), builder.load(accs[1][k]))
            builder.store(builder.fadd(builder.load(p, align=size), total), p, align=size)
        return context.get_dummy_value()

    @intrinsic
    def rows_add(typingctx, dst, dst_off, src, offs, shift, n):
        return types.void(dst, types.intp, src, offs, types.intp, types.intp), codegen
    return rows_add


rows_add1, rows_add2, rows_add3, rows_add4 = (_rows_add(c) for c in (1, 2, 3, 4))
rows_add5, rows_add6, rows_add7, rows_add8 = (_rows_add(c) for c in (5, 6, 7, 8))


@intrinsic
def bytes16_sum4(typingctx, dst, dst_off, src, o1, o2, o3, o4):
    """``dst[dst_off:+16] = src[o1:+16] + src[o2:+16] + src[o3:+16] + src[o4:+16]`` (uint8):
    one 2 x 2 pooling window of 16 channels' spike counts."""
    sig = types.void(dst, types.intp, src, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        dv, do, sv, *offs = args
        ddata = context.make_array(signature.args[0])(context, builder, dv).data
        sdata = context.make_array(signature.args[2])(context, builder, sv).data
        vec = llir.VectorType(llir.IntType(8), LANES)

        def load(o):
            return builder.load(builder.bitcast(builder.gep(sdata, [o]), vec.as_pointer()), align=1)

        total = builder.add(builder.add(load(offs[0]), load(offs[1])),
                            builder.add(load(offs[2]), load(offs[3])))
        builder.store(total, builder.bitcast(builder.gep(ddata, [do]), vec.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def spikes16_add(typingctx, dst, dst_off, spikes, s_off, amp, a_off):
    """``dst[dst_off:+16] += spikes[s_off:+16] * amp[a_off:+16]`` (spikes uint8 0/1, so each
    lane adds exactly its amplitude or zero): 16 channels of a shortcut at once."""
    sig = types.void(dst, types.intp, spikes, types.intp, amp, types.intp)

    def codegen(context, builder, signature, args):
        dv, do, sv, so, av, ao = args
        sa = signature.args
        dp, vec, size = _vector_pointer(context, builder, sa[0], dv, do)
        ap, _, _ = _vector_pointer(context, builder, sa[4], av, ao)
        sdata = context.make_array(sa[2])(context, builder, sv).data
        bytes16 = llir.VectorType(llir.IntType(8), LANES)
        s = builder.load(builder.bitcast(builder.gep(sdata, [so]), bytes16.as_pointer()), align=1)
        x = builder.fmul(builder.uitofp(s, vec), builder.load(ap, align=size))
        builder.store(builder.fadd(builder.load(dp, align=size), x), dp, align=size)
        return context.get_dummy_value()

    return sig, codegen
