"""Time-varying input (issue 12): input encodings and readouts in the IR, the frame axis
through every data reader, per-step input in the runtime against the numpy reference, the
trainable LIF leak, calibration and fine-tuning on frames, refusals by name."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import snnconvert
from conftest import FIXTURES
from helpers import mlp_ir, model as make_model, needs_lava, vi
from snnconvert import ir, ir_reference
from snnconvert.cli import main
from snnconvert.datasets import open_data
from snnconvert.errors import DataError, ModelLoadError, OptionError, TargetError
from snnconvert.finetune import finetune
from snnconvert.runtime import SpikingNetwork

ENCODINGS = ["analog", "frames", "rate:bernoulli:7", "rate:deterministic"]
READOUTS = ["membrane", "last", "window:3", "spikes"]


def with_meta(m: onnx.ModelProto, encoding: str = "analog", readout: str = "membrane") -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    ir.set_meta(out, "encoding", encoding)
    ir.set_meta(out, "readout", readout)
    return out


def mlp_spiking_output(seed: int = 0) -> onnx.ModelProto:
    """x[N,4] -> Gemm -> IF -> Gemm -> IF -> y[N,3]: the output is a neuron layer."""
    rng = np.random.default_rng(seed)
    n1, i1 = ir.make_neuron("if1", "h", "s", np.full([8], 1.0), np.full([8], 0.5))
    n2, i2 = ir.make_neuron("if2", "o", "y", np.array([0.5, 1.0, 2.0]), np.full([3], 0.25))
    m = make_model([helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1, name="fc1"), n1,
                    helper.make_node("Gemm", ["s", "W2"], ["o"], transB=1, name="fc2"), n2],
                   [vi("x", ["N", 4])], [vi("y", ["N", 3])],
                   {"W1": rng.normal(size=(8, 4)), "b1": rng.normal(size=8) * 0.3,
                    "W2": rng.normal(size=(3, 8))})
    m.graph.initializer.extend(i1 + i2)
    ir.ensure_domain(m)
    return m


@pytest.fixture(scope="module")
def digits_snn(digits):
    return snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:200], timesteps=8)


def bernoulli_frames(x: np.ndarray, steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((len(x), steps, *x.shape[1:])) < x[:, None]).astype(np.uint8)


# ----------------------------------------------------------------------------- the IR

def test_encoding_and_readout_specs_parse_and_print() -> None:
    assert str(ir.Encoding.parse("spikes")) == "frames"
    assert ir.Encoding.parse("rate") == ir.Encoding("rate", "bernoulli", 0)
    assert str(ir.Encoding.parse("rate:bernoulli:5")) == "rate:bernoulli:5"
    assert str(ir.Encoding.parse("rate:deterministic")) == "rate:deterministic"
    assert ir.Readout.parse("window:4") == ir.Readout("window", 4)
    with pytest.raises(ValueError, match="unknown input encoding 'poisson'"):
        ir.Encoding.parse("poisson")
    with pytest.raises(ValueError, match="the seed must be an integer"):
        ir.Encoding.parse("rate:bernoulli:x")
    with pytest.raises(ValueError, match="the window must be a positive number of steps"):
        ir.Readout.parse("window:0")
    with pytest.raises(ModelLoadError, match="readout 'spikes' needs the graph output 'y' to be a "
                                             "neuron's output"):
        ir.readout(with_meta(mlp_ir(), readout="spikes"))


def test_rate_uniforms_are_a_prefix_and_seeded() -> None:
    a, b = ir.rate_uniforms((2, 3), 4, 1), ir.rate_uniforms((2, 3), 9, 1)
    assert np.array_equal(a, b[:4]) and not np.array_equal(a, ir.rate_uniforms((2, 3), 4, 2))


# ------------------------------------------------------- runtime against the reference

@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_runtime_matches_the_reference(encoding: str, readout: str) -> None:
    m = with_meta(mlp_spiking_output(), encoding, readout)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (16, 4)).astype(np.float32)
    if encoding == "frames":
        x = bernoulli_frames(x, 6).astype(np.float32)
    ref = ir_reference.simulate(m, x, 6)
    net = SpikingNetwork(m, time_chunk=4)
    net.record = True
    with torch.no_grad():
        out = net(torch.from_numpy(x), 6).numpy()
    np.testing.assert_allclose(out, ref.readout, rtol=1e-5, atol=1e-5)
    for name, counts in ref.counts.items():
        assert np.array_equal(net.spike_counts[name].numpy(), counts), name
    sim = net.simulate(x, [2, 6], batch_size=5)  # checkpoints and batch splits change nothing
    np.testing.assert_allclose(sim.readout[6], ref.readout, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sim.readout[2], ir_reference.simulate(m, x, 2).readout, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("readout", ["membrane", "last", "window:3"])
def test_frames_through_a_cnn_match_the_reference(digits, digits_snn, readout: str) -> None:
    m = with_meta(digits_snn, "frames", readout)
    x = bernoulli_frames(digits["x_test"][:12], 5).astype(np.float32)
    ref = ir_reference.simulate(m, x, 5)
    sim = SpikingNetwork(m).simulate(x, 5, record=True)
    np.testing.assert_allclose(sim.readout[5], ref.readout, rtol=1e-4, atol=1e-5)


def test_constant_frames_run_as_the_analog_input(digits, digits_snn) -> None:
    """Frames that repeat the image give the analog run's spikes (the per-step plan is exact)."""
    x = digits["x_test"][:20]
    frames = np.repeat(x[:, None], 8, axis=1)
    net = SpikingNetwork(digits_snn)
    a = net.simulate(x, [4, 8], record=True)
    counts_a = {k: v.clone() for k, v in net.spike_counts.items()}
    b = net.simulate(frames, [4, 8], record=True)
    for t in (4, 8):
        np.testing.assert_allclose(a.readout[t], b.readout[t], rtol=1e-5, atol=1e-6)
    for k, v in counts_a.items():
        assert torch.equal(v, net.spike_counts[k]), k


