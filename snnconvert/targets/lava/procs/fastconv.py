"""Fast CPU models for Lava's Conv process: sliding windows + one tensordot per group.

Same semantics as lava.proc.conv (true convolution in WHC layout, (W, H) parameter order,
symmetric padding, stride, dilation, groups); selected through ``exception_proc_model_map``
so the emitted graph is unchanged. The stock model loops convolve2d over channel pairs.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.process import Conv


def conv_whc(x, weight, stride, padding, dilation, groups):
    """Lava-convention convolution of x (W, H, C_in) with weight (C_out, kW, kH, C_in/g)."""
    c_out, kw, kh, cg = weight.shape
    if padding[0] or padding[1]:
        x = np.pad(x, ((padding[0], padding[0]), (padding[1], padding[1]), (0, 0)))
    # correlation with the flipped kernel == Lava's true convolution
    wf = weight[:, ::-1, ::-1, :]
    ew, eh = dilation[0] * (kw - 1) + 1, dilation[1] * (kh - 1) + 1
    win = sliding_window_view(x, (ew, eh), axis=(0, 1))
    win = win[::stride[0], ::stride[1], :, ::dilation[0], ::dilation[1]]  # (Wo, Ho, C, kw, kh)
    wo, ho = win.shape[:2]
    og = c_out // groups
    if groups == 1:
        return np.tensordot(win, wf, axes=([2, 3, 4], [3, 1, 2]))
    period = tile_period(weight, groups)
    reps = groups // period
    # groups repeating with ``period`` (a kernel tiled per sample): one matmul for all repeats
    win = win.reshape(wo, ho, reps, period, cg, kw, kh)
    wg = wf[:period * og].reshape(period, og, kw, kh, cg)
    if period == 1:
        cols = win.reshape(wo * ho * reps, cg * kw * kh)
        out = cols @ wg[0].transpose(3, 1, 2, 0).reshape(cg * kw * kh, og)
    elif og == 1 and cg == 1:
        out = np.einsum("xyrpij,pij->xyrp", win[:, :, :, :, 0], wg[:, 0, :, :, 0], optimize=True)
    else:
        out = np.einsum("xyrpcij,poijc->xyrpo", win, wg, optimize=True)
    return out.reshape(wo, ho, c_out)


_PERIODS: dict = {}


def tile_period(weight, groups):
    """Smallest p dividing ``groups`` such that the grouped kernel repeats every p groups."""
    key = (id(weight), weight.shape, groups)
    if key not in _PERIODS:
        g = weight.reshape((groups, -1))
        for p in range(1, groups + 1):
            if groups % p == 0 and np.array_equal(g, np.tile(g[:p], (groups // p, 1))):
                _PERIODS.clear()
                _PERIODS[key] = p
                break
    return _PERIODS[key]


class _ConvEinsumBase(PyLoihiProcessModel):
    def run_spk(self):
        self.a_out.send(self.a_buf)
        s = self.s_in.recv()
        if int(self.num_message_bits[0]) == 0:
            s = s.astype(bool)
        w = self._weight()
        out = conv_whc(s.astype(w.dtype), w, tuple(self.stride),
                       tuple(self.padding), tuple(self.dilation), int(self.groups[0]))
        self.a_buf = self._clamp(out)

    def _weight(self):
        return self.weight

    def _clamp(self, x):
        return x


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyConvEinsumFloat(_ConvEinsumBase):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    a_buf: np.ndarray = LavaPyType(np.ndarray, float)
    weight: np.ndarray = LavaPyType(np.ndarray, float)
    kernel_size: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    stride: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    padding: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    dilation: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    groups: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)
    weight_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    num_weight_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyConvEinsumFixed(_ConvEinsumBase):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    a_buf: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    weight: np.ndarray = LavaPyType(np.ndarray, np.int64)
    kernel_size: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    stride: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    padding: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    dilation: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    groups: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)
    weight_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    num_weight_bits: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=5)

    _w64 = None

    def _weight(self):
        """The integer weights as float64 when every sum is exact in a double (BLAS speed).

        Inputs are at most 24-bit, so |sum| <= 2^24 * max|w| * fan-in; below 2^53 a float64
        matmul is exact and rounding it back gives the integer result bit for bit.
        """
        if self._w64 is None:
            w = self.weight
            fan_in = int(np.prod(w.shape[1:]))
            exact = float(np.abs(w).max(initial=0)) * fan_in * (1 << 24) < 2.0 ** 53
            self._w64 = w.astype(np.float64) if exact else w
        return self._w64

    def _clamp(self, x):
        base = 1 << 24
        x = np.rint(x).astype(np.int64) if x.dtype.kind == "f" else x
        return ((x + base // 2) % base - base // 2).astype(np.int32)
