"""The torch simulator: exact neuron dynamics, time chunking, readout tail, gradients, write-back."""
import numpy as np
import onnx
import pytest
import torch

from helpers import mlp_ir, run_ort
from snnconvert import ir
from snnconvert.runtime import SpikingNetwork, ort_kernels

X = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)


def reference(m, x, steps):
    """Plain numpy step-by-step simulation of mlp_ir's Gemm -> IF -> Gemm."""
    arr = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    (n,) = ir.neurons(m)
    z = x @ arr["W1"].T + arr["b1"]
    v = np.broadcast_to(n.v_init, z.shape).astype(np.float32).copy()
    outs, counts = [], np.zeros_like(z)
    for _ in range(steps):
        v = v * (1 - n.leak) + z
        s = (v >= n.threshold).astype(np.float32)
        v = v - n.threshold * s if n.reset == "subtract" else v * (1 - s)
        counts += s
        outs.append((s * n.threshold) @ arr["W2"].T)
    return np.mean(outs, axis=0), counts


@pytest.mark.parametrize("reset,leak", [("subtract", 0.0), ("zero", 0.0), ("subtract", 0.2)])
def test_dynamics_match_a_step_by_step_reference(reset, leak):
    m = mlp_ir(threshold=0.8, v_init=0.4, reset=reset, leak=leak)
    net = SpikingNetwork(m)
    res = net.simulate(X, [3, 10], record=True)
    for t in (3, 10):
        ref, counts = reference(m, X, t)
        np.testing.assert_allclose(res.readout[t], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(net.spike_counts["if1"].numpy(), counts)
    assert res.firing_rate[10] == pytest.approx(counts.sum() / (5 * 8 * 10))


def test_time_chunks_and_readout_tail_do_not_change_results():
    m = mlp_ir(threshold=0.8, v_init=0.4)
    whole = SpikingNetwork(m, time_chunk=None).simulate(X, [1, 5, 17])
    chunked = SpikingNetwork(m, time_chunk=4).simulate(X, [1, 5, 17])
    auto = SpikingNetwork(m)
    res = auto.simulate(X, [1, 5, 17])
    assert auto._step_elements == 8  # the hidden layer's width, measured on the first step
    assert auto._chunk_steps(torch.zeros(len(X), 4), 17) == 16  # a tiny net: the largest chunk
    assert auto._chunk_steps(torch.zeros(10 ** 6, 4), 17) == 1  # a huge batch: one step at a time
    no_tail = SpikingNetwork(m)
    no_tail._tail = set()
    per_step = no_tail.simulate(X, [1, 5, 17])
    for t in (1, 5, 17):
        np.testing.assert_allclose(chunked.readout[t], whole.readout[t], atol=1e-5)
        np.testing.assert_allclose(res.readout[t], whole.readout[t], atol=1e-5)
        np.testing.assert_allclose(per_step.readout[t], whole.readout[t], atol=1e-5)


def test_time_chunk_is_validated():
    with pytest.raises(ValueError, match="time_chunk"):
        SpikingNetwork(mlp_ir(threshold=0.8, v_init=0.4), time_chunk=0)


def test_snn_approaches_the_rate_limit_ann_as_t_grows():
    m = mlp_ir(threshold=1.5, v_init=0.75)
    ann = run_ort(m, X)
    res = SpikingNetwork(m).simulate(X, [8, 64, 512])
    errs = [np.abs(res.readout[t] - ann).max() for t in (8, 64, 512)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02


def test_gradients_reach_every_parameter_and_write_back():
    m = mlp_ir(threshold=0.8, v_init=0.4)
    net = SpikingNetwork(m, surrogate="rect", alpha=1.0)
    out = net(torch.from_numpy(X), 6)
    out.pow(2).sum().backward()
    for key, p in net.params.items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, key
    with torch.no_grad():
        net.parameter("if1.threshold").mul_(2)
    back = net.export()
    (n,) = ir.neurons(back)
    np.testing.assert_allclose(n.threshold, np.full(8, 1.6, np.float32))
    onnx.checker.check_model(back)


def test_unknown_op_is_refused_by_name():
    m = mlp_ir()
    m.graph.node[0].op_type = "LRN"
    from snnconvert.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="node 'fc1' \\(LRN\\): the torch runtime has no implementation"):
        SpikingNetwork(m)


@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("reset,leak", [("subtract", 0.0), ("zero", 0.0), ("subtract", 0.1)])
def test_fused_kernel_is_bit_identical_to_the_torch_loop(constant, reset, leak):
    from snnconvert.runtime import fused, neurons

    gen = torch.Generator().manual_seed(1)
    v = torch.rand(6, 4, 5, 5, generator=gen) * 0.5
    th = torch.rand(4, 1, 1, generator=gen) + 0.5
    cur = torch.randn(6, 4, 5, 5, generator=gen) if constant else torch.randn(9, 6, 4, 5, 5, generator=gen)
    a = neurons.if_neuron_fast(cur, 9, v, th, reset, leak)
    b = fused.if_neuron_fused(cur, 9, v, th, reset, leak, stats=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    fired = a[0] > 0
    assert torch.equal(b[2], fired.sum(0).to(torch.int32))                 # per-neuron counts
    assert torch.equal(b[3], fired.flatten(1).sum(1)) and b[3].sum() > 0   # per-step totals


def test_cpu_kernels_give_the_torch_results(digits):
    import snnconvert as sc

    snn = sc.convert("tests/fixtures/digits_resnet.onnx", digits["x_train"][:100], timesteps=8)
    x = digits["x_test"][:64]
    fast_net, plain_net = SpikingNetwork(snn), SpikingNetwork(snn, cpu_kernels="torch")
    fast = fast_net.simulate(x, [4, 8], record=True)
    plain = plain_net.simulate(x, [4, 8], record=True)
    np.testing.assert_allclose(fast.readout[8], plain.readout[8], atol=1e-4)
    assert np.mean(fast.predictions(8) == plain.predictions(8)) == 1.0
    for t in (4, 8):  # rates counted inside the fused kernel = rates from the spike tensors
        assert fast.layer_rates[t] == pytest.approx(plain.layer_rates[t], rel=1e-3)
    for name, c in plain_net.spike_counts.items():
        assert torch.allclose(fast_net.spike_counts[name], c, atol=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("k,reset,leak", [(2, "subtract", 0.0), (3, "zero", 0.0), (2, "subtract", 0.1)])
def test_fused_neuron_and_pool_are_bit_identical_to_neurons_then_torch_pool(k, reset, leak, constant, dtype):
    from snnconvert.runtime import fused, neurons

    gen = torch.Generator().manual_seed(k)
    v = (torch.rand(3, 4, 7, 8, generator=gen) * 0.5).to(dtype)  # 7 x 8: the last row/column fall off
    th = (torch.rand(4, 1, 1, generator=gen) + 0.5).to(dtype)
    cur = torch.randn(3, 4, 7, 8, generator=gen) if constant else torch.randn(9, 3, 4, 7, 8, generator=gen)
    cur = cur.to(dtype)
    spikes, v_ref = neurons.if_neuron_fast(cur, 9, v, th, reset, leak)
    pooled_ref = torch.nn.functional.avg_pool2d(spikes.flatten(0, 1), k, k).unflatten(0, (9, 3))
    counts = torch.zeros(v.shape)
    pooled, v_end, counts, per_step = fused.if_neuron_pool_fused(cur, 9, v.clone(), th, k, reset, leak, counts)
    assert torch.equal(pooled, pooled_ref) and torch.equal(v_end, v_ref)
    fired = spikes > 0
    assert torch.equal(counts, fired.sum(0).float()) and counts.sum() > 0
    assert torch.equal(per_step, fired.flatten(1).sum(1))


def test_event_mode_runs_neurons_and_their_pool_as_one_kernel(digits):
    import snnconvert as sc

    snn = sc.convert("tests/fixtures/digits_cnn.onnx", digits["x_train"][:100], timesteps=8)
    x = digits["x_test"][:64]
    event, dense = SpikingNetwork(snn, synapses="event"), SpikingNetwork(snn, synapses="dense")
    event.use_engine = False  # the interpreter's fusion (the engine pools its uint8 trains)
    assert len(event._pooled) == 1  # Relu -> AveragePool
    pools = []
    original = event._neuron
    event._neuron = lambda node, *a: pools.append(a[-1]) or original(node, *a)
    a, b = event.simulate(x, [4, 8], record=True), dense.simulate(x, [4, 8], record=True)
    assert sum(p is not None for p in pools) == 2  # two time chunks of the pooled layer
    assert np.mean(a.predictions(8) == b.predictions(8)) >= 0.98
    for t in (4, 8):
        assert a.layer_rates[t] == pytest.approx(b.layer_rates[t], rel=1e-2)


def test_kernel_sessions_declare_the_oldest_ir_version_and_do_not_spin(monkeypatch) -> None:
    """A per-node onnxruntime kernel is a model of its own: stamped with the installed onnx's
    newest IR version, an older onnxruntime refuses it (onnx 1.23 writes IR 14, onnxruntime 1.30
    reads up to 13); the opset's own minimum is read by any onnxruntime that runs the opset.
    Its thread pool must not spin after a run: one pool per node spinning took the cores from
    the next (2 threads ran 3.5x slower than 1; bench_gpu.py measures 1 against all threads)."""
    built: list[tuple[onnx.ModelProto, object]] = []
    session = ort_kernels.ort.InferenceSession

    def recording(data, opts, *args, **kwargs):
        built.append((onnx.load_from_string(data), opts))
        return session(data, opts, *args, **kwargs)

    monkeypatch.setattr(ort_kernels.ort, "InferenceSession", recording)
    out = SpikingNetwork(mlp_ir()).simulate(X, 4).readout[4]
    assert built and np.isfinite(out).all()
    for kernel, opts in built:
        assert kernel.ir_version == onnx.helper.find_min_ir_version_for(list(kernel.opset_import)) < onnx.IR_VERSION
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _huge_pages_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not hasattr(__import__("resource"), "getrusage") or _huge_pages_always(),
                    reason="page-fault counts measure allocation only with 4 KB pages")
def test_per_node_sessions_share_one_arena_so_a_conv_does_not_fault_its_workspace_in_anew(monkeypatch):
    """A 3×3 Conv over 300 sample-steps of a 16×32×32 layer asks onnxruntime for a 39 MB
    workspace, above glibc's 32 MB mmap ceiling: allocated on its own, it is mapped and its pages
    faulted in at every call (about 14,000 a call here); from the process's shared arena, reused.
    Measured: 9,901 against 43,203 faults over three calls."""
    import resource

    from onnx import helper

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    x = (torch.rand(300, 16, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    w = torch.randn(16, 16, 3, 3, generator=torch.Generator().manual_seed(1))

    def faults() -> int:
        kernels = ort_kernels.OrtKernels(13)
        want = kernels.run(node, [x, w])
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            assert torch.equal(kernels.run(node, [x, w]), want)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    assert ort_kernels._shared_arena(), "this onnxruntime registers no shared arena"
    shared = faults()
    monkeypatch.setattr(ort_kernels, "_shared_arena", lambda: False)
    alone = faults()
    assert shared * 2 < alone, (shared, alone)
