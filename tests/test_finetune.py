"""Fine-tuning: surrogate gradients reach every parameter, training lowers the loss, tuned
parameters survive the IR round trip, checkpoints resume exactly, and user errors exit 2."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

import snnconvert
from snnconvert import ir
from snnconvert.cli import main
from snnconvert.errors import DataError, ModelLoadError
from snnconvert.finetune import FinetuneConfig, Trainer, finetune
from snnconvert.finetune import methods
from snnconvert.runtime import SpikingNetwork

FIXTURES = Path(__file__).resolve().parent / "fixtures"
T = 4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(reset: str = "subtract", leak: float = 0.0) -> onnx.ModelProto:
    """Conv(2->4) -> IF -> AvgPool -> Flatten -> Gemm(->6) -> IF -> Gemm(->3) on [N,2,6,6]."""
    rng = np.random.default_rng(3)
    arr = lambda a, n: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    th1 = np.array([0.8, 1.0, 1.2, 0.9], np.float32).reshape(4, 1, 1)
    th2 = np.full(6, 0.7, np.float32)
    n1, i1 = ir.make_neuron("if1", "c1", "s1", th1, th1 / 2, reset=reset, leak=leak)
    n2, i2 = ir.make_neuron("if2", "g1", "s2", th2, th2 / 2, reset=reset, leak=leak)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n1,
        helper.make_node("AveragePool", ["s1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flat"),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["g1"], name="fc1", transB=1),
        n2,
        helper.make_node("Gemm", ["s2", "w3", "b3"], ["y"], name="fc2", transB=1),
    ]
    inits = [arr(rng.normal(0, 0.6, (4, 2, 3, 3)), "w1"), arr(rng.normal(0.2, 0.1, 4), "b1"),
             arr(rng.normal(0, 0.5, (6, 36)), "w2"), arr(rng.normal(0.1, 0.1, 6), "b2"),
             arr(rng.normal(0, 0.5, (3, 6)), "w3"), arr(np.zeros(3), "b3"), *i1, *i2]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(model)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "digits.npz") as d:
        return dict(d)


@pytest.fixture(scope="module")
def digits_snn(digits) -> onnx.ModelProto:
    return snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:300], timesteps=T,
                              calibration="none")  # finetuning needs headroom to show


@pytest.mark.parametrize("surrogate", ["rect", "sigmoid", "atan"])
@pytest.mark.parametrize("reset,leak", [("subtract", 0.0), ("zero", 0.0), ("subtract", 0.2)])
def test_gradients_reach_every_parameter(surrogate: str, reset: str, leak: float) -> None:
    net = SpikingNetwork(_tiny(reset, leak), surrogate=surrogate)
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (64, 2, 6, 6)).astype(np.float32))
    y = torch.arange(64) % 3
    F.cross_entropy(methods.bptt_logits(net, x, T), y).backward()
    assert set(net.params) == {"w1", "b1", "w2", "b2", "w3", "b3", "if1__threshold", "if1__v_init",
                               "if2__threshold", "if2__v_init"}
    for key, p in net.params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, key


def test_snn2ann_gradients_and_forward_match_the_snn() -> None:
    """The ANN branch's forward equals the SNN readout; weights and thresholds get gradients."""
    net = SpikingNetwork(_tiny())
    table = methods.neuron_table(net)
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (32, 2, 6, 6)).astype(np.float32))
    logits, noisy = methods.snn2ann_logits(net, x, 8, 3, table)
    with torch.no_grad():
        reference = net(x, 8)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    assert set(noisy) == {"if1", "if2"} and all(0.0 <= v <= 1.0 for v in noisy.values())
    F.cross_entropy(logits, torch.arange(32) % 3).backward()
    for key in ("w1", "b1", "w2", "w3", "if1__threshold", "if2__threshold"):
        assert net.params[key].grad is not None and net.params[key].grad.abs().sum() > 0, key


def test_sharpened_twin_is_the_rate_limit_ann_at_zero_sharpness() -> None:
    model = _tiny()
    net = SpikingNetwork(model)
    x = np.random.default_rng(2).uniform(0, 1, (16, 2, 6, 6)).astype(np.float32)
    with torch.no_grad():
        out = methods.sharpen_logits(net, torch.from_numpy(x), 0.0, methods.neuron_table(net))
    np.testing.assert_allclose(out.numpy(), snnconvert.api.ann_outputs(model, x), rtol=1e-4, atol=1e-5)