def test_bernoulli_rate_code_does_not_depend_on_the_batch() -> None:
    m = with_meta(mlp_ir(), "rate:bernoulli:3")
    x = np.random.default_rng(0).uniform(0, 1, (9, 4)).astype(np.float32)
    net = SpikingNetwork(m)
    whole = net.simulate(x, 16).readout[16]
    alone = np.concatenate([net.simulate(x[i:i + 1], 16).readout[16] for i in range(len(x))])
    np.testing.assert_allclose(whole, alone, rtol=1e-6)


def test_data_that_does_not_fit_the_encoding_is_refused() -> None:
    frames = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(DataError, match=r"the input has a time axis \(\[2, 3, 4\]\) but the "
                                        r"network's input encoding 'rate:bernoulli:0'"):
        SpikingNetwork(with_meta(mlp_ir(), "rate"))(torch.from_numpy(frames), 2)
    with pytest.raises(DataError, match="the input has no time axis"):
        SpikingNetwork(with_meta(mlp_ir(), "frames"))(torch.zeros(2, 4), 2)
    with pytest.raises(DataError, match=r"^the input holds T=3 steps per sample; T=5 was asked for Hint: Use T <= 3"):
        SpikingNetwork(mlp_ir())(torch.from_numpy(frames), 5)


# --------------------------------------------------------------------- LIF leak

def test_lif_leak_is_trainable_and_written_back() -> None:
    m = mlp_ir(threshold=0.5, v_init=0.25, leak=0.2)
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (32, 6, 4)).astype(np.float32))
    net = SpikingNetwork(m)
    leak = net.leaks["if1"]
    leak.requires_grad_(True)
    net(x, 6).pow(2).sum().backward()
    assert leak.grad is not None and float(leak.grad) != 0.0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.params.values())
    with torch.no_grad():
        leak.fill_(0.3)
    exported = net.export()
    assert ir.neurons(exported)[0].leak == pytest.approx(0.3)
    with torch.no_grad():  # the exported leak is the one the network ran
        np.testing.assert_allclose(SpikingNetwork(exported)(x, 6).numpy(), net(x, 6).numpy(), rtol=1e-6)


def _trained_leak_runs_on_lava(tuned: onnx.ModelProto, x: np.ndarray, calib: np.ndarray) -> None:
    """The trained per-layer leaks reach Lava: float spike counts equal the torch runtime's
    (float64) on frames; fixed point decays by round(leak * 4096) / 4096 per step, bit-exact
    with its integer reference."""
    pytest.importorskip("snnconvert.targets.lava")
    from snnconvert.targets import get_target

    lava = get_target("lava")
    net = SpikingNetwork(tuned, cpu_kernels="torch").double()
    net.record = True
    with torch.no_grad():
        net(torch.as_tensor(x, dtype=torch.float64), x.shape[1])
    lf = lava.network(tuned).run(x, x.shape[1], fixed_point=False, neuron_counts=True)
    for name, counts in net.spike_counts.items():
        np.testing.assert_array_equal(lf.counts[name], counts.numpy(), err_msg=name)
    fixed = lava.network(lava.quantize(tuned, calib))
    assert {n.name: fixed.fixed[n.name].dv for n in ir.neurons(tuned)} == \
        {n.name: int(np.rint(n.leak * 4096)) for n in ir.neurons(tuned)}
    lq, rq = fixed.run(x, x.shape[1], neuron_counts=True), fixed.reference(x, x.shape[1])
    np.testing.assert_array_equal(lq.readout, rq.readout)
    for name in rq.counts:
        np.testing.assert_array_equal(lq.counts[name], rq.counts[name], err_msg=name)


