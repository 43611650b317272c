"""Event-driven synaptic kernels: Conv/Gemm/MatMul that pay for the inputs that fired.

A spiking layer's input is mostly zeros (5-15 % of neurons fire per step on converted nets).
The dense path multiplies every input by its weights; the event kernels find the nonzero inputs
(16 at a time, with one vector compare) and add ``value x weight row`` into the outputs they
reach: for a Conv, the output tile of one sample-step is kept channel-last
([OH*OW, O padded to 16]) so that each tap of each event is one 16-lane vector update of
contiguous memory, and on stride-1 rows the taps of one kernel row form one contiguous run
(weights stored with the kernel columns reversed). Work is proportional to
events x fan-out, not to neurons x fan-in.

Which path runs is chosen per layer at run time (``mode="auto"``): after a warm-up call, a layer
times the dense kernel and the event kernel on the same input on three calls (and the event
kernel's fixed cost on an empty input), which gives the input density below which events are
faster; later calls compare the layer's last measured density with it. Float32 results differ from the dense
path only by summation order; in float64 spike counts are identical (asserted in tests and in
``benchmarks/bench_speed.py``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import torch

from ..ops.base import explicit_pads

try:
    import numba
    from numba import uint64

    from .simd import LANES, axpy16, lowest_bit, nonzero16
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

MODES = ("auto", "event", "dense")


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")

    @numba.njit(nogil=True, boundscheck=False, error_model="numpy", inline="always")
    def _fired(x, start, left):  # pragma: no cover - compiled
        """Bit mask of the nonzero inputs among x[start:start+16] (fewer when ``left`` < 16)."""
        if left >= 16:
            return nonzero16(x, start)
        mask = uint64(0)
        for j in range(left):
            if x[uint64(start + j)] != 0:
                mask |= uint64(1) << uint64(j)
        return mask

    @_jit
    def _conv_events(x, wt, bias, out, ymap, xmap, xrun, rowcol, tile, C, H, W, O, OP, KH, KW, OH,
                     OW, runs):  # pragma: no cover - compiled
        """x [N*C*H*W] -> out [N*O*OH*OW] (flat, NCHW); wt [C*KH*KW*OP] (kernel columns reversed
        when ``runs``); rowcol [H*W, 2]: (row, column) of each input position (a table instead of
        an integer division per event); returns the number of nonzero inputs."""
        hw = H * W
        n_samples = x.size // (C * hw)
        plane = OH * OW
        nnz = 0
        for n in range(n_samples):
            for p in range(plane):
                for o in range(OP):
                    tile[uint64(p * OP + o)] = bias[o]
            for c in range(C):
                base = (n * C + c) * hw
                q0 = 0
                while q0 < hw:
                    mask = _fired(x, base + q0, hw - q0)
                    while mask:
                        q = q0 + lowest_bit(mask)
                        mask &= mask - uint64(1)
                        a = x[uint64(base + q)]
                        nnz += 1
                        iy = rowcol[q, 0]
                        ix = rowcol[q, 1]
                        for ky in range(KH):
                            oy = ymap[ky, iy]
                            if oy < 0:
                                continue
                            wrow = (c * KH + ky) * KW
                            if runs:
                                length = xrun[ix, 1] * OP
                                tb = (oy * OW + xrun[ix, 2]) * OP
                                wb = (wrow + xrun[ix, 0]) * OP
                                for o0 in range(0, length, 16):
                                    axpy16(tile, tb + o0, wt, wb + o0, a)
                            else:
                                for kx in range(KW):
                                    ox = xmap[kx, ix]
                                    if ox < 0:
                                        continue
                                    tb = (oy * OW + ox) * OP
                                    wb = (wrow + kx) * OP
                                    for o0 in range(0, OP, 16):
                                        axpy16(tile, tb + o0, wt, wb + o0, a)
                    q0 += 16
            ob = n * O * plane
            for p0 in range(0, plane, 16):  # transpose 16 positions at a time: their tile lines
                p1 = min(plane, p0 + 16)    # stay in L1 while every channel reads them
                for o in range(O):
                    for p in range(p0, p1):
                        out[uint64(ob + o * plane + p)] = tile[uint64(p * OP + o)]
        return nnz

    @_jit
    def _gemm_events(x, wt, bias, out, K, M, MP, tile):  # pragma: no cover - compiled
        """x [N*K] -> out [N*M] (flat); wt [K*MP]; returns the number of nonzero inputs."""
        n_rows = x.size // K
        nnz = 0
        for n in range(n_rows):
            for m in range(MP):
                tile[m] = bias[m]
            base = n * K
            q0 = 0
            while q0 < K:
                mask = _fired(x, base + q0, K - q0)
                while mask:
                    k = q0 + lowest_bit(mask)
                    mask &= mask - uint64(1)
                    nnz += 1
                    a = x[uint64(base + k)]
                    for m0 in range(0, MP, 16):
                        axpy16(tile, m0, wt, k * MP + m0, a)
                q0 += 16
            for m in range(M):
                out[uint64(n * M + m)] = tile[m]
        return nnz


def available() -> bool:
    return numba is not None


def _padded(n: int) -> int:
    return -(-n // LANES) * LANES


def _aligned_zeros(n: int, dtype) -> np.ndarray:
    """Zeros starting on a 64-byte boundary, so that each 16-lane float32 row is one cache line."""
    itemsize = np.dtype(dtype).itemsize
    buf = np.zeros(n + 64 // itemsize, dtype)
    start = (-buf.ctypes.data % 64) // itemsize
    return buf[start:start + n]


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    out = _aligned_zeros(a.size, a.dtype)
    out[:] = a.reshape(-1)
    return out


def _tap_maps(size: int, out_size: int, k: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """m[tap, i]: the output index input ``i`` reaches through kernel tap ``tap``, or -1."""
    m = np.full((k, size), -1, np.int64)
    for i in range(size):
        for tap in range(k):
            t = i + pad - tap * dil
            if t >= 0 and t % stride == 0 and t // stride < out_size:
                m[tap, i] = t // stride
    return m


def _column_runs(xmap: np.ndarray) -> np.ndarray:
    """Stride-1, dilation-1 rows: the taps of input column i reach consecutive outputs; returns
    (first reversed tap, number of taps, first output) per column, for reversed-column weights."""
    k, size = xmap.shape
    runs = np.zeros((size, 3), np.int64)
    for i in range(size):
        taps = [t for t in range(k) if xmap[t, i] >= 0]
        if taps:
            runs[i] = (k - 1 - taps[-1], len(taps), xmap[taps[-1], i])
    return runs


@dataclass
class _Plan:
    """A node's event kernel with its weights laid out for it (valid for ``key``)."""
    key: tuple
    call: Callable[[np.ndarray], tuple[np.ndarray, int]]
    out_shape: Callable[[int], tuple]