def _train_loss(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    net = SpikingNetwork(model)
    with torch.no_grad():
        return float(F.cross_entropy(net(torch.from_numpy(x), T), torch.from_numpy(y)))


@pytest.mark.parametrize("options", [{"method": "bptt"}, {"method": "snn2ann"},
                                     {"method": "bptt", "sharpen_epochs": 1, "surrogate": "rect"},
                                     {"method": "bptt", "leak": 0.05, "train_thresholds": False}])
def test_finetune_lowers_the_loss(digits, digits_snn, options) -> None:
    x, y = digits["x_train"][:384], digits["y_train"][:384]
    before = _train_loss(digits_snn, x, y)
    tuned, history = finetune(digits_snn, x, y, digits["x_test"][:200], digits["y_test"][:200],
                              timesteps=T, epochs=2, lr=2e-3, batch_size=64, **options)
    after = _train_loss(tuned, x, y)
    assert after < 0.8 * before, (before, after)
    assert len(history.epochs) == 2 + options.get("sharpen_epochs", 0)
    assert history.epochs[-1].val_accuracy >= history.initial_val_accuracy - 0.01
    thresholds = [n.threshold for n in ir.neurons(tuned)]
    assert all((t > 0).all() for t in thresholds)
    original = [n.threshold for n in ir.neurons(digits_snn)]
    changed = any(not np.array_equal(a, b) for a, b in zip(thresholds, original))
    assert changed == options.get("train_thresholds", True) or options["method"] == "snn2ann"
    if "leak" in options:
        assert all(n.leak == pytest.approx(0.05) for n in ir.neurons(tuned))


def test_tuned_ir_round_trips_and_deploys(digits, digits_snn, tmp_path) -> None:
    x, y = digits["x_train"][:256], digits["y_train"][:256]
    trainer = Trainer(digits_snn, FinetuneConfig(timesteps=T, epochs=1, batch_size=64))
    trainer.run_epoch(x, y, progress=False)
    trainer.epoch = 1
    path = tmp_path / "tuned.snn.onnx"
    ir.save(trainer.export(), path)
    loaded = ir.load(path)
    onnx.checker.check_model(loaded)
    xt = digits["x_test"]
    with torch.no_grad():
        expected = trainer.net(torch.from_numpy(xt), T).numpy()
    got = SpikingNetwork(loaded).simulate(xt, [T]).readout[T]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert ir.get_meta(loaded, "timesteps") == str(T)
    assert not np.array_equal(ir.get_initializer(loaded, ir.neurons(loaded)[0].node.input[1]),
                              ir.neurons(digits_snn)[0].threshold)
    nir_target = pytest.importorskip("snnconvert.targets.nir")
    with pytest.warns(UserWarning):
        assert nir_target.compile(loaded, tmp_path / "tuned.nir").exists()


@contextlib.contextmanager
def crash_in_epoch(monkeypatch, epoch: int):
    """Inside the block, training stops with KeyboardInterrupt when it reaches ``epoch``
    (0-based), as a killed run would; the block asserts that it did."""
    run_epoch = Trainer.run_epoch

    def crashing(self, *args, **kwargs):
        if self.epoch == epoch:
            raise KeyboardInterrupt
        return run_epoch(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", crashing)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(Trainer, "run_epoch", run_epoch)


def test_checkpoint_resume_continues_where_it_stopped(digits, digits_snn, tmp_path, monkeypatch) -> None:
    x, y = digits["x_train"][:192], digits["y_train"][:192]
    xv, yv = digits["x_test"][:100], digits["y_test"][:100]
    common = dict(timesteps=T, epochs=3, batch_size=64, lr=2e-3)
    straight, h_straight = finetune(digits_snn, x, y, xv, yv, **common)

    ck = tmp_path / "run.ckpt"
    with crash_in_epoch(monkeypatch, 2):
        finetune(digits_snn, x, y, xv, yv, checkpoint=ck, **common)
    resumed, h_resumed = finetune(digits_snn, x, y, xv, yv, checkpoint=ck, resume=ck, **common)
    assert [e.epoch for e in h_resumed.epochs] == [1, 2, 3]
    assert h_resumed.initial_val_accuracy == h_straight.initial_val_accuracy
    assert h_resumed.epochs[-1].val_accuracy == h_straight.epochs[-1].val_accuracy
    for a, b in zip(straight.graph.initializer, resumed.graph.initializer):
        np.testing.assert_allclose(numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-6, atol=1e-7)
    assert not all(np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
                   for a, b in zip(digits_snn.graph.initializer, resumed.graph.initializer))


def test_user_errors(digits, digits_snn) -> None:
    x, y = digits["x_train"][:64], digits["y_train"][:64]
    with pytest.raises(DataError, match="expects"):
        finetune(digits_snn, x[:, :, :4], y, epochs=1)
    with pytest.raises(DataError, match="labels"):
        finetune(digits_snn, x, None, epochs=1)
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        finetune(digits_snn, x, y + 5, epochs=1)
    with pytest.raises(ModelLoadError, match="not a converted SNN"):
        finetune(onnx.load(str(FIXTURES / "digits_cnn.onnx")), x, y, epochs=1)


def test_cli_finetune_and_bad_data(digits, digits_snn, tmp_path, capsys) -> None:
    model = tmp_path / "d.snn.onnx"
    ir.save(digits_snn, model)
    train, bad = tmp_path / "train.npz", tmp_path / "bad.npz"
    np.savez(train, x=digits["x_train"][:128], y=digits["y_train"][:128])
    np.savez(bad, x=digits["x_train"][:16])
    out = tmp_path / "t.snn.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(model), "--data", str(train), "--val", str(train), "-T", "2",
              "--epochs", "1", "-o", str(out)])
    assert exit_info.value.code == 0 and out.exists() and (tmp_path / "t.snn.onnx.ckpt").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(model), "--data", str(bad), "-o", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "has no labels 'y'" in err[-1]


def test_logit_scale_undoes_a_tiny_readout(digits, digits_snn) -> None:
    """A readout shrunk 1000x (as for a bias-free net fed x/255) gets a ~1000x larger fitted scale."""
    x, y = digits["x_train"][:256], digits["y_train"][:256]
    shrunk = onnx.ModelProto()
    shrunk.CopyFrom(digits_snn)
    gemm = next(n for n in shrunk.graph.node if n.op_type == "Gemm")
    for name in gemm.input[1:]:
        ir.set_initializer(shrunk, name, ir.get_initializer(shrunk, name) * 1e-3)
    normal = Trainer(digits_snn, FinetuneConfig(timesteps=T)).fit_logit_scale(x, y)
    small = Trainer(shrunk, FinetuneConfig(timesteps=T)).fit_logit_scale(x, y)
    assert 300 < small / normal < 3000