def test_finetune_on_frames_with_a_trained_leak(digits, digits_snn) -> None:
    snn = onnx.ModelProto()
    snn.CopyFrom(digits_snn)
    x = bernoulli_frames(digits["x_train"][:128], 4)
    tuned, history = finetune(snn, x, digits["y_train"][:128], timesteps=4, epochs=1, lr=1e-3,
                              batch_size=32, leak=0.05, train_leak=True)
    leaks = [n.leak for n in ir.neurons(tuned)]
    assert all(0 <= v < 1 for v in leaks) and any(abs(v - 0.05) > 1e-6 for v in leaks)
    assert np.isfinite(history.epochs[0].train_loss)
    _trained_leak_runs_on_lava(tuned, x[:6].astype(np.float32), x[:64].astype(np.float32))
    tuned2, _ = finetune(snn, x, digits["y_train"][:128], timesteps=4, epochs=1, method="snn2ann",
                         batch_size=32)
    assert SpikingNetwork(tuned2).simulate(x[:8].astype(np.float32), 4).readout[4].shape == (8, 10)


# ------------------------------------------------------------------- data and commands

def test_frame_axis_through_every_reader(tmp_path, digits, digits_snn) -> None:
    x = bernoulli_frames(digits["x_test"][:40], 6)
    y = digits["y_test"][:40]
    np.savez(tmp_path / "f.npz", x=x, y=y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "shards").mkdir()
    np.savez(tmp_path / "shards" / "a.npz", x=x[:25], y=y[:25])
    np.savez(tmp_path / "shards" / "b.npz", x=x[25:], y=y[25:])
    shape = [1, 8, 8]
    expected = None
    for path in ("f.npz", "x.npy", ".", "shards"):
        source = open_data(tmp_path / path, shape=shape, labels=True, what="evaluation")
        assert tuple(source.sample_shape) == (6, 1, 8, 8), path
        report = snnconvert.evaluate(digits_snn, source, None, [6])
        accuracy = report.rows[0].accuracy
        expected = accuracy if expected is None else expected
        assert accuracy == expected, path
    assert expected > 0.5


def test_eval_uses_the_data_length_and_refuses_a_longer_t(tmp_path, digits, digits_snn, capsys) -> None:
    model = tmp_path / "d.snn.onnx"
    ir.save(digits_snn, model)
    data = tmp_path / "frames.npz"
    np.savez(data, x=bernoulli_frames(digits["x_test"][:50], 4), y=digits["y_test"][:50])
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(model), "--data", str(data)])
    assert exit_info.value.code == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[-1].split()[0] == "4" and len(rows) == 3  # one row: T = the data's length
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(model), "--data", str(data), "--timesteps", "2,8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: evaluation data {data} holds T=4 steps per sample; "
                          "T=8 was asked for")


def test_calibration_on_frames_takes_every_step(digits) -> None:
    """Frames repeating the image calibrate exactly as the image; every step counts. (The
    statistics pass: layer-by-layer calibration for T runs on static inputs only.)"""
    x = digits["x_train"][:100]
    static = snnconvert.convert(FIXTURES / "digits_cnn.onnx", x, timesteps=8, calibration="none")
    frames = snnconvert.convert(FIXTURES / "digits_cnn.onnx", np.repeat(x[:, None], 3, axis=1),
                                timesteps=8, calibration="none")
    for a, b in zip(ir.neurons(static), ir.neurons(frames)):
        np.testing.assert_allclose(a.threshold, b.threshold, rtol=1e-6)


def test_convert_records_encoding_and_readout(digits) -> None:
    snn = snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:50], timesteps=8,
                             encoding="rate:deterministic", readout="window:4")
    assert str(ir.encoding(snn)) == "rate:deterministic" and str(ir.readout(snn)) == "window:4"
    with pytest.raises(OptionError, match="unknown readout 'mean'"):
        snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:50], readout="mean")
    with pytest.raises(OptionError, match="readout 'spikes' needs a neuron at the network's output"):
        snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:50], readout="spikes")


