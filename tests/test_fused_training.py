"""The fused trainable IF/LIF op: the same spikes as the torch loop bit for bit, the same
gradients to float32 rounding, through a whole network too; what it cannot run goes to the loop."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from snnconvert import ir
from snnconvert.runtime import SpikingNetwork
from snnconvert.runtime import fused_training, neurons as nrn

T, B, C, H = 7, 3, 4, 5


def _grads(f, current, v0, theta, reset, leak, surrogate, w, wv):
    """f's (spikes, final v, d/d current, d/d θ, d/d v0) for the loss Σ w·spikes + Σ wv·v_end."""
    c, th, v_init = (t.clone().requires_grad_() for t in (current, theta, v0))
    v = torch.zeros(B, C, H, H) + v_init
    s, v_end = f(c, T, v, th, reset, leak, surrogate, 2.0)
    ((s * w).sum() + (v_end * wv).sum()).backward()
    return s.detach(), v_end.detach(), c.grad, th.grad, v_init.grad


@pytest.mark.parametrize("reset,leak,surrogate,constant,theta_shape", [
    *itertools.product(["subtract", "zero"], [0.0, 0.1], nrn.SURROGATES, [False], [(C, 1, 1)]),
    ("subtract", 0.0, "atan", True, (C, 1, 1)),
    ("subtract", 0.0, "atan", False, ()),
    ("zero", 0.1, "rect", False, (1, C, H, H)),
    ("subtract", 0.0, "sigmoid", True, (C, H, H)),
])
def test_fused_op_gives_the_loops_spikes_and_gradients(reset, leak, surrogate, constant, theta_shape):
    gen = torch.Generator().manual_seed(0)
    current = torch.randn((B, C, H, H) if constant else (T, B, C, H, H), generator=gen) * 0.6 + 0.2
    theta = torch.rand(theta_shape, generator=gen) + 0.5
    v0 = torch.rand(C, 1, 1, generator=gen) * 0.5
    w, wv = torch.randn(T, B, C, H, H, generator=gen), torch.randn(B, C, H, H, generator=gen)
    assert fused_training.supports(current, torch.zeros(B, C, H, H), theta, leak)
    loop = _grads(nrn.if_neuron, current, v0, theta, reset, leak, surrogate, w, wv)
    fused = _grads(fused_training.if_neuron_trained, current, v0, theta, reset, leak, surrogate, w, wv)
    assert 0 < float((loop[0] > 0).float().mean()) < 1  # some neurons fire, some do not
    assert torch.equal(loop[0], fused[0]) and torch.equal(loop[1], fused[1])
    for name, a, b in zip(("current", "threshold", "v0"), loop[2:], fused[2:]):
        assert a.shape == b.shape, name
        assert float(a.abs().max()) > 0, name
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max())), name


def test_a_wrong_surrogate_or_reset_would_show():
    """The comparison above can fail: the loop with another surrogate, or the other reset,
    gives other gradients."""
    gen = torch.Generator().manual_seed(1)
    current = torch.randn(T, B, C, H, H, generator=gen) * 0.6 + 0.2
    theta, v0 = torch.rand(C, 1, 1, generator=gen) + 0.5, torch.rand(C, 1, 1, generator=gen) * 0.5
    w, wv = torch.randn(T, B, C, H, H, generator=gen), torch.randn(B, C, H, H, generator=gen)
    fused = _grads(fused_training.if_neuron_trained, current, v0, theta, "subtract", 0.0, "atan", w, wv)
    for reset, surrogate in (("subtract", "sigmoid"), ("zero", "atan")):
        other = _grads(nrn.if_neuron, current, v0, theta, reset, 0.0, surrogate, w, wv)
        assert not torch.allclose(other[2], fused[2], rtol=1e-3, atol=1e-3)


def test_what_the_fused_op_cannot_run_goes_to_the_loop():
    v = torch.zeros(B, C, H, H)
    current = torch.rand(T, B, C, H, H)
    theta = torch.ones(C, 1, 1)
    assert fused_training.supports(current, v, theta, 0.0)
    assert not fused_training.supports(current, v, theta, torch.tensor(0.1, requires_grad=True))  # trained leak
    assert not fused_training.supports(current.double(), v.double(), theta.double(), 0.0)
    assert not fused_training.supports(current, v, torch.ones(B, C, 1, 1), 0.0)  # thresholds per sample
    assert not fused_training.supports(current, v, torch.ones(2, 1, 1), 0.0)  # not broadcastable
    assert not fused_training.supports(current[:, :, :, :1], v[:, :, :1], torch.ones(C, H, 1), 0.0)  # wider than v


