"""Learnable synaptic delays: the DelayDense op (semantics, runtime, registry), DCLS training
(gradients to positions, σ schedule, rounding at the end, CLI), the timing task and the NIR
export of delays."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import snnconvert
from snnconvert import ir, ir_reference
from snnconvert.cli import main
from snnconvert.errors import OptionError
from snnconvert.events import TimingTask
from snnconvert.finetune import FinetuneConfig, finetune
from snnconvert.finetune.delays import SIGMA_END, sigma_at
from snnconvert.ops import GraphView, lookup
from snnconvert.ops.delays import gaussian_kernel, onehot_kernel, rounded_kernel
from snnconvert.passes import add_delays
from snnconvert.runtime import SpikingNetwork, param_key

T, N, C, H, O = 12, 5, 6, 7, 3
FIXTURES = Path(__file__).parent / "fixtures"


def delay_ir(seed: int = 0, leak: float = 0.2, reset: str = "subtract", v0: float = 0.5,
             encoding: str = "frames", input_delays: bool = True) -> onnx.ModelProto:
    """x [N, C] per step -> DelayDense (D=4) -> LIF -> DelayDense (D=3) -> readout; without
    ``input_delays``: x -> Gemm -> IF -> DelayDense -> LIF -> DelayDense -> readout."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.8, (H, C)).astype(np.float32)
    w2 = rng.normal(0, 0.8, (O, H)).astype(np.float32)
    head, extra, src, n_in = [], [], "x", C
    if not input_delays:
        w0 = rng.normal(0, 0.8, (H, C)).astype(np.float32)
        n0, j0 = ir.make_neuron("n0", "h0", "s0", np.float32(1.0), np.float32(v0), reset=reset)
        head = [helper.make_node("Gemm", ["x", "w0"], ["h0"], transB=1, name="fc0"), n0]
        extra = [onnx.numpy_helper.from_array(w0, "w0")] + j0
        src, n_in = "s0", H
        w1 = rng.normal(0, 0.8, (H, n_in)).astype(np.float32)
    n1, i1 = ir.make_delay_dense("fc1", src, "h", w1, rng.integers(0, 5, (H, n_in)),
                                 rng.normal(0, 0.1, H), max_delay=4)
    s1, j1 = ir.make_neuron("n1", "h", "s", np.float32(1.0), np.float32(v0), reset=reset, leak=leak)
    n2, i2 = ir.make_delay_dense("fc2", "s", "y", w2, rng.integers(0, 4, (O, H)), max_delay=3)
    g = helper.make_graph(head + [n1, s1, n2], "delays", [helper.make_tensor_value_info("x", 1, ["N", C])],
                          [helper.make_tensor_value_info("y", 1, ["N", O])], extra + i1 + j1 + i2)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ir.ensure_domain(m)
    ir.set_meta(m, "encoding", encoding)
    ir.set_meta(m, "timesteps", str(T))
    onnx.checker.check_model(m)
    return m


def spikes(seed: int = 1, n: int = N) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, T, C)) < 0.3).astype(np.float32)


def test_one_synapse_delays_a_spike_by_its_delay():
    entry = lookup(helper.make_node(ir.DELAY_DENSE, [], [], domain=ir.DOMAIN))
    w = torch.tensor([[1.0, 2.0]])
    d = torch.tensor([[3, 0]])
    x = torch.zeros(8, 1, 2)
    x[1, 0, 0] = 1.0   # channel 0 at t=1 arrives at t=4
    x[2, 0, 1] = 1.0   # channel 1 at t=2 arrives at once
    y, history = entry.step({"max_delay": 5}, x[:4], None, w, d, torch.zeros(1))
    y2, _ = entry.step({"max_delay": 5}, x[4:], history, w, d, torch.zeros(1))
    got = torch.cat([y, y2])[:, 0, 0].tolist()
    assert got == [0, 0, 2, 0, 1, 0, 0, 0]


@pytest.mark.parametrize("chunk", [1, 5, None])
def test_runtime_matches_the_step_by_step_reference(chunk):
    m, x = delay_ir(), spikes()
    ref = ir_reference.simulate(m, x, T)
    assert ref.counts["n1"].sum() > 10  # the layer fires
    net = SpikingNetwork(m, cpu_kernels="torch", time_chunk=chunk).double()
    net.record = True
    with torch.no_grad():
        y = net(torch.as_tensor(x, dtype=torch.float64), T).numpy()
    np.testing.assert_array_equal(net.spike_counts["n1"].numpy(), ref.counts["n1"])
    np.testing.assert_allclose(y, ref.readout, rtol=1e-9, atol=1e-9)


