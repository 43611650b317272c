"""The compiled event engine: the dense runtime's spikes (float64), its outputs (float32), and
the interpreter wherever the engine does not apply."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from snnconvert import ir
from snnconvert.runtime import SpikingNetwork, event_engine

from helpers import model, vi

C1, H = 8, 12


class _Graph:
    """A hand-built spiking IR: nodes and initializers added one layer at a time."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.extra = [], {}, []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def conv(self, x, c_in, c_out, k=3, bias=True, **attrs) -> str:
        w, b, y = self.name("w"), self.name("b"), self.name("conv")
        self.inits[w] = self.rng.normal(size=(c_out, c_in, k, k)) * (1.2 / np.sqrt(c_in * k * k))
        inputs = [x, w]
        if bias:
            self.inits[b] = self.rng.normal(size=c_out) * 0.1
            inputs.append(b)
        self.nodes.append(helper.make_node("Conv", inputs, [y], name=y, **attrs))
        return y

    def neuron(self, x, shape, reset="subtract", leak=0.0) -> str:
        y = self.name("s")
        theta = self.rng.uniform(0.4, 1.0, size=(shape[0],) + (1,) * (len(shape) - 1))
        node, inits = ir.make_neuron(self.name("if"), x, y, theta.astype(np.float32),
                                     np.broadcast_to(theta / 2, shape).astype(np.float32),
                                     reset=reset, leak=leak)
        self.nodes.append(node)
        self.extra.extend(inits)
        return y

    def op(self, op_type, inputs, **attrs) -> str:
        y = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [y], name=y, **attrs))
        return y

    def const(self, value) -> str:
        name = self.name("k")
        self.inits[name] = np.asarray(value)
        return name

    def gemm(self, x, k, m, bias=True) -> str:
        w, y = self.name("w"), self.name("fc")
        self.inits[w] = self.rng.normal(size=(m, k)) * (1.5 / np.sqrt(k))
        inputs = [x, w]
        if bias:
            inputs.append(self.const(self.rng.normal(size=m) * 0.1))
        self.nodes.append(helper.make_node("Gemm", inputs, [y], name=y, transB=1))
        return y

    def build(self, out: str, n_out: int) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "y"
        m = model(self.nodes, [vi("x", ["N", 3, H, H])], [vi("y", ["N", n_out])], self.inits)
        m.graph.initializer.extend(self.extra)
        ir.ensure_domain(m)
        return m