MEASUREMENTS = 3
"""Calls on which a layer times both paths (after one warm-up call); the median of their
break-even densities decides."""

DENSITY_EVERY = 8
"""While a layer runs dense, its input density is re-measured every this many calls."""


@dataclass
class _Choice:
    """Per-node run-time choice between the dense and the event path."""
    break_even: float | None = None  # input density below which events are faster
    density: float = 1.0  # last measured input density
    calls: int = 0
    estimates: list = field(default_factory=list)


class EventSynapses:
    """Runs Conv/Gemm/MatMul nodes on spiking inputs as events when that is faster.

    ``mode``: "auto" measures each layer once and then picks by its input density; "event"
    always uses the event kernel where one exists; "dense" never does.
    """

    def __init__(self, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"synapses must be one of {MODES}")
        self.mode = mode
        self._plans: dict[str, _Plan] = {}
        self._choices: dict[str, _Choice] = {}
        self.calls: dict[str, list[int]] = {}  # node -> [event calls, dense calls]

    # ----------------------------------------------------------------- choice
    def run(self, node: onnx.NodeProto, attrs: dict, args: list, dense: Callable[[], torch.Tensor]
            ) -> torch.Tensor:
        """The node's output: the event kernel's or ``dense()``'s, per ``mode``."""
        plan = None if self.mode == "dense" or not available() else self._plan(node, attrs, args)
        counts = self.calls.setdefault(node.name, [0, 0])
        if plan is None:
            counts[1] += 1
            return dense()
        x = args[0].detach().contiguous()
        if self.mode == "event":
            counts[0] += 1
            return self._event(plan, x)[0]
        choice = self._choices.setdefault(node.name, _Choice())
        if choice.break_even is None:
            if choice.calls == 0:  # first call: sessions, caches and kernels warm up
                choice.calls += 1
                counts[1] += 1
                return dense()
            return self._measure(plan, choice, x, dense, counts)
        choice.calls += 1
        if choice.density < choice.break_even:
            counts[0] += 1
            y, nnz = self._event(plan, x)
            choice.density = nnz / max(1, x.numel())
            return y
        counts[1] += 1
        if choice.calls % DENSITY_EVERY == 0:
            choice.density = int(torch.count_nonzero(x)) / max(1, x.numel())
        return dense()

    def _measure(self, plan: _Plan, choice: _Choice, x: torch.Tensor, dense, counts) -> torch.Tensor:
        """Time both paths on this input, twice each in alternating order (and the event
        kernel's fixed cost on an empty input), in CPU time so that other processes on the
        machine do not bias the choice."""
        def cpu(fn):
            t0 = time.process_time()
            result = fn()
            return time.process_time() - t0, result

        t_dense, y = cpu(dense)
        t_event, (_, nnz) = cpu(lambda: self._event(plan, x))
        t_event = min(t_event, cpu(lambda: self._event(plan, x))[0])
        t_dense = min(t_dense, cpu(dense)[0])
        empty = torch.zeros_like(x)
        t_fixed = cpu(lambda: self._event(plan, empty))[0]
        density = nnz / max(1, x.numel())
        per_density = (t_event - t_fixed) / density if density > 0 else 0.0
        if t_fixed >= t_dense:
            estimate = 0.0
        elif per_density <= 0:
            estimate = 1.01
        else:
            estimate = (t_dense - t_fixed) / per_density
        choice.estimates.append(estimate)
        if len(choice.estimates) >= MEASUREMENTS:
            choice.break_even = float(np.median(choice.estimates))
        choice.density = density
        choice.calls += 1
        counts[1] += 1
        return y

    def _event(self, plan: _Plan, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        flat = x.numpy().reshape(-1)
        out, nnz = plan.call(flat)
        return torch.from_numpy(out).view(plan.out_shape(x.shape[0])), nnz

    def summary(self) -> dict[str, dict]:
        """Per node: calls on each path, the measured break-even density and last density."""
        out = {}
        for name, (events, dense) in self.calls.items():
            c = self._choices.get(name)
            out[name] = {"event_calls": events, "dense_calls": dense,
                         "break_even": None if c is None else c.break_even,
                         "density": None if c is None else c.density}
        return out

    # ------------------------------------------------------------------ plans
    def _plan(self, node: onnx.NodeProto, attrs: dict, args: list) -> _Plan | None:
        x = args[0]
        if x is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return None
        consts = args[1:]
        if any(c is not None and (c.device.type != "cpu" or c.dtype != x.dtype) for c in consts):
            return None
        key = (x.dtype, tuple(x.shape[1:]),
               tuple((id(c), c._version) if c is not None else None for c in consts))
        plan = self._plans.get(node.name)
        if plan is not None and plan.key == key:
            return plan
        build = {"Conv": _conv_plan, "Gemm": _gemm_plan, "MatMul": _matmul_plan}[node.op_type]
        plan = build(key, attrs, x, consts)
        if plan is None:
            return None
        self._plans[node.name] = plan
        return plan


def _conv_plan(key: tuple, attrs: dict, x: torch.Tensor, consts: list) -> _Plan | None:
    w = consts[0]
    b = consts[1] if len(consts) > 1 else None
    if x.dim() != 4 or w.dim() != 4 or attrs.get("group", 1) != 1:
        return None
    _, c_in, h, wd = x.shape
    o, c_w, kh, kw = w.shape
    if c_w != c_in:
        return None
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pads = explicit_pads(attrs, [h, wd], [kh, kw])
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        return None
    dtype = np.float64 if x.dtype == torch.float64 else np.float32
    op = _padded(o)
    weights = np.zeros((c_in, kh, kw, op), dtype)
    weights[..., :o] = w.detach().numpy().transpose(1, 2, 3, 0)
    ymap = _tap_maps(h, oh, kh, sh, pads[0], dh)
    xmap = _tap_maps(wd, ow, kw, sw, pads[1], dw)
    runs = sw == 1 and dw == 1
    xrun = _column_runs(xmap) if runs else np.zeros((wd, 3), np.int64)
    if runs:
        weights = np.ascontiguousarray(weights[:, :, ::-1])
    weights = _aligned_copy(weights)
    bias = np.zeros(op, dtype)
    if b is not None:
        bias[:o] = b.detach().numpy()
    tile = _aligned_zeros(oh * ow * op, dtype)
    rowcol = np.stack(np.divmod(np.arange(h * wd, dtype=np.int64), wd), axis=1)

    def call(flat: np.ndarray) -> tuple[np.ndarray, int]:
        n = flat.size // (c_in * h * wd)
        out = np.empty(n * o * oh * ow, dtype)
        nnz = _conv_events(flat, weights, bias, out, ymap, xmap, xrun, rowcol, tile, c_in, h, wd,
                           o, op, kh, kw, oh, ow, runs)
        return out, nnz

    return _Plan(key, call, lambda n: (n, o, oh, ow))


def _dense_plan(key: tuple, x: torch.Tensor, weight_km: torch.Tensor, bias: torch.Tensor | None
                ) -> _Plan | None:
    """x [N, K] @ weight [K, M] + bias (numel M or 1)."""
    if x.dim() != 2 or weight_km.dim() != 2 or x.shape[1] != weight_km.shape[0]:
        return None
    k, m = weight_km.shape
    if bias is not None and bias.numel() not in (1, m):
        return None
    dtype = np.float64 if x.dtype == torch.float64 else np.float32
    mp = _padded(m)
    weights = np.zeros((k, mp), dtype)
    weights[:, :m] = weight_km.detach().numpy()
    weights = _aligned_copy(weights)
    bvec = np.zeros(mp, dtype)
    if bias is not None:
        bvec[:m] = np.broadcast_to(bias.detach().numpy().reshape(-1), (m,))
    tile = _aligned_zeros(mp, dtype)

    def call(flat: np.ndarray) -> tuple[np.ndarray, int]:
        out = np.empty(flat.size // k * m, dtype)
        nnz = _gemm_events(flat, weights, bvec, out, k, m, mp, tile)
        return out, nnz

    return _Plan(key, call, lambda n: (n, m))


def _gemm_plan(key: tuple, attrs: dict, x: torch.Tensor, consts: list) -> _Plan | None:
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    w = consts[0]
    bias = consts[1] if len(consts) > 1 else None
    if w is None or w.dim() != 2:
        return None
    return _dense_plan(key, x, w.t() if attrs.get("transB", 0) else w, bias)


def _matmul_plan(key: tuple, attrs: dict, x: torch.Tensor, consts: list) -> _Plan | None:
    w = consts[0]
    if w is None:
        return None
    return _dense_plan(key, x, w, None)