def test_delays_change_the_output_and_the_rate_limit_ignores_them():
    """Zero delays give the plain dense network; the ONNX function (onnxruntime) is the rate limit."""
    import onnxruntime as ort

    m, x = delay_ir(), spikes()
    zero = onnx.ModelProto()
    zero.CopyFrom(m)
    for node in zero.graph.node:
        if ir.is_delay_dense(node):
            ir.set_initializer(zero, node.input[2], np.zeros_like(ir.get_initializer(zero, node.input[2])))
    a, b = (ir_reference.simulate(model, x, T).readout for model in (m, zero))
    assert np.abs(a - b).max() > 1e-3
    rng = np.random.default_rng(3)
    w, d, bias = rng.normal(size=(O, C)).astype(np.float32), rng.integers(0, 3, (O, C)), rng.normal(size=O)
    node, inits = ir.make_delay_dense("fc", "x", "y", w, d, bias)
    g = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", 1, ["N", C])],
                          [helper.make_tensor_value_info("y", 1, ["N", O])], inits)
    one = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(one)
    got = ort.InferenceSession(one.SerializeToString()).run(None, {"x": x[:, 0]})[0]
    np.testing.assert_allclose(got, x[:, 0] @ w.T + bias.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_registry_verdicts_and_event_rule():
    m = delay_ir()
    graph = GraphView(m)
    node = m.graph.node[0]
    assert lookup(node).verdict(node, {"max_delay": 4}, graph).detail.startswith(
        "dense 6->7 with per-synapse delays 0..4")
    bad = lookup(node).verdict(node, {"max_delay": 2}, graph)
    assert bad.status == "unsupported" and "max_delay=2" in bad.detail
    from snnconvert.ops.synapses import synapses, tensor_shapes

    counts = synapses(m, tensor_shapes(m))
    assert counts["n1"] == int(np.count_nonzero(ir.get_initializer(m, "fc1.weights")))


def test_gaussian_kernel_tends_to_the_rounded_one_hot_kernel_and_passes_gradients():
    w = torch.randn(4, 3, dtype=torch.float64)
    p = torch.tensor([[0.2, 1.7, 3.0]] * 4, dtype=torch.float64, requires_grad=True)
    sharp = gaussian_kernel(w, p, 0.1, 4)
    np.testing.assert_allclose(sharp.detach().numpy(), onehot_kernel(w, p.detach().round().long(), 4).numpy(),
                               rtol=1e-4, atol=1e-6)
    wide = gaussian_kernel(w, p, 1.0, 4)
    np.testing.assert_allclose(wide.sum(-1).detach().numpy(), w.numpy(), rtol=1e-6)  # weight preserved
    (wide * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    assert p.grad is not None and torch.all(p.grad.abs() > 0)


def test_rounded_kernel_runs_the_integer_delays_with_the_gaussian_gradient():
    w = torch.randn(3, 2, dtype=torch.float64)
    p = torch.tensor([[0.4, 2.6]] * 3, dtype=torch.float64, requires_grad=True)
    k = rounded_kernel(w, p, 0.5, 4)
    np.testing.assert_array_equal(k.detach().numpy(), onehot_kernel(w, torch.tensor([[0, 3]] * 3), 4).numpy())
    (k * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    assert torch.all(p.grad.abs() > 0)


def test_gradient_reaches_positions_through_the_network():
    m, x = delay_ir(), spikes()
    net = SpikingNetwork(m, cpu_kernels="torch")
    for p in net.delay_positions.values():
        p.requires_grad_(True)
    net.delay_sigma = 1.0
    out = net(torch.from_numpy(x), T)
    torch.nn.functional.cross_entropy(out * 5, torch.tensor([0, 1, 2, 0, 1])).backward()
    for key, p in net.delay_positions.items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, key


def test_sigma_is_annealed_over_the_first_quarter():
    assert sigma_at(0.0, 16) == pytest.approx(8.0)
    assert sigma_at(0.125, 16) == pytest.approx(np.sqrt(8.0 * SIGMA_END))
    assert sigma_at(0.25, 16) == pytest.approx(SIGMA_END) == sigma_at(0.9, 16)


def test_add_delays_rewrites_dense_layers_and_keeps_the_network_at_zero_delay(digits):
    """The digits CNN's classifier becomes a DelayDense; with zero delays it computes the same."""
    digits_snn = snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:100], timesteps=4,
                                    calibration="none")
    model, done = add_delays(digits_snn, 3, init="zero")
    assert done and all(ir.is_delay_dense(n) for n in model.graph.node if n.name in done)
    assert not any(n.op_type in ("Gemm", "MatMul") for n in model.graph.node if n.name in done)
    x = digits["x_test"][:20]
    a = SpikingNetwork(digits_snn, cpu_kernels="torch").simulate(x, 4).readout[4]
    b = SpikingNetwork(model, cpu_kernels="torch").simulate(x, 4).readout[4]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(OptionError, match="at least 1 step"):
        add_delays(digits_snn, 0)


@pytest.fixture(scope="module")
def timing():
    task = TimingTask(channels=6, classes=3, steps=20, spacing=2, jitter=1, noise=0.01)
    (x, y), (xt, yt) = task.sample(384, seed=1), task.sample(192, seed=2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 24), torch.nn.ReLU(), torch.nn.Linear(24, 3))
    import io

    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 6), buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)
    snn = snnconvert.convert(onnx.load_from_string(buf.getvalue()), x[:128], timesteps=20, encoding="frames",
                             reset="zero", v_init="zero", leak=0.9)
    return task, snn, (x, y), (xt, yt)


