"""The CUDA path: simulation, evaluation, bf16, fine-tuning (every method, delays, frames) and
the CLI on a GPU agree with the CPU. Skipped where torch sees no CUDA device (CI has none); run
on a GPU machine with ``python -m pytest tests/test_cuda.py``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import snnconvert
from snnconvert import ir
from snnconvert.cli import main
from snnconvert.finetune import finetune
from snnconvert.runtime import SpikingNetwork
from snnconvert.targets import get_target

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
T = 4


@pytest.fixture(scope="module")
def calibrated(digits) -> onnx.ModelProto:
    """The default conversion for T=8: what a user evaluates."""
    return snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:300], timesteps=8)


@pytest.fixture(scope="module")
def plain(digits) -> onnx.ModelProto:
    """An uncalibrated conversion: fine-tuning has headroom to show on it."""
    return snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:300], timesteps=T,
                              calibration="none")


def _loss(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, timesteps: int) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(SpikingNetwork(model)(torch.from_numpy(x), timesteps),
                                     torch.from_numpy(y)))


def test_simulation_on_cuda_matches_the_cpu(digits, calibrated) -> None:
    """Float sums run in another order on the GPU, so a spike may flip; the readouts and the
    predictions must still agree almost everywhere, at every T of one run."""
    x = digits["x_test"]
    ts = [1, 4, 8, 16]
    cpu = SpikingNetwork(calibrated).simulate(x, ts)
    gpu = SpikingNetwork(calibrated).to("cuda").simulate(x, ts)
    for t in ts:
        a, b = cpu.readout[t], gpu.readout[t]
        assert b.dtype == a.dtype and b.shape == a.shape
        assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.99, t
        assert np.median(np.abs(a - b)) <= 1e-5, t
        for layer, rate in cpu.layer_rates[t].items():
            assert gpu.layer_rates[t][layer] == pytest.approx(rate, abs=2e-3), (t, layer)


def test_evaluate_on_cuda_in_fp32_and_bf16(digits, calibrated) -> None:
    x, y = digits["x_test"], digits["y_test"]
    cpu = snnconvert.evaluate(calibrated, x, y, [4, 8])
    gpu = snnconvert.evaluate(calibrated, x, y, [4, 8], device="cuda")
    bf16 = snnconvert.evaluate(calibrated, x, y, [8], device="cuda", precision="bf16")
    assert gpu.ann_accuracy == cpu.ann_accuracy
    for a, b in zip(cpu.rows, gpu.rows):
        assert abs(a.accuracy - b.accuracy) <= 0.01 and abs(a.agreement - b.agreement) <= 0.01
    assert bf16.rows[0].agreement >= 0.9
    assert bf16.rows[0].accuracy >= cpu.rows[1].accuracy - 0.05


def test_frames_on_cuda_match_the_cpu(digits, calibrated) -> None:
    rng = np.random.default_rng(0)
    x = digits["x_test"][:200]
    frames = (rng.random((len(x), 8, *x.shape[1:])) < x[:, None]).astype(np.float32)
    cpu = snnconvert.evaluate(calibrated, frames, digits["y_test"][:200], [8])
    gpu = snnconvert.evaluate(calibrated, frames, digits["y_test"][:200], [8], device="cuda")
    assert abs(cpu.rows[0].accuracy - gpu.rows[0].accuracy) <= 0.01


@pytest.mark.parametrize("options", [
    {"method": "bptt"}, {"method": "snn2ann"}, {"method": "joint"},
    {"method": "bptt", "precision": "bf16"}, {"method": "bptt", "sharpen_epochs": 1},
    {"method": "bptt", "leak": 0.05, "train_leak": True}, {"method": "bptt", "delays": 2, "delay_init": "zero"}])
def test_finetune_on_cuda_lowers_the_loss_and_exports_for_the_cpu(digits, plain, options) -> None:
    x, y = digits["x_train"][:384], digits["y_train"][:384]
    before = _loss(plain, x, y, T)
    tuned, history = finetune(plain, x, y, digits["x_test"][:200], digits["y_test"][:200],
                              timesteps=T, epochs=2, lr=2e-3, batch_size=64, device="cuda", **options)
    onnx.checker.check_model(tuned)
    after = _loss(tuned, x, y, T)
    assert after < 0.9 * before, (before, after)
    assert history.epochs[-1].val_accuracy >= history.initial_val_accuracy - 0.02
    on_cpu = snnconvert.evaluate(tuned, digits["x_test"][:200], digits["y_test"][:200], [T])
    assert on_cpu.rows[0].accuracy == pytest.approx(history.epochs[-1].val_accuracy, abs=0.02)


def test_cli_eval_and_finetune_on_cuda(tmp_path, digits, plain, capsys) -> None:
    model = tmp_path / "d.snn.onnx"
    ir.save(plain, model)
    data = tmp_path / "d.npz"
    np.savez(data, x=digits["x_train"][:256], y=digits["y_train"][:256])
    out = tmp_path / "t.snn.onnx"
    for args in (["eval", str(model), "--data", str(data), "--timesteps", "4", "--device", "cuda"],
                 ["finetune", str(model), "--data", str(data), "-T", "4", "--epochs", "1",
                  "--device", "cuda", "-o", str(out)]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0, capsys.readouterr().err
    assert ir.neurons(ir.load(out))


def test_distillation_on_cuda_trains_as_on_the_cpu(digits) -> None:
    """``convert(device="cuda")`` trains the calibration's distillation on the GPU: the same
    schedule and guard as on the CPU, a network as faithful to the ANN (float order aside)."""
    x = digits["x_train"][:300]
    reports, messages = {}, {}
    for device in ("cpu", "cuda"):
        log: list[tuple[str, str]] = []
        snn = snnconvert.convert(FIXTURES / "digits_cnn.onnx", x, timesteps=4, calibration="full",
                                 device=device, log=log)
        messages[device] = [m for step, m in log if step == "distill-for-T"]
        reports[device] = snnconvert.evaluate(snn, digits["x_test"], digits["y_test"], [4]).rows[0]
    for device, lines in messages.items():
        assert len(lines) == 1 and lines[0].startswith("trained at T=4 (bptt) on 240 calibration sample(s) "
                                                       "for 8 epoch(s)"), (device, lines)
    assert abs(reports["cuda"].agreement - reports["cpu"].agreement) <= 0.01
    assert reports["cuda"].agreement >= 0.98


def test_the_torch_artifact_loads_onto_cuda(tmp_path, digits, calibrated) -> None:
    """A .pt written on the CPU (the deployment artifact) loads onto the GPU and runs there."""
    backend = get_target("torch")
    net = backend.load(backend.compile(calibrated, tmp_path / "net.pt"), "cuda")
    assert all(p.device.type == "cuda" for p in net.params.values())
    x = digits["x_test"][:200]
    got = net.simulate(x, 8).readout[8]
    expected = SpikingNetwork(calibrated).simulate(x, 8).readout[8]
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.99
