"""Lava target: compat hook, layer mapping vs the torch runtime, Lava vs the zero-delay reference."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from snnconvert import ir
from snnconvert.errors import TargetError

lava = pytest.importorskip("snnconvert.targets.lava")

from snnconvert.targets.lava import compat  # noqa: E402
from snnconvert.targets.lava.lowering import lower  # noqa: E402
from snnconvert.targets.lava.reference import simulate  # noqa: E402

T = 12


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name, arr):
    arr = np.asarray(arr)
    return numpy_helper.from_array(arr.astype(np.float32) if arr.dtype.kind == "f" else arr, name)


def _model(nodes, name: str, x, y, inits) -> onnx.ModelProto:
    """An opset-17 IR model of ``nodes`` with input ``x`` and output ``y`` (value infos)."""
    m = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ir.ensure_domain(m)
    return m


def residual_net(seed: int = 0) -> onnx.ModelProto:
    """Every mapped layer kind: conv (pad, groups, stride), residual Add with a latency gap,
    ResNet option-A shortcut (Slice step 2 + channel Pad), AveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    w = lambda *s, k=1.0: rng.normal(size=s) * k / np.sqrt(np.prod(s[1:]))  # noqa: E731
    nodes, inits = [], []

    def neuron(name, x, y, c, th):
        n, i = ir.make_neuron(name, x, y, np.full([c, 1, 1], th, np.float32) if c else np.float32(th),
                              np.full([c, 1, 1], th / 2, np.float32) if c else np.float32(th / 2))
        nodes.append(n)
        inits.extend(i)

    def conv(name, x, y, wt, **kw):
        inits.append(_init(name + ".w", wt))
        nodes.append(helper.make_node("Conv", [x, name + ".w"], [y], name=name, **kw))

    conv("c0", "x", "h0", w(4, 2, 3, 3, k=2.5), pads=[1, 1, 1, 1])
    inits.append(_init("c0.b", rng.normal(size=4) * 0.2))
    nodes[-1].input.append("c0.b")
    neuron("a", "h0", "sa", 4, 1.0)
    conv("c1", "sa", "h1", w(4, 2, 3, 3, k=2.0), pads=[1, 1, 1, 1], group=2)
    neuron("b", "h1", "sb", 4, 0.8)
    conv("c2", "sb", "h2", w(4, 4, 3, 3, k=1.5), pads=[1, 1, 1, 1])
    nodes.append(helper.make_node("Add", ["h2", "sa"], ["h3"], name="add1"))
    neuron("c", "h3", "sc", 4, 1.2)
    conv("c3", "sc", "h4", w(8, 4, 3, 3, k=2.0), pads=[1, 1, 1, 1], strides=[2, 2])
    inits += [_init("sl.starts", np.array([0, 0], np.int64)), _init("sl.ends", np.array([8, 8], np.int64)),
              _init("sl.axes", np.array([2, 3], np.int64)), _init("sl.steps", np.array([2, 2], np.int64)),
              _init("pd.pads", np.array([0, 2, 0, 0, 0, 2, 0, 0], np.int64))]
    nodes += [helper.make_node("Slice", ["sc", "sl.starts", "sl.ends", "sl.axes", "sl.steps"], ["s4"], name="slice"),
              helper.make_node("Pad", ["s4", "pd.pads"], ["p4"], name="pad"),
              helper.make_node("Add", ["h4", "p4"], ["h5"], name="add2")]
    neuron("d", "h5", "sd", 8, 1.0)
    nodes += [helper.make_node("AveragePool", ["sd"], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flatten")]
    inits += [_init("fc1.w", w(6, 32, k=3.0)), _init("fc1.b", rng.normal(size=6) * 0.1),
              _init("fc2.w", w(3, 6, k=1.0)), _init("fc2.b", rng.normal(size=3) * 0.1)]
    nodes.append(helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["h6"], transB=1, name="fc1"))
    neuron("e", "h6", "se", 0, 0.7)
    nodes.append(helper.make_node("Gemm", ["se", "fc2.w", "fc2.b"], ["y"], transB=1, name="fc2"))
    return _model(nodes, "res", _vi("x", ["N", 2, 8, 8]), _vi("y", ["N", 3]), inits)


@pytest.fixture(scope="module")
def net_and_data():
    m = residual_net()
    x = np.random.default_rng(1).uniform(0, 1, size=(6, 2, 8, 8)).astype(np.float32)
    return m, x


def test_compat_rewrites_only_bytencoder_defaults():
    src = "class A:\n    x: ByteEncoder = ByteEncoder()\n    y: int = 0\n"
    out = compat.patch_source(src)
    assert "default_factory=ByteEncoder" in out and "y: int = 0" in out
    assert out.count("\n") == src.count("\n")  # line numbers kept
    from lava.magma.compiler import var_model
    a, b = var_model.CoreEncoder(), var_model.CoreEncoder()
    assert a.x is not b.x  # a fresh default per instance, not a shared one
    assert compat._finder is None and not any(isinstance(f, compat._VarModelFinder) for f in __import__("sys").meta_path)


def test_lowering_structure(net_and_data):
    lg = lower(net_and_data[0])
    pops = lg.populations
    assert [p.depth for p in pops.values() if p.relay_of is None] == [0, 1, 2, 3, 5, 6]
    relays = [p for p in pops.values() if p.relay_of]
    assert [r.relay_of for r in relays] == ["a"]          # the short residual branch is delayed
    assert pops["a"].input_ops and not pops["a"].terms   # analog input injected as bias
    assert sum(o.is_process for o in pops["d"].terms[1].ops) == 1  # slice+pad folded in one conv


def test_reference_matches_torch_runtime(net_and_data):
    from snnconvert.runtime import SpikingNetwork

    m, x = net_and_data
    torch_net = SpikingNetwork(m, cpu_kernels="torch").double()
    torch_net.record = True
    with torch.no_grad():
        y = torch_net(torch.as_tensor(x, dtype=torch.float64), T).numpy()
    ref = simulate(lower(m), x.astype(np.float64), T)
    np.testing.assert_allclose(ref.readout, y, atol=1e-9)
    for name in "abcde":
        np.testing.assert_array_equal(ref.counts[name], torch_net.spike_counts[name].numpy())


def test_lava_float_and_fixed_match_reference(net_and_data, monkeypatch):
    from snnconvert.targets.lava import runner

    m, x = net_and_data
    m_q = lava.quantize(m, x, T)
    net = lava.network(m_q)
    ref_f = net.reference(x, T, fixed_point=False)
    got_f = net.run(x, T, fixed_point=False, batch_size=4, neuron_counts=True)  # 2 chunks
    np.testing.assert_allclose(got_f.readout, ref_f.readout, atol=1e-12)
    for name in "abcde":
        np.testing.assert_array_equal(got_f.counts[name], ref_f.counts[name])
    ref_q = net.reference(x, T, fixed_point=True)
    # 3 batches of 2; banks for 2 batches per compiled graph: two graphs, the first with 2 banks
    monkeypatch.setattr(runner, "BANK_BYTES", 8 * 2 * 4 * 8 * 8 * 2)
    got_q = net.run(x, T, fixed_point=True, batch_size=2, neuron_counts=True)
    np.testing.assert_array_equal(got_q.readout, ref_q.readout)  # bit-exact
    for name in "abcde":
        np.testing.assert_array_equal(got_q.counts[name], ref_q.counts[name])
    assert np.corrcoef(ref_q.readout.ravel(), ref_f.readout.ravel())[0, 1] > 0.95


def test_fixed_parameters_are_in_range(net_and_data):
    m, x = net_and_data
    net = lava.network(lava.quantize(m, x, T))
    for name, fx in net.fixed.items():
        for w in fx.weights:
            mant = w >> fx.weight_exp
            assert np.all(mant % 2 == 0) and mant.min() >= -256 and mant.max() <= 254
        if name != "<output>":
            assert 1 <= fx.vth.min() and fx.vth.max() <= 1 << 14


def test_compile_load_roundtrip(tmp_path, net_and_data):
    m, x = net_and_data
    out = lava.compile(m, tmp_path / "art", fixed_point=True, calib=x)
    net = lava.load(out)
    assert net.fixed is not None
    again = lava.network(lava.quantize(m, x, T))
    a, b = net.reference(x, T), again.reference(x, T, fixed_point=True)
    np.testing.assert_array_equal(a.readout, b.readout)


def test_unsupported_ops_are_refused_by_name():
    n, inits = ir.make_neuron("n", "h", "s", np.float32(1.0), np.float32(0.5))
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["h"], name="conv"), n,
         helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="mp"),
         helper.make_node("Flatten", ["p"], ["y"], name="fl")],
        "g", [_vi("x", ["N", 1, 4, 4])], [_vi("y", ["N", 4])],
        [_init("w", np.ones((1, 1, 1, 1)))] + inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(m)
    with pytest.raises(TargetError) as e:
        lower(m)
    assert e.value.node == "mp" and e.value.op == "MaxPool" and "AveragePool" in str(e.value)