def test_timing_task_has_equal_spike_counts_across_classes(timing):
    task = timing[0]
    offsets = task.patterns()
    assert all(sorted(row) == list(range(0, task.span + 1, task.spacing)) for row in offsets)
    x, y = task.sample(600, seed=3)
    assert x.shape == (600, 20, 6) and set(np.unique(x)) <= {0.0, 1.0}
    per_class = [x[y == k].sum((1, 2)).mean() for k in range(task.classes)]
    assert max(per_class) - min(per_class) < 0.5  # ~6 pattern spikes + noise in every class
    with pytest.raises(OptionError, match="cannot hold a pattern"):
        TimingTask(channels=6, steps=8).sample(1)


def test_dcls_training_learns_rounds_and_beats_frozen_random_delays(timing):
    task, snn, (x, y), (xt, yt) = timing
    common = dict(timesteps=20, epochs=4, lr=3e-3, batch_size=32, logit_scale=10.0, delays=10)
    learned, hist = finetune(snn, x, y, xt, yt, config=FinetuneConfig(**common))
    frozen, _ = finetune(snn, x, y, xt, yt, config=FinetuneConfig(**common, train_delays=False))
    start, _ = add_delays(snn, 10, seed=0)
    for model in (learned, frozen):
        nodes = [n for n in model.graph.node if ir.is_delay_dense(n)]
        assert len(nodes) == 2
        for n in nodes:
            d = ir.get_initializer(model, n.input[2])
            assert d.dtype == np.int64 and d.min() >= 0 and d.max() <= 10
    initial = ir.get_initializer(start, "/0/Gemm.delays")
    assert np.array_equal(ir.get_initializer(frozen, "/0/Gemm.delays"), initial)
    assert np.mean(ir.get_initializer(learned, "/0/Gemm.delays") != initial) > 0.2
    # the last validation figure is the exported integer network's
    net = SpikingNetwork(learned, cpu_kernels="torch")
    with torch.no_grad():
        acc = float((net(torch.from_numpy(xt), 20).argmax(1).numpy() == yt).mean())
    assert acc == pytest.approx(hist.epochs[-1].val_accuracy)
    frozen_acc = float((SpikingNetwork(frozen, cpu_kernels="torch")(torch.from_numpy(xt), 20)
                        .argmax(1).numpy() == yt).mean())
    assert acc > frozen_acc + 0.1 and acc > 0.6
    assert ir.get_meta(learned, "finetune") and '"delays": 10' in ir.get_meta(learned, "finetune")


