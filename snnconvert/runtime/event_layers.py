"""Whole-layer kernels of the event engine (:mod:`.event_engine`) for common layer kinds.

* :func:`constant_layer`: a neuron layer whose current does not change over time (the first
  layer after the time-invariant prefix: its bias plus the prefix's output). It runs
  *time-major*: four vectors of 16 neurons keep their potential and current in registers for
  all T steps (:func:`if_steps4`, four independent chains so that the step's latency is
  hidden), instead of sweeping the whole layer's potentials through the cache at every step.
  It reads the prefix's output as it is (NCHW), and writes the 2 x 2 pooled spike counts that
  the next layer reads directly (the unpooled train only when someone reads it).

The neuron arithmetic is the step-major kernel's (:func:`.simd.neuron16`), neuron by neuron,
so the spikes are bit for bit the same.
"""
from __future__ import annotations

import numpy as np

try:
    import numba
    from llvmlite import ir as llir
    from numba import types, uint64
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

LANES = 16
GROUP = 4
"""Neuron vectors that :func:`if_steps4` runs side by side."""


if numba is not None:
    @intrinsic
    def if_steps4(typingctx, stage, theta, th_off, decay, leaky, subtract, steps, spikes, soffs,
                  sstride, pooled, pstride, write, per_step, counts):
        """All ``steps`` steps of 4 vectors of 16 IF/LIF neurons with constant currents.

        stage: v of vector j at 16 j, its current at 64 + 16 j (the same dtype as theta);
        theta[th_off:+16] (all four vectors share the channels). At step t, vector j's spikes
        (uint8 0/1) go to spikes[soffs[j] + t sstride] when ``write``; their sum over the four
        to spikes[pooled + t pstride] when ``pooled`` >= 0; per_step[t] += spikes of the step;
        counts[16 j:+16] (int32) = vector j's spikes over all steps. The step is
        :func:`.simd.neuron16`'s: ``vi = (v * decay if leaky else v) + current``, fired = vi >=
        theta, v = vi - theta (``subtract``) or 0 where fired, else vi; no fused multiply-add."""
        sig = types.void(stage, theta, types.intp, stage.dtype, types.boolean, types.boolean,
                         types.intp, spikes, soffs, types.intp, types.intp, types.intp,
                         types.boolean, per_step, counts)

        def codegen(context, builder, signature, args):
            (stv, thv, tho, dec, lk, sub, steps_, spv, sov, sstr, poff, pstr, wr, psv, cntv) = args
            sa = signature.args
            elt = context.get_data_type(sa[0].dtype)
            size = elt.get_abi_size(context.target_data)
            vec = llir.VectorType(elt, LANES)
            i64, i32, i8, i1 = llir.IntType(64), llir.IntType(32), llir.IntType(8), llir.IntType(1)
            b16 = llir.VectorType(i8, LANES)
            c16 = llir.VectorType(i32, LANES)

            def data(k, v):
                return context.make_array(sa[k])(context, builder, v).data

            def flag(x):
                return builder.trunc(x, i1) if x.type != i1 else x

            sdata, tdata, spdata, sodata, psdata, cdata = (data(0, stv), data(1, thv), data(7, spv),
                                                           data(8, sov), data(13, psv), data(14, cntv))

            def vload(base, off, ty, align):
                p = builder.bitcast(builder.gep(base, [off]), ty.as_pointer())
                return builder.load(p, align=align)

            def vstore(value, base, off, align):
                p = builder.bitcast(builder.gep(base, [off]), value.type.as_pointer())
                builder.store(value, p, align=align)

            lkb, subb, wrb = flag(lk), flag(sub), flag(wr)
            th = vload(tdata, tho, vec, size)
            splat = builder.insert_element(llir.Constant(vec, None), dec, llir.Constant(i32, 0))
            dvec = builder.shuffle_vector(splat, llir.Constant(vec, None),
                                          llir.Constant(llir.VectorType(i32, LANES), [0] * LANES))
            zero = llir.Constant(vec, None)
            vs = [cgutils.alloca_once_value(builder, vload(sdata, llir.Constant(i64, 16 * j), vec, size))
                  for j in range(GROUP)]
            cur = [vload(sdata, llir.Constant(i64, 64 + 16 * j), vec, size) for j in range(GROUP)]
            cnt = [cgutils.alloca_once_value(builder, llir.Constant(c16, None)) for _ in range(GROUP)]
            offs = [builder.load(builder.gep(sodata, [llir.Constant(i64, j)])) for j in range(GROUP)]
            has_pool = builder.icmp_signed(">=", poff, llir.Constant(i64, 0))
            with cgutils.for_range(builder, steps_) as loop:
                t = loop.index
                total = llir.Constant(b16, None)
                pop = llir.Constant(i64, 0)
                for j in range(GROUP):
                    x = builder.load(vs[j])
                    x = builder.select(lkb, builder.fmul(x, dvec), x)
                    vi = builder.fadd(x, cur[j])
                    fired = builder.fcmp_ordered(">=", vi, th)
                    subtracted = builder.fsub(vi, builder.select(fired, th, zero))
                    builder.store(builder.select(subb, subtracted, builder.select(fired, zero, vi)), vs[j])
                    ones = builder.zext(fired, b16)
                    with builder.if_then(wrb):
                        vstore(ones, spdata, builder.add(offs[j], builder.mul(t, sstr)), 1)
                    total = builder.add(total, ones)
                    builder.store(builder.add(builder.load(cnt[j]), builder.zext(fired, c16)), cnt[j])
                    pop = builder.add(pop, builder.zext(builder.ctpop(builder.bitcast(fired, llir.IntType(LANES))), i64))
                with builder.if_then(has_pool):
                    vstore(total, spdata, builder.add(poff, builder.mul(t, pstr)), 1)
                pp = builder.gep(psdata, [t])
                builder.store(builder.add(builder.load(pp), pop), pp)
            for j in range(GROUP):
                vstore(builder.load(cnt[j]), cdata, llir.Constant(i64, 16 * j), 4)
            return context.get_dummy_value()

        return sig, codegen

    _jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")

    @_jit
    def constant_layer(trains, consts, base, bstep, v0, theta, decay, leaky, subtract, steps,
                       height, width, channels, out, out_stride, write_out, pool, pooled,
                       pooled_stride, counts, counts_off, per_step, n_samples, stage, soffs,
                       c32):  # pragma: no cover - compiled
        """All ``steps`` steps of a layer with a constant current, for ``n_samples`` samples.

        consts: the prefix's output [samples, channels, height*width] (flat; empty: none), added
        to base (the bias: [op] with ``bstep`` 0, or [hw, op] with ``bstep`` op); v0 [hw *
        channels] (channel-last); theta [channels]; ``channels`` a multiple of 16. With
        ``write_out``, the spikes go to the train at ``out`` ([samples, steps, hw, channels],
        ``out_stride`` bytes per sample); with ``pool`` 2 (height, width even), the 2 x 2,
        stride-2 sums of the spikes go to the train at ``pooled``. counts (int32, from
        ``counts_off``, [samples, hw * channels]) += each neuron's spikes; per_step [steps] +=
        the spikes of each step. stage (64-byte aligned, 128 elements), soffs (int64, 4), c32
        (int32, 64): scratch."""
        hw = height * width
        n = hw * channels
        has_consts = consts.size > 0
        pw = width // 2
        groups = hw // GROUP if pool == 1 else (height // 2) * pw
        pos = np.zeros(GROUP, np.int64)
        poff = -1
        for b in range(n_samples):
            cb = counts_off + b * n
            ob = out + b * out_stride
            pb = pooled + b * pooled_stride
            for g in range(groups):
                if pool == 1:
                    for j in range(GROUP):
                        pos[j] = g * GROUP + j
                    poff = -1
                else:
                    py, px = g // pw, g % pw
                    p0 = py * 2 * width + px * 2
                    pos[0], pos[1], pos[2], pos[3] = p0, p0 + 1, p0 + width, p0 + width + 1
                for o in range(0, channels, LANES):
                    for j in range(GROUP):
                        p = pos[j]
                        for ln in range(LANES):
                            cur = base[uint64(p * bstep + o + ln)]
                            if has_consts:
                                cur = cur + consts[uint64((b * channels + o + ln) * hw + p)]
                            stage[16 * j + ln] = v0[uint64(p * channels + o + ln)]
                            stage[64 + 16 * j + ln] = cur
                        soffs[j] = ob + p * channels + o
                    if pool != 1:
                        poff = pb + g * channels + o
                    if_steps4(stage, theta, o, decay, leaky, subtract, steps, trains, soffs, n,
                              poff, pooled_stride // steps, write_out, per_step, c32)
                    for j in range(GROUP):
                        c0 = cb + pos[j] * channels + o
                        for ln in range(LANES):
                            counts[uint64(c0 + ln)] += c32[16 * j + ln]


def available() -> bool:
    return numba is not None


def supports_constant_layer(channels: int, pool: int, height: int, width: int) -> bool:
    """Whether :func:`constant_layer` runs this layer: whole 16-channel vectors, and groups of
    four positions (a fused pool is 2 x 2; without, the positions come four at a time)."""
    if channels % LANES:
        return False
    if pool == 2:
        return height % 2 == 0 and width % 2 == 0
    return pool == 1 and (height * width) % GROUP == 0