def test_asymmetric_padding_refused():
    n, inits = ir.make_neuron("n", "h", "s", np.float32(1.0), np.float32(0.5))
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["h"], pads=[0, 0, 1, 1], name="cv"), n,
                           helper.make_node("Flatten", ["s"], ["y"], name="fl")],
                          "g", [_vi("x", ["N", 1, 4, 4])], [_vi("y", ["N", 25])],
                          [_init("w", np.ones((1, 1, 2, 2)))] + inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(m)
    with pytest.raises(TargetError, match="asymmetric"):
        lower(m)


def test_lava_imports_after_tqdm_fixed_the_start_method():
    """tqdm's lock fixes multiprocessing's start method; Lava's own set_start_method must not fail."""
    import subprocess
    import sys

    code = ("import tqdm, multiprocessing as mp; tqdm.tqdm.get_lock(); "
            "assert mp.get_start_method(allow_none=True) == 'fork'; "
            "import snnconvert.targets.lava; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def concat_net(seed: int = 2) -> onnx.ModelProto:
    """Concat of spikes at two depths feeding a conv, and Concat of two conv outputs into one IF."""
    rng = np.random.default_rng(seed)
    w = lambda *s, k=1.0: rng.normal(size=s) * k / np.sqrt(np.prod(s[1:]))  # noqa: E731
    nodes, inits = [], []

    def neuron(name, x, y, c, th):
        n, i = ir.make_neuron(name, x, y, np.full([c, 1, 1], th, np.float32), np.full([c, 1, 1], th / 2, np.float32))
        nodes.append(n)
        inits.extend(i)

    def conv(name, x, y, wt):
        inits.append(_init(name + ".w", wt))
        nodes.append(helper.make_node("Conv", [x, name + ".w"], [y], name=name, pads=[1, 1, 1, 1]))

    conv("ca", "x", "ha", w(3, 2, 3, 3, k=2.5))
    neuron("a", "ha", "sa", 3, 1.0)
    conv("cb", "sa", "hb", w(2, 3, 3, 3, k=2.0))
    neuron("b", "hb", "sb", 2, 0.8)
    nodes.append(helper.make_node("Concat", ["sa", "sb"], ["cat1"], axis=1, name="cat1"))
    conv("cc", "cat1", "hc", w(4, 5, 3, 3, k=2.0))
    neuron("c", "hc", "sc", 4, 1.0)
    conv("cd", "sc", "hd", w(2, 4, 3, 3, k=2.0))
    conv("ce", "sc", "he", w(3, 4, 3, 3, k=2.0))
    nodes.append(helper.make_node("Concat", ["hd", "he"], ["cat2"], axis=-3, name="cat2"))
    neuron("d", "cat2", "sd", 5, 0.9)
    inits.append(_init("fc.w", w(3, 5, k=3.0)))
    nodes += [helper.make_node("GlobalAveragePool", ["sd"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w"], ["y"], transB=1, name="fc")]
    return _model(nodes, "cat", _vi("x", ["N", 2, 6, 6]), _vi("y", ["N", 3]), inits)


def test_concat_maps_to_split_weights_and_matches_torch():
    from snnconvert.runtime import SpikingNetwork

    m = concat_net()
    x = np.random.default_rng(3).uniform(0, 1, size=(4, 2, 6, 6))
    lg = lower(m)
    # every concatenated part reaches its neurons through one synapse (the placement is folded)
    for name in "cd":
        assert [sum(o.is_process for o in t.ops) for t in lg.populations[name].terms] == [1, 1]
    assert [p.relay_of for p in lg.populations.values() if p.relay_of] == ["a"]
    torch_net = SpikingNetwork(m, cpu_kernels="torch").double()
    torch_net.record = True
    with torch.no_grad():
        y = torch_net(torch.as_tensor(x, dtype=torch.float64), T).numpy()
    net = lava.network(lava.quantize(m, x, T))
    ref = net.reference(x, T, fixed_point=False)
    np.testing.assert_allclose(ref.readout, y, atol=1e-9)
    got = net.run(x, T, fixed_point=False, batch_size=2, neuron_counts=True)
    for name in "abcd":
        assert ref.counts[name].sum() > 0
        np.testing.assert_array_equal(ref.counts[name], torch_net.spike_counts[name].numpy())
        np.testing.assert_array_equal(got.counts[name], ref.counts[name])
    got_q, ref_q = net.run(x, T, fixed_point=True, neuron_counts=True), net.reference(x, T, fixed_point=True)
    np.testing.assert_array_equal(got_q.readout, ref_q.readout)


def test_concat_of_rows_is_refused_by_name():
    n, inits = ir.make_neuron("n", "h", "s", np.float32(1.0), np.float32(0.5))
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["h"], name="conv"), n,
         helper.make_node("Concat", ["s", "s"], ["c"], axis=2, name="rows"),
         helper.make_node("Flatten", ["c"], ["y"], name="fl")],
        "g", [_vi("x", ["N", 1, 4, 4])], [_vi("y", ["N", 32])],
        [_init("w", np.ones((1, 1, 1, 1)))] + inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(m)
    with pytest.raises(TargetError, match="only channel concatenation") as e:
        lower(m)
    assert e.value.node == "rows" and e.value.op == "Concat"


def keras_net(seed: int = 4, transpose_into_conv: bool = False) -> onnx.ModelProto:
    """tf2onnx shape: NHWC input transposed to NCHW, NCHW -> NHWC before the flatten,
    a classifier output reshaped to [N, classes, 1, 1]."""
    rng = np.random.default_rng(seed)
    inits = [_init("w0", rng.normal(size=(4, 3, 3, 3)) * 0.6), _init("b0", rng.normal(size=4) * 0.1),
             _init("shape", np.array([-1, 4 * 5 * 5], np.int64)),
             _init("w1", rng.normal(size=(4 * 5 * 5, 6)) * 0.4), _init("w2", rng.normal(size=(6, 3)) * 0.8),
             _init("oshape", np.array([0, 3, 1, 1], np.int64)),
             _init("w3", rng.normal(size=(2, 5, 1, 1)))]
    n0, i0 = ir.make_neuron("a", "h0", "sa", np.full([4, 1, 1], 1.0, np.float32), np.full([4, 1, 1], 0.5, np.float32))
    n1, i1 = ir.make_neuron("b", "h1", "sb", np.float32(0.9), np.float32(0.45))
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2], name="in_t"),
             helper.make_node("Conv", ["xt", "w0", "b0"], ["h0"], pads=[1, 1, 1, 1], name="conv"), n0,
             helper.make_node("Transpose", ["sa"], ["st"], perm=[0, 2, 3, 1], name="to_nhwc")]
    if transpose_into_conv:
        n2, i2 = ir.make_neuron("c", "h3", "sc", np.float32(1.0), np.float32(0.5))
        nodes += [helper.make_node("Conv", ["st", "w3"], ["h3"], name="bad"), n2,
                  helper.make_node("Flatten", ["sc"], ["y"], name="flat")]
        inits += i2
        out = _vi("y", ["N", 2 * 5 * 4])
    else:
        nodes += [helper.make_node("Reshape", ["st", "shape"], ["flat"], name="flatten"),
                  helper.make_node("MatMul", ["flat", "w1"], ["h1"], name="fc1"), n1,
                  helper.make_node("MatMul", ["sb", "w2"], ["logits"], name="fc2"),
                  helper.make_node("Reshape", ["logits", "oshape"], ["y"], name="out_reshape")]
        out = _vi("y", ["N", 3, 1, 1])
    return _model(nodes, "keras", _vi("x", ["N", 5, 5, 3]), out, inits + i0 + i1)


