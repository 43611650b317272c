"""Soft-reset integrate-and-fire neuron for ANN-to-SNN conversion, with pipelined resets.

Each step: (optionally) v := v_init when ``time_step % reset_interval == reset_offset``;
v = v*(1-dv) + a_in + bias; s = v >= vth; v -= s*vth ("subtract") or v[s] = 0 ("zero").
Spikes are sent as 0/1. ``spike_count`` counts spikes in the ``count_window`` steps that
follow each reset (all steps when ``reset_interval`` is 0); outside that window nothing is sent,
so what a sample's network does after its T steps never reaches the next sample's window
(through delay synapses it otherwise could).
``bias`` and ``bias_exp`` may carry a leading bank axis (each its own number of banks): the k-th
reset window uses bank k (the last bank after that); with ``bank_steps`` S > 1 the banks come
S per window, one per step (phase p of window k uses bank k*S + min(p, S-1)): per-step input
currents (frames, spike trains, rate codes; see :mod:`..inputs`) enter this way. A multi-batch evaluation preloads every batch's input current this way:
Lava's Var.set moves one element per message, so setting 10^6 biases between batches costs
tens of seconds, while a bank switch at reset costs nothing. For the same reason, with
``pack_counts`` the per-neuron counts of each window are also packed, 53 // bits of them per
float64 element of ``packed_counts`` (8 at T=32), so reading them back costs 8x fewer messages.
The fixed_pt model uses Lava LIF's integer scaling: a_in << 6, vth << 6, bias_mant << bias_exp,
12-bit decay rounded toward zero, v saturated to 24 bits.
"""
import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


def pack_layout(window: int) -> tuple[int, int]:
    """(bits per count, counts per float64 element) for counts of at most ``window``."""
    bits = max(1, int(window).bit_length())
    return bits, 53 // bits


def pack(counts: np.ndarray, words: int, window: int) -> np.ndarray:
    """Counts in [0, window] -> ``words`` float64 elements (exact: every word is below 2^53)."""
    bits, k = pack_layout(window)
    c = np.zeros(words * k, np.int64)
    c[:counts.size] = counts.reshape(-1)
    return (c.reshape(-1, k) << (bits * np.arange(k, dtype=np.int64))).sum(axis=1).astype(np.float64)


def unpack_counts(packed: np.ndarray, size: int, window: int) -> np.ndarray:
    """Inverse of the packing done at the end of each window: ``size`` int64 counts."""
    bits, k = pack_layout(window)
    words = np.asarray(packed).astype(np.int64).reshape(-1, 1)
    fields = (words >> (bits * np.arange(k, dtype=np.int64))) & ((1 << bits) - 1)
    return fields.reshape(-1)[:size]


