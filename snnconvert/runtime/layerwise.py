"""Run a spiking network one neuron layer at a time over chunks of samples (calibration).

Layer-by-layer calibration fits each neuron layer on its input current over all calibration
samples, as the already fitted layers before it actually spike, before the layers after it
can run. Instead of simulating every sample at once (memory growing with samples × T), the
run keeps, for each chunk of samples, only the spikes of the neuron layers a later layer still
reads, packed one bit per spike (a neuron's spike is 0 or its θ); a layer's input current is
rebuilt chunk by chunk from them through the synaptic nodes between, into a
:class:`~snnconvert.runtime.spool.Spool`. Peak memory is then one chunk's activations plus
the spool's budget, whatever the number of samples. Per sample, every value equals the
one-shot simulation's (the same kernels on the same sample's data).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .. import ir
from .memory import HeapGuard, sample_bytes, samples_within
from .network import CONST, INVARIANT, VARYING, SpikingNetwork
from .spool import Spool

CHUNK_SAMPLE_STEPS = 1024
"""Samples × T of one chunk at most: binds where the largest activation takes under 16 KB a
sample and step (an MLP's); the others are bounded by :data:`CHUNK_BYTES` first."""

CHUNK_BYTES = 1 << 24
"""Bytes of the largest activation over one chunk's samples × T (ResNet-20: 256 sample-steps).
Below glibc's largest mmap threshold (32 MB), a chunk's tensors are carved from the heap and
reused by the next chunk; above it every one is mapped afresh and its pages faulted in: with
64 MB chunks (1,024 sample-steps) ResNet-20's fit at T=32 spent 42 % of its CPU time in the
kernel. It also bounds ImageNet-size layers (VGG-19's first at 224×224: 12.8 MB a sample and
step, so one sample a chunk at any T ≥ 2)."""

LAYER_HEADROOM = 1 << 28
"""Resident bytes a layer's pass may add above its live level before the heap's free pages are
returned (:class:`~snnconvert.runtime.memory.HeapGuard`): trimming after every chunk made every
later chunk fault its pages in again (ResNet-20 at T=32: 50 s of 120 in the kernel)."""

Fire = Callable[[torch.Tensor, int], torch.Tensor]
"""(input current of one chunk, chunk index) -> spikes [T, b, ...] (each 0 or θ)."""


class Chunks(Sequence[torch.Tensor]):
    """A spooled tensor, one item per chunk of samples (loaded on access)."""

    def __init__(self, spool: Spool, key: str, count: int, shape: Callable[[int], tuple] | None = None):
        self.spool, self.key, self.count, self._shape = spool, key, count, shape

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[override]
        if not 0 <= index < self.count:
            raise IndexError(index)
        arr = self.spool.get(self.key, index)
        return torch.from_numpy(arr if self._shape is None else arr.reshape(self._shape(index)))


def chunk_samples(steps: int, sample_steps: int = CHUNK_SAMPLE_STEPS, largest: int = 0, total: int = 0,
                  budget: int = CHUNK_BYTES) -> int:
    """Samples per chunk at T = ``steps``: samples × T at most ``sample_steps``; where one sample's
    largest activation takes ``largest`` bytes, samples × T × ``largest`` at most ``budget``; and
    where all its tensors take ``total``, samples × ``total`` within
    :data:`~snnconvert.runtime.memory.BATCH_BYTES` (a chunk's ANN activations are computed at
    once: ResNet-50's 151 MB a sample). At least one sample."""
    samples = sample_steps // steps
    if largest > 0:
        samples = min(samples, budget // (steps * largest))
    if total > 0:
        samples = samples_within(total, samples)
    return max(1, samples)


class LayerwiseRun:
    """``for name, currents in run.layers(): ...; run.fire(name, fire, theta)`` visits the neuron
    layers in order; ``currents`` holds the layer's input current per chunk ([b, ...] when
    constant in time, else [T, b, ...]); ``fire`` must give the layer's spikes before the next
    layer is visited."""

    def __init__(self, net: SpikingNetwork, x: np.ndarray, steps: int, spool: Spool,
                 chunk: int | None = None, keep: Sequence[str] = (), chunk_bytes: int = CHUNK_BYTES
                 ) -> None:
        """``chunk``: samples per chunk (default: :func:`chunk_samples`, within ``chunk_bytes``);
        ``keep``: tensors after the last neuron layer that :meth:`evaluate` must still give
        once every layer has fired (the spikes they read are kept)."""
        net._use_plan(INVARIANT)
        self.net, self.steps, self.spool = net, steps, spool
        self.x = x
        if not chunk:
            largest, total = sample_bytes(net._model)
            chunk = chunk_samples(steps, largest=largest, total=total, budget=chunk_bytes)
        self.chunk = chunk
        self.bounds = [(s, min(s + self.chunk, len(x))) for s in range(0, len(x), self.chunk)]
        self._nodes = net._nodes
        self._producer = {node.output[0]: i for i, (node, _, _) in enumerate(self._nodes)}
        self._neurons = [i for i, (node, _, _) in enumerate(self._nodes) if ir.is_neuron(node)]
        self._cones = {i: self._cone(self._nodes[i][0].input[0]) for i in self._neurons}
        self._last_use: dict[int, int] = {}
        for i in self._neurons:
            for j in self._cones[i]:
                for name in self._nodes[j][0].input:
                    p = self._producer.get(name)
                    if p is not None and ir.is_neuron(self._nodes[p][0]):
                        self._last_use[p] = i
            p = self._producer.get(self._nodes[i][0].input[0])
            if p is not None and ir.is_neuron(self._nodes[p][0]):
                self._last_use[p] = i
        for tensor in keep:  # read after the last layer: never dropped
            reads = [tensor] + [n for j in self._cone(tensor) for n in self._nodes[j][0].input]
            for name in reads:
                p = self._producer.get(name)
                if p is not None and ir.is_neuron(self._nodes[p][0]):
                    self._last_use[p] = len(self._nodes)
        self._consts: dict[str, torch.Tensor] = {}
        self._spikes: dict[str, tuple[torch.Tensor, bool]] = {}  # neuron output -> (θ, time-varying)
        self._pending: str | None = None
        self._heap = HeapGuard(LAYER_HEADROOM)

    def _cone(self, tensor: str) -> list[int]:
        """Indices (in order) of the non-neuron nodes between the input / neuron outputs and
        ``tensor``."""
        seen: set[int] = set()
        todo = [tensor]
        while todo:
            p = self._producer.get(todo.pop())
            if p is None or p in seen or ir.is_neuron(self._nodes[p][0]):
                continue
            seen.add(p)
            todo.extend(n for n in self._nodes[p][0].input if n)
        return sorted(seen)

    def _value(self, name: str, env: dict, index: int, batch: int) -> torch.Tensor | None:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self._spikes:
            theta, _ = self._spikes[name]
            bits = self.spool.get("spikes:" + name, index)
            shape = (self.steps * batch, *theta.shape)
            fired = torch.from_numpy(np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape))
            return fired.to(torch.float32).mul_(theta)  # 0 or θ (θ > 0): a third faster than where()
        if name in self._consts:
            return self._consts[name]
        return self.net._value(name, env)

    def _evaluate(self, nodes: list[int], tensor: str, index: int) -> torch.Tensor:
        """``tensor`` for chunk ``index``: run ``nodes`` on the chunk."""
        start, stop = self.bounds[index]
        batch = stop - start
        env = {self.net.input_name: torch.from_numpy(np.ascontiguousarray(self.x[start:stop], np.float32))}
        for i in nodes:
            node, attrs, kind = self._nodes[i]
            out = node.output[0]
            if kind == CONST and out in self._consts:
                continue
            args = [self._value(n, env, index, batch) for n in node.input]
            if kind == VARYING:
                y = self.net._varying_op(node, attrs, args, self.steps, batch, {})
            else:
                y = self.net._entries[node.name].kernel(attrs, *args)
                if kind == CONST:
                    self._consts[out] = y
            env[out] = y
        return self._value(tensor, env, index, batch)

    def evaluate(self, tensor: str, index: int) -> torch.Tensor:
        """Any tensor before the layer being fitted, for chunk ``index``: [b, ...] when constant
        in time, else [T, b, ...]."""
        value = self._evaluate(self._cone(tensor), tensor, index)
        if self.varying(tensor):
            start, stop = self.bounds[index]
            value = value.reshape(self.steps, stop - start, *value.shape[1:])
        return value

    def varying(self, tensor: str) -> bool:
        """Whether ``tensor`` changes over time (:meth:`evaluate` gives it as [T, b, ...])."""
        return self.net._kinds.get(tensor) == VARYING

    def refresh(self) -> None:
        """Rebuild the input current of the layer being fitted (after its synapses changed)."""
        i = next(i for i in self._neurons if self._nodes[i][0].name == self._pending)
        self._spool_current(i)

    def _spool_current(self, i: int) -> None:
        node = self._nodes[i][0]
        source = node.input[0]
        key = "current:" + node.name
        varying = self.net._kinds[source] == VARYING
        self._heap.start()
        for c, (start, stop) in enumerate(self.bounds):
            cur = self._evaluate(self._cones[i], source, c)
            if varying:
                cur = cur.reshape(self.steps, stop - start, *cur.shape[1:])
            self.spool.put(key, c, cur.detach().to(torch.float32).contiguous().numpy())
            del cur
            self._heap.check()

    def layers(self) -> Iterator[tuple[str, Chunks]]:
        for i in self._neurons:
            node = self._nodes[i][0]
            key = "current:" + node.name
            self._spool_current(i)
            self._pending = node.name
            yield node.name, Chunks(self.spool, key, len(self.bounds))
            if self._pending is not None:
                raise RuntimeError(f"fire() was not called for neuron layer {node.name}")
            self.spool.drop(key)
            for p, last in self._last_use.items():
                if last == i:
                    self.spool.drop("spikes:" + self._nodes[p][0].output[0])

    def fire(self, name: str, fire: Fire, theta: torch.Tensor) -> None:
        """Store the spikes of layer ``name`` (``fire`` per chunk; ``theta`` broadcastable to one
        sample's neurons)."""
        if name != self._pending:
            raise RuntimeError(f"fire() for {name} while {self._pending} is being fitted")
        i = next(i for i in self._neurons if self._nodes[i][0].name == name)
        key = "current:" + name
        out = self._nodes[i][0].output[0]
        shape = None
        for c in range(len(self.bounds)):
            s = fire(torch.from_numpy(self.spool.get(key, c)), c)
            shape = s.shape[2:]
            if i in self._last_use:
                self.spool.put("spikes:" + out, c, np.packbits((s > 0).contiguous().numpy()))
            del s
            self._heap.check()
        if i in self._last_use and shape is not None:
            self._spikes[out] = (torch.broadcast_to(theta.to(torch.float32), shape).contiguous(), True)
        self._pending = None