def _conv_net(reset: str) -> onnx.ModelProto:
    """Conv(2->4) -> IF -> Flatten -> Gemm(->6) -> IF -> Gemm(->3) on [N, 2, 5, 5]."""
    rng = np.random.default_rng(3)
    arr = lambda a, n: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    th1 = np.array([0.8, 1.0, 1.2, 0.9], np.float32).reshape(4, 1, 1)
    th2 = np.full(6, 0.7, np.float32)
    n1, i1 = ir.make_neuron("if1", "c1", "s1", th1, th1 / 2, reset=reset)
    n2, i2 = ir.make_neuron("if2", "g1", "s2", th2, th2 / 2, reset=reset)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), n1,
             helper.make_node("Flatten", ["s1"], ["f1"], name="flat"),
             helper.make_node("Gemm", ["f1", "w2", "b2"], ["g1"], name="fc1", transB=1), n2,
             helper.make_node("Gemm", ["s2", "w3", "b3"], ["y"], name="fc2", transB=1)]
    inits = [arr(rng.normal(0, 0.6, (4, 2, 3, 3)), "w1"), arr(rng.normal(0.2, 0.1, 4), "b1"),
             arr(rng.normal(0, 0.3, (6, 100)), "w2"), arr(rng.normal(0.1, 0.1, 6), "b2"),
             arr(rng.normal(0, 0.5, (3, 6)), "w3"), arr(np.zeros(3), "b3"), *i1, *i2]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(model)
    return model


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_training_a_network_through_the_fused_op_matches_the_loop(reset, monkeypatch):
    """Every parameter's gradient (weights, biases, thresholds, initial potentials) through a
    network simulated in chunks of 3 steps (the potential carried between chunks), fused (the
    default) and with the loop (``cpu_kernels="torch"``)."""
    x = torch.from_numpy(np.random.default_rng(0).random((8, 2, 5, 5), np.float32))
    grads, calls = [], []
    fused_op = fused_training.if_neuron_trained
    monkeypatch.setattr(fused_training, "if_neuron_trained", lambda *a: calls.append(1) or fused_op(*a))
    for fused in (True, False):
        if not fused:
            assert len(calls) == 6  # two layers × three chunks of steps
        net = SpikingNetwork(_conv_net(reset), time_chunk=3, cpu_kernels="onnxruntime" if fused else "torch")
        out = net(x, 8)
        out.pow(2).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()
                                     if p.grad is not None}))
    assert len(calls) == 6
    (out_f, g_f), (out_l, g_l) = grads
    assert torch.equal(out_f, out_l)
    assert g_f.keys() == g_l.keys() and len(g_f) >= 8
    for name in g_f:
        assert float(g_l[name].abs().max()) > 0, name
        assert torch.allclose(g_f[name], g_l[name], rtol=1e-4, atol=1e-5 * float(g_l[name].abs().max())), name


def test_samples_split_over_threads_give_the_same_spikes_and_gradients(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    current = torch.randn(T, B, C, H, H, generator=gen) * 0.6 + 0.2
    theta, v0 = torch.rand(C, 1, 1, generator=gen) + 0.5, torch.rand(C, 1, 1, generator=gen) * 0.5
    w, wv = torch.randn(T, B, C, H, H, generator=gen), torch.randn(B, C, H, H, generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            monkeypatch.setattr(fused_training, "PART_ELEMENTS", 1)
            assert len(fused_training._parts(B, T * C * H * H)) == n
            results.append(_grads(fused_training.if_neuron_trained, current, v0, theta, "zero", 0.1, "atan", w, wv))
    finally:
        torch.set_num_threads(threads)
    one, three = results
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1])
    assert torch.equal(one[2], three[2]) and torch.equal(one[4], three[4])  # each element in one thread
    assert torch.allclose(one[3], three[3], rtol=1e-6)  # θ's gradient summed per thread, then over threads