class IF(AbstractProcess):
    """Soft- or hard-reset IF/LIF neurons; vth, bias, bias_exp and v_init are per neuron."""

    def __init__(self, *, shape, vth=1.0, bias=0, bias_exp=0, v_init=0, dv=0,
                 reset_zero=False, reset_interval=0, reset_offset=0, count_window=0,
                 batch=1, batch_axis=0, pack_counts=False, bank_steps=1, name=None):
        super().__init__(shape=shape, name=name)
        full = lambda x: np.broadcast_to(np.asarray(x), shape).copy()  # noqa: E731
        banked = lambda x: (np.asarray(x).copy() if np.ndim(x) == len(shape) + 1  # noqa: E731
                            else np.broadcast_to(np.asarray(x), (1,) + tuple(shape)).copy())
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=full(v_init))
        self.v_init = Var(shape=shape, init=full(v_init))
        self.vth = Var(shape=shape, init=full(vth))
        bias, bias_exp = banked(bias), banked(bias_exp)
        self.bias = Var(shape=bias.shape, init=bias)
        self.bias_exp = Var(shape=bias_exp.shape, init=bias_exp)
        self.bank_steps = Var(shape=(1,), init=max(1, int(bank_steps)))
        self.spike_count = Var(shape=shape, init=np.zeros(shape, np.int32))
        self.sample_count = Var(shape=(batch,), init=np.zeros(batch, np.int64))
        self.batch_axis = Var(shape=(1,), init=int(batch_axis))
        self.dv = Var(shape=(1,), init=dv)
        self.reset_zero = Var(shape=(1,), init=int(bool(reset_zero)))
        self.reset_interval = Var(shape=(1,), init=int(reset_interval))
        self.reset_offset = Var(shape=(1,), init=int(reset_offset))
        self.count_window = Var(shape=(1,), init=int(count_window))
        words = -(-int(np.prod(shape)) // pack_layout(count_window)[1]) if pack_counts else 1
        self.pack_counts = Var(shape=(1,), init=int(bool(pack_counts)))
        self.packed_counts = Var(shape=(words,), init=np.zeros(words))


class _IFBase(PyLoihiProcessModel):
    def _count(self, s):
        """Add spikes to the per-neuron and per-sample counters (batch along ``batch_axis``)."""
        self.spike_count[:] += s
        b = self.sample_count.shape[0]
        moved = np.moveaxis(s, int(self.batch_axis[0]), 0)
        self.sample_count[:] += moved.reshape(b, -1).sum(axis=1)
        if self.pack_counts[0] and self._window_end:
            self.packed_counts[:] = pack(self.spike_count, self.packed_counts.shape[0],
                                         int(self.count_window[0]))

    def _bank(self, banks) -> np.ndarray:
        """The bank of ``banks`` (bias or bias_exp) for the current reset window and step."""
        if banks.shape[0] == 1:
            return banks[0]
        interval = int(self.reset_interval[0])
        steps = int(self.bank_steps[0])
        rel = self.time_step - int(self.reset_offset[0])
        k, phase = (max(0, rel) // interval, max(0, rel) % interval) if interval > 0 else (0, rel)
        windows = banks.shape[0] // steps
        return banks[min(k, windows - 1) * steps + min(max(phase, 0), steps - 1)]

    _window_end = False

    def _reset_and_window(self):
        """Apply a pipelined reset if due; return whether this step counts spikes."""
        interval = int(self.reset_interval[0])
        if interval <= 0:
            return True
        phase = (self.time_step - int(self.reset_offset[0])) % interval
        if phase == 0:
            self.v[:] = self.v_init
            self.spike_count[:] = 0
            self.sample_count[:] = 0
        window = int(self.count_window[0])
        self._window_end = phase == window - 1
        return window <= 0 or phase < window


@implements(proc=IF, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyIFFloat(_IFBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    v_init: np.ndarray = LavaPyType(np.ndarray, float)
    vth: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    bias_exp: np.ndarray = LavaPyType(np.ndarray, int)
    bank_steps: np.ndarray = LavaPyType(np.ndarray, int)
    spike_count: np.ndarray = LavaPyType(np.ndarray, np.int32)
    sample_count: np.ndarray = LavaPyType(np.ndarray, np.int64)
    batch_axis: np.ndarray = LavaPyType(np.ndarray, int)
    dv: np.ndarray = LavaPyType(np.ndarray, float)
    reset_zero: np.ndarray = LavaPyType(np.ndarray, int)
    reset_interval: np.ndarray = LavaPyType(np.ndarray, int)
    reset_offset: np.ndarray = LavaPyType(np.ndarray, int)
    count_window: np.ndarray = LavaPyType(np.ndarray, int)
    pack_counts: np.ndarray = LavaPyType(np.ndarray, int)
    packed_counts: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self):
        counting = self._reset_and_window()
        a = self.a_in.recv()
        dv = float(self.dv[0])
        v = self.v * (1.0 - dv) if dv else self.v
        v = v + a + self._bank(self.bias)
        s = v >= self.vth
        if self.reset_zero[0]:
            v[s] = 0.0
        else:
            v = v - self.vth * s
        self.v[:] = v
        if counting:
            self._count(s)
        self.s_out.send(s.astype(float) if counting else np.zeros(s.shape))


@implements(proc=IF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyIFFixed(_IFBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    v_init: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    vth: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=17)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=13)
    bias_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=3)
    bank_steps: np.ndarray = LavaPyType(np.ndarray, int)
    spike_count: np.ndarray = LavaPyType(np.ndarray, np.int32)
    sample_count: np.ndarray = LavaPyType(np.ndarray, np.int64)
    batch_axis: np.ndarray = LavaPyType(np.ndarray, int)
    dv: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=12)
    reset_zero: np.ndarray = LavaPyType(np.ndarray, int)
    reset_interval: np.ndarray = LavaPyType(np.ndarray, int)
    reset_offset: np.ndarray = LavaPyType(np.ndarray, int)
    count_window: np.ndarray = LavaPyType(np.ndarray, int)
    pack_counts: np.ndarray = LavaPyType(np.ndarray, int)
    packed_counts: np.ndarray = LavaPyType(np.ndarray, float)

    V_MAX = (1 << 23) - 1

    def run_spk(self):
        counting = self._reset_and_window()
        a = self.a_in.recv()
        dv = int(self.dv[0])
        # int32 is exact while |v| < 2^23, |a << 6| < 2^30 and |bias| < 2^20 (13-bit mantissa,
        # exponent <= 7); a fan-in of many synapses or a leak product needs int64
        wide = dv or np.abs(a).max(initial=0) >= 1 << 24
        dt = np.int64 if wide else np.int32
        v = self.v.astype(dt)
        if dv:
            d = v * (4096 - dv)
            v = np.sign(d) * np.right_shift(np.abs(d), 12)
        v += np.left_shift(a.astype(dt), 6)
        v += np.left_shift(self._bank(self.bias).astype(dt), self._bank(self.bias_exp).astype(dt))
        np.clip(v, -self.V_MAX, self.V_MAX, out=v)
        vth = np.left_shift(self.vth.astype(dt), 6)
        s = v >= vth
        if self.reset_zero[0]:
            v[s] = 0
        else:
            v -= vth * s
        self.v[:] = v
        if counting:
            self._count(s)
        self.s_out.send(s.astype(np.int32) if counting else np.zeros(s.shape, np.int32))