@needs_lava
def test_lava_runs_frames_through_evaluate(digits, digits_snn) -> None:
    """evaluate(target="lava") takes spike frames [N, T, ...] (T = the data's length, or the
    prefixes asked for) and answers what the torch runtime answers; a longer T is refused."""
    from snnconvert.targets import get_target

    frames = bernoulli_frames(digits["x_test"][:6], 5).astype(np.float32)
    got = snnconvert.evaluate(digits_snn, frames, digits["y_test"][:6], [3, 5], target="lava")
    want = snnconvert.evaluate(digits_snn, frames, digits["y_test"][:6], [3, 5])
    assert [(r.timesteps, r.accuracy, r.agreement) for r in got.rows] == \
        [(r.timesteps, r.accuracy, r.agreement) for r in want.rows]
    with pytest.raises(DataError, match="the input holds T=5 steps per sample; T=6 was asked for"):
        get_target("lava").evaluate(digits_snn, frames, [6])


@needs_lava
@pytest.mark.parametrize("encoding", ["frames", "rate:bernoulli:2"])
def test_lava_spike_count_readout_is_the_output_neurons_count(encoding) -> None:
    """The ``spikes`` readout on Lava: the output neurons' own counts, equal to the torch runtime
    (float64) and the IR reference in float, bit-exact with the integer reference in fixed point."""
    from snnconvert.targets import get_target

    lava = get_target("lava")
    snn = with_meta(mlp_spiking_output(), encoding, "spikes")
    x = np.random.default_rng(3).uniform(0, 1, (5, 4)).astype(np.float32)
    if encoding == "frames":
        x = bernoulli_frames(x, 7).astype(np.float32)
    ref = ir_reference.simulate(snn, x, 7)
    with torch.no_grad():
        torch64 = SpikingNetwork(snn, cpu_kernels="torch").double()(torch.as_tensor(x, dtype=torch.float64), 7)
    net = lava.network(snn)
    got = net.run(x, 7, fixed_point=False)
    np.testing.assert_array_equal(got.readout, ref.readout)
    np.testing.assert_array_equal(got.readout, torch64.numpy())
    assert got.readout.sum() > 0 and np.array_equal(got.readout, np.rint(got.readout))
    fixed = lava.network(lava.quantize(snn, x))
    lq, rq = fixed.run(x, 7, neuron_counts=True), fixed.reference(x, 7)
    np.testing.assert_array_equal(lq.readout, rq.readout)
    np.testing.assert_array_equal(lq.readout, lq.counts["if2"])


@needs_lava
def test_lava_declares_every_encoding_and_readout_the_ir_records() -> None:
    """One place (targets/lava/support.py) says what Lava runs; it covers everything ir.py
    defines, so a new encoding or readout cannot reach Lava undeclared."""
    from snnconvert.targets import get_target
    from snnconvert.targets.lava import support

    assert set(support.ENCODINGS) == {str(ir.Encoding.parse(e).kind) for e in ir.ENCODINGS}
    assert set(support.READOUTS) | set(support.REFUSED_READOUTS) == set(ir.READOUTS)
    for enc in ("analog", "frames", "spikes", "rate:bernoulli:1", "rate:deterministic"):
        for out in ("membrane", "last", "window:3", "spikes"):
            get_target("lava").check_io(ir.Encoding.parse(enc), ir.Readout.parse(out))


@needs_lava
def test_nmnist_recordings_run_through_a_converted_network_on_torch_and_lava(tmp_path, digits,
                                                                             digits_snn) -> None:
    """N-MNIST binary -> read -> binned frames [T, 1, 8, 8] -> a converted network: the shipped
    recording (5 events) and a saccade stream of a test digit written in the N-MNIST format and
    read back. Torch (float64) and Lava float spike for spike, Lava fixed point bit-exact with
    its integer reference, on these graded event-count frames."""
    from snnconvert import events
    from snnconvert.targets import get_target

    steps = 6
    shipped = events.read_nmnist(FIXTURES / "tiny_nmnist.bin")
    digit = np.kron(digits["x_test"][0, 0], np.ones((4, 4), np.float32))[2:30, 2:30]
    events.write_nmnist(tmp_path / "digit.bin", events.emulate_saccades(digit, rng=1))
    emulated = events.read_nmnist(tmp_path / "digit.bin")
    assert len(shipped) == 5 and len(emulated) > 1000
    x = []
    for rec in (emulated, shipped):
        full = events.to_frames(rec, events.NMNIST_SENSOR, n_time_bins=steps)
        assert full.shape == (steps, 2, 34, 34) and int(full.sum()) == len(rec)
        small = events.to_frames(events.fit_events(rec, events.NMNIST_SENSOR, (8, 8), "scale"), (8, 8),
                                 n_time_bins=steps).sum(1, keepdims=True)  # ON + OFF
        assert small.shape == (steps, 1, 8, 8) and int(small.sum()) == len(rec)
        x.append(small / 8.0)
    x = np.stack(x).astype(np.float32)

    net = SpikingNetwork(digits_snn, cpu_kernels="torch").double()
    net.record = True
    with torch.no_grad():
        net(torch.as_tensor(x, dtype=torch.float64), steps)
    lava = get_target("lava")
    lf = lava.network(digits_snn).run(x, steps, fixed_point=False, neuron_counts=True)
    for name, counts in net.spike_counts.items():
        np.testing.assert_array_equal(lf.counts[name], counts.numpy(), err_msg=name)
    assert all(int(c[0].sum()) > 0 for c in lf.counts.values())  # the digit drives every layer
    fixed = lava.network(lava.quantize(digits_snn, x))
    lq, rq = fixed.run(x, steps, neuron_counts=True), fixed.reference(x, steps)
    np.testing.assert_array_equal(lq.readout, rq.readout)
    for name in rq.counts:
        np.testing.assert_array_equal(lq.counts[name], rq.counts[name], err_msg=name)


