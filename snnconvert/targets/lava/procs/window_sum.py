"""Read-out sink: sums its input over a window of steps that restarts periodically.

At steps with ``(time_step - offset) % interval == 0`` the sum restarts; inputs are added
while ``first <= (time_step - offset) % interval < window`` (``first`` > 0: the membrane at the
last step, or over the last K steps of the window). Replaces a Monitor/RingBuffer: one
``total.get()`` per window instead of a T-by-N buffer.
"""
import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class WindowSum(AbstractProcess):
    """Accumulates ``a_in`` over steps ``first`` .. ``window``-1 after each restart."""

    def __init__(self, *, shape, interval, offset, window, first=0, name=None):
        super().__init__(shape=shape, name=name)
        self.a_in = InPort(shape=shape)
        self.total = Var(shape=shape, init=np.zeros(shape))
        self.interval = Var(shape=(1,), init=int(interval))
        self.offset = Var(shape=(1,), init=int(offset))
        self.window = Var(shape=(1,), init=int(window))
        self.first = Var(shape=(1,), init=int(first))


class _WindowSumBase(PyLoihiProcessModel):
    def run_spk(self):
        a = self.a_in.recv()
        phase = (self.time_step - int(self.offset[0])) % int(self.interval[0])
        if phase == 0:
            self.total[:] = 0
        if int(self.first[0]) <= phase < int(self.window[0]):
            self.total[:] += a


@implements(proc=WindowSum, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWindowSumFloat(_WindowSumBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    total: np.ndarray = LavaPyType(np.ndarray, float)
    interval: np.ndarray = LavaPyType(np.ndarray, int)
    offset: np.ndarray = LavaPyType(np.ndarray, int)
    window: np.ndarray = LavaPyType(np.ndarray, int)
    first: np.ndarray = LavaPyType(np.ndarray, int)


@implements(proc=WindowSum, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWindowSumFixed(_WindowSumBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    total: np.ndarray = LavaPyType(np.ndarray, np.int64)
    interval: np.ndarray = LavaPyType(np.ndarray, int)
    offset: np.ndarray = LavaPyType(np.ndarray, int)
    window: np.ndarray = LavaPyType(np.ndarray, int)
    first: np.ndarray = LavaPyType(np.ndarray, int)