def test_a_delay_network_trains_again_with_and_without_learning_delays(timing):
    task, snn, (x, y), _ = timing
    cfg = dict(timesteps=20, epochs=1, lr=3e-3, batch_size=64, logit_scale=10.0)
    first, _ = finetune(snn, x[:128], y[:128], config=FinetuneConfig(**cfg, delays=8))
    kept, _ = finetune(first, x[:128], y[:128], config=FinetuneConfig(**cfg))
    again, _ = finetune(first, x[:128], y[:128], config=FinetuneConfig(**cfg, delays=8))
    d = "/0/Gemm.delays"
    assert np.array_equal(ir.get_initializer(kept, d), ir.get_initializer(first, d))
    assert not np.array_equal(ir.get_initializer(kept, "/0/Gemm.weights"), ir.get_initializer(first, "/0/Gemm.weights"))
    assert not np.array_equal(ir.get_initializer(again, d), ir.get_initializer(first, d))


def test_delays_need_bptt():
    with pytest.raises(OptionError, match="needs --method bptt"):
        FinetuneConfig(delays=4, method="snn2ann").validate()


def test_cli_finetune_with_delays(timing, tmp_path, capsys):
    task, snn, (x, y), _ = timing
    ir.save(snn, tmp_path / "t.snn.onnx")
    np.savez(tmp_path / "train.npz", x=x[:64], y=y[:64])
    with pytest.raises(SystemExit) as exc:
        main(["finetune", str(tmp_path / "t.snn.onnx"), "--data", str(tmp_path / "train.npz"),
              "--delays", "6", "--epochs", "1", "-o", str(tmp_path / "d.snn.onnx")])
    assert exc.value.code in (0, None), capsys.readouterr().err
    tuned = ir.load(tmp_path / "d.snn.onnx")
    assert sum(ir.is_delay_dense(n) for n in tuned.graph.node) == 2
    assert all(int(helper.get_attribute_value(n.attribute[0])) == 6
               for n in tuned.graph.node if ir.is_delay_dense(n))


def test_nir_export_holds_delay_nodes_and_matches_the_reference():
    nir = pytest.importorskip("nir")
    from snnconvert.targets import get_target

    m, x = delay_ir(reset="zero", v0=0.0), spikes()
    graph, losses = get_target("nir").export(m)
    assert not losses
    delays = {k: n for k, n in graph.nodes.items() if isinstance(n, nir.Delay)}
    assert sorted(delays) == ["fc1_delay", "fc2_delay"]  # one Delay node per delay synapse
    d1 = ir.get_initializer(m, "fc1.delays")
    want = [float(k) for i in range(d1.shape[1]) for k in np.unique(d1[:, i])]  # a copy per (channel, delay)
    assert delays["fc1_delay"].delay.tolist() == want
    result, counts = get_target("nir").NirSimulator(graph).simulate(x, T)
    ref = ir_reference.simulate(m, x, T)
    np.testing.assert_array_equal(counts[re.sub(r"[^0-9A-Za-z_]", "_", "n1")], ref.counts["n1"])
    np.testing.assert_allclose(result.readout[T], ref.readout, rtol=1e-4, atol=1e-5)
    # and through a file: nir.write / nir.read keep the Delay nodes
    import tempfile, os  # noqa: E401

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "g.nir")
        nir.write(path, graph)
        back = nir.read(path)
    assert sum(isinstance(n, nir.Delay) for n in back.nodes.values()) == len(delays)


def test_param_keys_of_delay_positions():
    net = SpikingNetwork(delay_ir(), cpu_kernels="torch")
    assert set(net.delay_positions) == {param_key("fc1"), param_key("fc2")}
    assert not any(p.requires_grad for p in net.delay_positions.values())


def test_lava_runs_batches_of_a_delay_network_back_to_back():
    """Several batches in one compiled Lava graph: spikes still in delay lines after a sample's
    T steps must not reach the next batch's window (float and fixed point)."""
    pytest.importorskip("snnconvert.targets.lava")
    from snnconvert.targets import get_target

    lava = get_target("lava")
    m, x = delay_ir(reset="zero", v0=0.0), spikes(n=9)
    ref = ir_reference.simulate(m, x, T)
    got = lava.network(m).run(x, T, fixed_point=False, neuron_counts=True, batch_size=3)
    np.testing.assert_array_equal(got.counts["n1"], ref.counts["n1"])
    np.testing.assert_allclose(got.readout, ref.readout, rtol=1e-9, atol=1e-9)
    fixed = lava.network(lava.quantize(m, x))
    got = fixed.run(x, T, fixed_point=True, neuron_counts=True, batch_size=3)
    want = fixed.reference(x, T, fixed_point=True)
    np.testing.assert_array_equal(got.readout, want.readout)
    np.testing.assert_array_equal(got.counts["n1"], want.counts["n1"])