def test_nir_runs_frames_like_the_torch_runtime(tmp_path, digits_snn) -> None:
    """A losslessly exported network on spike frames: the NIR graph's readout equals the torch
    runtime's; rate encodings and other readouts are refused by name."""
    from test_nir import _cnn
    from snnconvert.targets import get_target

    nir_target = get_target("nir")
    model = with_meta(_cnn(reset="zero", v_init="zero"), "frames")
    path = nir_target.compile(model, tmp_path / "m.nir", strict=True)
    x = bernoulli_frames(np.random.default_rng(2).uniform(0, 1, (16, 2, 8, 8)).astype(np.float32), 12)
    x = x.astype(np.float32)
    ours = nir_target.evaluate(path, x, [4, 12])
    ref = SpikingNetwork(model).simulate(x, [4, 12])
    for t in (4, 12):
        np.testing.assert_allclose(ours.readout[t], ref.readout[t], rtol=1e-4, atol=1e-4)
        assert ours.spikes[t] == pytest.approx(ref.spikes[t])
    with pytest.raises(DataError, match="the input holds T=12 steps per sample; T=13 was asked for"):
        nir_target.evaluate(path, x, [13])
    with pytest.raises(TargetError, match="the nir target takes each step's input as it is given and "
                                          "has no rate encoder; this network's input encoding is "
                                          "'rate:deterministic'"):
        nir_target.export(with_meta(digits_snn, "rate:deterministic"))
    with pytest.raises(TargetError, match="the nir target reads the mean membrane; this network's "
                                          "readout is 'window:2'"):
        nir_target.export(with_meta(digits_snn, readout="window:2"))


def test_report_and_finetune_commands_take_the_data_length(tmp_path, digits, digits_snn, capsys) -> None:
    from snnconvert.api import run_report

    model = tmp_path / "d.snn.onnx"
    ir.save(digits_snn, model)
    data = tmp_path / "frames.npz"
    np.savez(data, x=bernoulli_frames(digits["x_train"][:64], 3), y=digits["y_train"][:64])
    assert run_report(model, data).data["timesteps"] == 3
    with pytest.raises(DataError, match=f"^report data {data} holds T=3 steps per sample; T=4 was asked for"):
        run_report(model, data, 4)
    out = tmp_path / "t.snn.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(model), "--data", str(data), "--val", str(data), "--epochs", "1",
              "--train-leak", "-o", str(out)])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("validation accuracy at T=3 after 1 epoch(s)") for line in lines)
    assert ir.timesteps(ir.load(out)) == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(model), "--data", str(data), "-T", "5", "-o", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: training data {data} holds T=3 steps per sample; T=5 was asked for")


@needs_lava
def test_convert_refuses_an_encoding_the_target_cannot_run_before_calibrating() -> None:
    with pytest.raises(DataError, match="calibration needs data"):  # lava runs every encoding
        snnconvert.convert(FIXTURES / "digits_cnn.onnx", None, encoding="rate", readout="window:3",
                           target="lava")
    with pytest.raises(TargetError, match="the nir target takes each step's input as it is given"):
        snnconvert.convert(FIXTURES / "digits_cnn.onnx", None, encoding="rate", target="nir")
    with pytest.raises(DataError, match="calibration needs data"):  # frames pass the NIR check
        snnconvert.convert(FIXTURES / "digits_cnn.onnx", None, encoding="frames", target="nir")