def test_transpose_before_flatten_folds_into_dense_and_matches_torch():
    from snnconvert.runtime import SpikingNetwork

    m = keras_net()
    x = np.random.default_rng(5).uniform(0, 1, size=(4, 5, 5, 3))
    net = lava.network(lava.quantize(m, x, T))
    kinds = [o.kind for o in net.graph.populations["b"].terms[0].ops]
    assert kinds == ["flatten", "dense"]  # the NHWC permutation lives in the dense weights
    torch_net = SpikingNetwork(m, cpu_kernels="torch").double()
    torch_net.record = True
    with torch.no_grad():
        y = torch_net(torch.as_tensor(x, dtype=torch.float64), T).numpy()
    got = net.run(x, T, fixed_point=False, batch_size=2, neuron_counts=True)
    np.testing.assert_allclose(got.readout, y.reshape(4, 3), atol=1e-9)
    for name in "ab":
        assert got.counts[name].sum() > 0
        np.testing.assert_array_equal(got.counts[name], torch_net.spike_counts[name].numpy())
    got_q, ref_q = net.run(x, T, fixed_point=True), net.reference(x, T, fixed_point=True)
    np.testing.assert_array_equal(got_q.readout, ref_q.readout)


def test_transpose_into_a_conv_is_refused():
    with pytest.raises(TargetError, match="Transpose of the spikes of 'a'"):
        lower(keras_net(transpose_into_conv=True))


