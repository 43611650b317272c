"""Event-driven synaptic kernels: the same numbers as the dense ops, and the same spikes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from snnconvert.runtime import SpikingNetwork
from snnconvert.runtime.event_kernels import EventSynapses
from snnconvert.ops import lookup


def _spiky(shape, density, seed, graded=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    fired = torch.rand(shape, generator=gen) < density
    values = torch.rand(shape, generator=gen) + 0.5 if graded else torch.full(shape, 0.75)
    return (fired * values).to(dtype)


def _run(op, attrs, args, mode="event"):
    node = helper.make_node(op, ["x"] + [f"c{i}" for i in range(len(args) - 1)], ["y"], name="n", **attrs)
    syn = EventSynapses(mode)
    dense = lambda: lookup(node).kernel(attrs, *args)  # noqa: E731
    return syn.run(node, attrs, args, dense), dense(), syn


CONVS = [  # (C, O, H, W, kernel, attrs)
    (16, 16, 32, 32, 3, {"pads": [1, 1, 1, 1]}),
    (3, 10, 9, 7, 3, {"pads": [0, 1, 2, 0], "strides": [2, 1]}),
    (16, 20, 16, 16, 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    (5, 33, 11, 13, 5, {"pads": [2, 2, 2, 2], "dilations": [2, 1]}),
    (8, 4, 6, 6, 1, {}),
    (2, 7, 12, 12, 3, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c,o,h,w,k,attrs", CONVS)
def test_event_conv_matches_dense_conv(c, o, h, w, k, attrs, dtype):
    gen = torch.Generator().manual_seed(c * o + h)
    x = _spiky((5, c, h, w), 0.15, seed=h + w, graded=True, dtype=dtype)
    weight = torch.randn(o, c, k, k, generator=gen, dtype=dtype)
    bias = torch.randn(o, generator=gen, dtype=dtype)
    for args in ([x, weight, bias], [x, weight]):
        y, ref, syn = _run("Conv", attrs, args)
        assert syn.calls["n"] == [1, 0]
        assert y.shape == ref.shape and y.dtype == ref.dtype
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("op,attrs,wshape,bshape", [
    ("Gemm", {"transB": 1}, (20, 37), (20,)),
    ("Gemm", {}, (37, 20), (1, 20)),
    ("Gemm", {"transB": 1}, (3, 37), None),
    ("MatMul", {}, (37, 40), None),
])
def test_event_gemm_matches_dense(op, attrs, wshape, bshape):
    gen = torch.Generator().manual_seed(3)
    x = _spiky((6, 37), 0.2, seed=1, graded=True)
    args = [x, torch.randn(*wshape, generator=gen, dtype=torch.float64)]
    if bshape:
        args.append(torch.randn(*bshape, generator=gen, dtype=torch.float64))
    y, ref, syn = _run(op, attrs, args)
    assert syn.calls["n"] == [1, 0]
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)


def test_unsupported_configurations_run_dense():
    x = _spiky((2, 4, 6, 6), 0.2, seed=0)
    grouped = [x, torch.randn(4, 2, 3, 3, dtype=torch.float64)]
    y, ref, syn = _run("Conv", {"group": 2}, grouped)
    assert syn.calls["n"] == [0, 1] and torch.equal(y, ref)
    scaled = [x.reshape(2, -1), torch.randn(144, 3, dtype=torch.float64)]
    y, ref, syn = _run("Gemm", {"alpha": 0.5}, scaled)
    assert syn.calls["n"] == [0, 1] and torch.equal(y, ref)


def test_dense_mode_never_runs_events_and_bad_modes_are_refused():
    x = _spiky((2, 4, 6, 6), 0.2, seed=0)
    y, ref, syn = _run("Conv", {}, [x, torch.randn(3, 4, 3, 3, dtype=torch.float64)], mode="dense")
    assert syn.calls["n"] == [0, 1] and torch.equal(y, ref)
    with pytest.raises(ValueError, match="synapses must be one of"):
        EventSynapses("sparse")


def test_auto_mode_measures_then_picks_a_path():
    x = _spiky((8, 16, 16, 16), 0.05, seed=2, dtype=torch.float32)
    args = [x, torch.randn(16, 16, 3, 3), torch.randn(16)]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="n", pads=[1, 1, 1, 1])
    syn = EventSynapses("auto")
    dense = lambda: lookup(node).kernel({"pads": [1, 1, 1, 1]}, *args)  # noqa: E731
    for _ in range(6):
        torch.testing.assert_close(syn.run(node, {"pads": [1, 1, 1, 1]}, args, dense), dense(),
                                   rtol=0, atol=1e-4)
    info = syn.summary()["n"]
    assert info["break_even"] is not None and info["density"] == pytest.approx(0.05, abs=0.01)
    assert info["event_calls"] + info["dense_calls"] == 6


@pytest.mark.parametrize("fixture", ["digits_cnn", "digits_resnet"])
def test_event_network_spikes_exactly_like_the_dense_network_in_float64(digits, fixture):
    import snnconvert as sc

    snn = sc.convert(f"tests/fixtures/{fixture}.onnx", digits["x_train"][:100], timesteps=16)
    x = torch.as_tensor(digits["x_test"][:48], dtype=torch.float64)
    counts, outputs, calls = {}, {}, {}
    for mode in ("dense", "event"):
        net = SpikingNetwork(snn, cpu_kernels="torch", synapses=mode).double()
        net.use_engine = False  # the per-layer event kernels (the engine: test_event_engine)
        net.record = True
        with torch.no_grad():
            outputs[mode] = net(x, 16)
        counts[mode] = dict(net.spike_counts)
        calls[mode] = net.synapses.calls
    assert sum(c[0] for c in calls["event"].values()) >= 2  # the spiking Conv/Gemm ran as events
    assert all(c[0] == 0 for c in calls["dense"].values())
    assert counts["event"].keys() == counts["dense"].keys()
    for name in counts["dense"]:
        assert torch.equal(counts["event"][name], counts["dense"][name]), name
    assert sum(float(c.sum()) for c in counts["dense"].values()) > 0
    torch.testing.assert_close(outputs["event"], outputs["dense"], rtol=0, atol=1e-10)


def test_float32_event_network_agrees_with_onnxruntime_dense(digits):
    import snnconvert as sc

    snn = sc.convert("tests/fixtures/digits_resnet.onnx", digits["x_train"][:100], timesteps=8)
    x = digits["x_test"][:64]
    event = SpikingNetwork(snn, synapses="event").simulate(x, 8)
    dense = SpikingNetwork(snn, synapses="dense").simulate(x, 8)
    assert np.mean(event.predictions(8) == dense.predictions(8)) >= 0.98
    assert event.firing_rate[8] == pytest.approx(dense.firing_rate[8], rel=1e-2)