def resnet_like(shortcut: str = "conv", pooled: bool = False, reset: str = "subtract",
                leak: float = 0.0, seed: int = 0):
    """conv -> IF -> [conv + identity] -> IF -> conv stride 2 -> IF -> [conv + shortcut] -> IF
    -> (AvgPool ->) Flatten -> Gemm -> LIF -> Gemm (readout tail)."""
    g = _Graph(seed)
    a = g.neuron(g.conv("x", 3, C1, pads=[1, 1, 1, 1]), (C1, H, H))
    r = g.op("Add", [g.conv(a, C1, C1, pads=[1, 1, 1, 1]), a])
    b = g.neuron(r, (C1, H, H), reset=reset)
    src = g.op("AveragePool", [b], kernel_shape=[2, 2], strides=[2, 2]) if pooled else b
    down = g.conv(src, C1, 16, pads=[1, 1, 1, 1], strides=[1, 1] if pooled else [2, 2])
    c = g.neuron(down, (16, H // 2, H // 2), leak=leak)
    padded = g.op("Pad", [c, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    main = g.conv(padded, 16, 16, bias=False)
    if shortcut == "conv":
        short = g.conv(b, C1, 16, k=1, strides=[2, 2])
    else:  # ResNet option A: subsample, then zero channels around
        sl = g.op("Slice", [b, g.const(np.array([0, 0], np.int64)),
                            g.const(np.array([2 ** 62, 2 ** 62], np.int64)),
                            g.const(np.array([2, 3], np.int64)), g.const(np.array([2, 2], np.int64))])
        short = g.op("Pad", [sl, g.const(np.array([0, 4, 0, 0, 0, 4, 0, 0], np.int64)),
                             g.const(np.array(0.0, np.float32))])
    d = g.neuron(g.op("Add", [main, short]), (16, H // 2, H // 2))
    p = g.op("AveragePool", [d], kernel_shape=[2, 2], strides=[2, 2])
    f = g.op("Flatten", [p])
    e = g.neuron(g.gemm(f, 16 * 9, 24), (24,), leak=0.1)
    g.gemm(e, 24, 5)
    return g.build("y", 5)


def _x(n=6, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 3, H, H)).astype(np.float32)


def _run64(m, mode, x, steps=16):
    net = SpikingNetwork(m, cpu_kernels="torch", synapses=mode).double()
    net.record = True
    with torch.no_grad():
        out = net(torch.as_tensor(x, dtype=torch.float64), steps)
    return net, out


@pytest.mark.parametrize("kind", [dict(), dict(shortcut="slice"), dict(pooled=True),
                                  dict(reset="zero", leak=0.2), dict(shortcut="slice", pooled=True,
                                                                      seed=3)])
def test_engine_fires_the_dense_spikes_in_float64(kind):
    m, x = resnet_like(**kind), _x()
    event, out_e = _run64(m, "event", x)
    dense, out_d = _run64(m, "dense", x)
    assert event.engine is not None and dense.engine is None
    assert event.spike_counts.keys() == dense.spike_counts.keys()
    total = 0.0
    for name, counts in dense.spike_counts.items():
        assert torch.equal(event.spike_counts[name], counts), name
        assert event._per_step[name] == dense._per_step[name], name
        total += float(counts.sum())
    assert total > 1000  # every layer fires: the comparison means something
    assert all(float(c.sum()) > 0 for c in dense.spike_counts.values())
    torch.testing.assert_close(out_e, out_d, rtol=0, atol=1e-10)


def constant_first(pooled: bool, reset: str = "subtract", leak: float = 0.0, seed: int = 0,
                   c: int = 16):
    """conv -> IF (a constant current, c channels) -> (AvgPool 2x2 ->) conv -> IF -> Flatten ->
    Gemm (readout tail)."""
    g = _Graph(seed)
    a = g.neuron(g.conv("x", 3, c, pads=[1, 1, 1, 1]), (c, H, H), reset=reset, leak=leak)
    src = g.op("AveragePool", [a], kernel_shape=[2, 2], strides=[2, 2]) if pooled else a
    hh = H // 2 if pooled else H
    b = g.neuron(g.conv(src, c, 16, pads=[1, 1, 1, 1]), (16, hh, hh))
    g.gemm(g.op("Flatten", [b]), 16 * hh * hh, 5)
    return g.build("y", 5)


@pytest.mark.parametrize("kind", [dict(pooled=True), dict(pooled=False),
                                  dict(pooled=True, reset="zero", leak=0.2),
                                  dict(pooled=False, c=32, seed=2, leak=0.1)])
def test_constant_current_layer_runs_time_major_with_the_dense_spikes(kind, monkeypatch):
    pools = []
    real = event_engine.constant_layer

    def spy(*args):
        pools.append(args[16])
        return real(*args)

    monkeypatch.setattr(event_engine, "constant_layer", spy)
    m, x = constant_first(**kind), _x(7, seed=3)
    event, out_e = _run64(m, "event", x, steps=20)
    dense, out_d = _run64(m, "dense", x, steps=20)
    assert pools and set(pools) == {2 if kind["pooled"] else 1}  # the time-major kernel ran
    assert event.spike_counts.keys() == dense.spike_counts.keys()
    for name, counts in dense.spike_counts.items():
        assert float(counts.sum()) > 100, name
        assert torch.equal(event.spike_counts[name], counts), name
        assert event._per_step[name] == dense._per_step[name], name
    torch.testing.assert_close(out_e, out_d, rtol=0, atol=1e-10)


def test_engine_checkpoints_and_per_step_totals_match_the_dense_runtime():
    m = resnet_like(shortcut="slice")
    x = torch.as_tensor(_x(10, seed=4), dtype=torch.float64)
    runs = {}
    for mode in ("event", "dense"):
        net = SpikingNetwork(m, cpu_kernels="torch", synapses=mode).double()
        net.record = True
        with torch.no_grad():
            final, marks = net._simulate(x, 12, [3, 8, 12])
        runs[mode] = (final, marks, dict(net._per_step))
    assert set(runs["event"][1]) == {3, 8, 12}
    for t in (3, 8, 12):
        torch.testing.assert_close(runs["event"][1][t], runs["dense"][1][t], rtol=0, atol=1e-10)
    torch.testing.assert_close(runs["event"][0], runs["dense"][1][12], rtol=0, atol=1e-10)
    assert runs["event"][2] == runs["dense"][2]


def test_simulate_uses_the_engine_in_float32():
    m, x = resnet_like(), _x(12, seed=6)
    event = SpikingNetwork(m, synapses="event")
    res = event.simulate(x, [4, 8], batch_size=5, record=True)
    dense = SpikingNetwork(m, synapses="dense").simulate(x, [4, 8], batch_size=5, record=True)
    assert event.engine is not None
    assert res.readout[8].shape == (12, 5)
    assert np.mean(res.predictions(8) == dense.predictions(8)) >= 0.9
    assert res.firing_rate[8] == pytest.approx(dense.firing_rate[8], rel=0.05)
    assert event.spike_counts.keys() == set(SpikingNetwork(m).neuron_names)


def test_float32_engine_agrees_with_the_dense_runtime():
    m, x = resnet_like(), _x(16, seed=5)
    event = SpikingNetwork(m, synapses="auto")
    dense = SpikingNetwork(m, synapses="dense")
    with torch.no_grad():
        out_e, out_d = event(torch.from_numpy(x), 24), dense(torch.from_numpy(x), 24)
    assert event.engine is not None
    assert out_e.dtype == torch.float32
    assert (out_e.argmax(1) == out_d.argmax(1)).float().mean() >= 0.9
    torch.testing.assert_close(out_e, out_d, rtol=0, atol=0.05)


def test_unsupported_graphs_and_training_run_the_interpreter():
    g = _Graph(0)
    a = g.neuron(g.conv("x", 3, C1, pads=[1, 1, 1, 1]), (C1, H, H))
    p = g.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])
    g.neuron(g.conv(p, C1, 4, pads=[1, 1, 1, 1]), (4, H // 2, H // 2))
    g.op("GlobalAveragePool", [g.nodes[-1].output[0]])
    g.op("Flatten", [g.nodes[-1].output[0]])
    m = g.build("y", 4)
    x = _x()
    event, out_e = _run64(m, "event", x)
    dense, out_d = _run64(m, "dense", x)
    assert event.engine is None  # MaxPool between layers: not supported, the interpreter ran
    for name, counts in dense.spike_counts.items():
        assert torch.equal(event.spike_counts[name], counts)
    net = SpikingNetwork(resnet_like(), synapses="event")
    out = net(torch.from_numpy(x), 4)  # gradients on: the interpreter (surrogate gradients)
    out.sum().backward()
    assert any(p.grad is not None for p in net.params.values())