def test_leaky_and_reset_to_zero_neurons_match_the_references(net_and_data):
    """LIF (12-bit decay, the int64 path of the fixed model) and reset-to-zero, float and fixed."""
    m, x = net_and_data
    m = onnx.ModelProto.FromString(m.SerializeToString())
    for node in m.graph.node:
        if ir.is_neuron(node):
            for a in node.attribute:
                if a.name == "leak":
                    a.f = 0.05
                if a.name == "reset" and node.name == "b":
                    a.s = b"zero"
    net = lava.network(lava.quantize(m, x, T))
    assert net.fixed["a"].dv > 0
    for fixed in (False, True):
        ref = net.reference(x, T, fixed_point=fixed)
        got = net.run(x, T, fixed_point=fixed, batch_size=3, neuron_counts=True)
        for name in "abcde":
            assert ref.counts[name].sum() > 0
            np.testing.assert_array_equal(got.counts[name], ref.counts[name])
        np.testing.assert_allclose(got.readout, ref.readout, atol=0 if fixed else 1e-12)


@pytest.mark.parametrize("window", [1, 4, 12, 32, 255])
def test_count_packing_round_trips_up_to_the_window(window):
    from snnconvert.targets.lava.procs.if_neuron import pack, pack_layout, unpack_counts

    counts = np.random.default_rng(window).integers(0, window + 1, size=1001)
    counts[:3] = [window, 0, window]
    words = -(-counts.size // pack_layout(window)[1])
    packed = pack(counts, words, window)
    assert packed.max() < 2.0 ** 53
    np.testing.assert_array_equal(unpack_counts(packed, counts.size, window), counts)


def test_fixed_point_gives_small_weight_channels_their_own_gain(net_and_data):
    """A channel with 1/100 the weights of its layer keeps ~7-bit weights (per-channel gain)."""
    m, x = net_and_data
    m = onnx.ModelProto.FromString(m.SerializeToString())
    w = next(t for t in m.graph.initializer if t.name == "c1.w")
    arr = numpy_helper.to_array(w).copy()
    arr[0] *= 0.01
    w.CopyFrom(numpy_helper.from_array(arr, "c1.w"))
    net = lava.network(lava.quantize(m, x, T))
    fx, pop = net.fixed["b"], net.graph.populations["b"]
    w_float = [o for o in pop.terms[0].ops if o.is_process][-1].weight
    g_c = np.broadcast_to(fx.gain, pop.shape)[:, 0, 0].reshape(-1, 1, 1, 1)
    err = np.abs(fx.weights[0] / g_c - w_float).reshape(4, -1).max(axis=1)
    peak = np.abs(w_float).reshape(4, -1).max(axis=1)
    assert np.all(err / peak < 0.02), err / peak
    ref_q, ref_f = net.reference(x, T, fixed_point=True), net.reference(x, T, fixed_point=False)
    assert np.array_equal(ref_q.counts["b"].sum((0, 2, 3)) > 0, ref_f.counts["b"].sum((0, 2, 3)) > 0)


def test_step_bias_runs_in_lava_float_and_fixed_as_in_torch(net_and_data):
    """A neuron step bias (fewer rows than T: none after them) becomes per-step bias banks: the
    zero-delay reference equals the torch runtime, and Lava float and fixed point equal their
    references spike for spike (fixed point bit-exact), over several batches."""
    from snnconvert.runtime import SpikingNetwork

    m, x = net_and_data
    m = onnx.load_from_string(m.SerializeToString())
    rng = np.random.default_rng(3)
    for n in ir.neurons(m):
        rows = rng.normal(size=(T - 4, *n.threshold.shape)).astype(np.float32) * 0.3
        ir.set_step_bias(m, n.node, rows - rows.mean(0))
    torch_net = SpikingNetwork(m, cpu_kernels="torch").double()
    torch_net.record = True
    with torch.no_grad():
        y = torch_net(torch.as_tensor(x, dtype=torch.float64), T).numpy()
    lg = lower(m)
    assert all(p.step_bias is not None for p in lg.neurons if p.relay_of is None)
    ref = simulate(lg, x.astype(np.float64), T)
    np.testing.assert_allclose(ref.readout, y, atol=1e-9)
    plain = simulate(lower(net_and_data[0]), x.astype(np.float64), T)
    assert any(not np.array_equal(ref.counts[k], plain.counts[k]) for k in "abcde")
    for name in "abcde":
        np.testing.assert_array_equal(ref.counts[name], torch_net.spike_counts[name].numpy())
    net = lava.network(lava.quantize(m, x, T))
    for fixed_point in (False, True):
        want = net.reference(x, T, fixed_point=fixed_point)
        got = net.run(x, T, fixed_point=fixed_point, batch_size=4, neuron_counts=True)  # 2 batches
        np.testing.assert_allclose(got.readout, want.readout, atol=0 if fixed_point else 1e-12)
        for name in "abcde":
            np.testing.assert_array_equal(got.counts[name], want.counts[name])
