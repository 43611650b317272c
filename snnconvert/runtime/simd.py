"""Explicit 16-lane vector operations for the numba event kernels (LLVM intrinsics).

numba cannot tell LLVM that two arrays do not alias, so a short scatter loop like
``tile[i:i + 16] += a * w[j:j + 16]`` stays scalar or falls into a scalar remainder when the
vectorizer picks 64-wide blocks. These helpers emit one ``<16 x float>`` (or double) load,
multiply-add and store, so each synaptic row update is a handful of vector instructions.
"""
from __future__ import annotations

from llvmlite import ir as llir
from numba import types
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
