"""The neuron's step bias (a current per time step, FTBC-like): its calibration step lowers the
layer error it targets, its IR semantics (also past its steps) hold in the runtime, onnxruntime
runs it as the rate limit, save/load keep it, NIR refuses it by name."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from snnconvert import frontend, ir
from snnconvert.errors import TargetError
from snnconvert.ir_reference import simulate as reference
from snnconvert.passes.calibrate_for_t import default_steps
from snnconvert.passes.step_bias import FitStepBias
from snnconvert.runtime import SpikingNetwork
from snnconvert.runtime.network import param_key
from snnconvert.targets import get_target
from test_calibration import DIGITS_CNN, background_ann, background_images, calibrated, layer_errors
from test_lava import residual_net
from test_nir import _cnn


def with_step_biases(model: onnx.ModelProto, steps: int, seed: int = 3, scale: float = 0.3) -> onnx.ModelProto:
    """``model`` with a random zero-sum step bias of ``steps`` rows on every neuron."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for n in ir.neurons(out):
        rows = rng.normal(size=(steps, *n.threshold.shape)).astype(np.float32) * scale
        ir.set_step_bias(out, n.node, rows - rows.mean(0))
    return out


@pytest.mark.parametrize("graph", ["background", "digits"])
def test_step_bias_lowers_the_next_layers_error_on_held_out_samples(graph, digits):
    """After threshold search, bias and potential calibration, the step bias makes the first
    layer's spikes even in time where that lowers the error at T; measured on held-out samples
    with the full simulation, the second layer (fed by those spikes) gets closer to the ANN at
    T=4 and 8, and the step's own measurement never gets worse."""
    if graph == "background":
        ann, calib, held = background_ann(), background_images(256, 0), background_images(300, 1)
    else:
        ann = frontend.load_model(DIGITS_CNN)
        calib, held = digits["x_train"][:256], digits["x_train"][1000:1300]
    for steps in (4, 8):
        base, _ = calibrated(ann, calib, steps, default_steps())
        tuned, pass_ = calibrated(ann, calib, steps, default_steps(step_bias=True))
        for layer in pass_.layers.values():
            name, before, after = layer.history[-1]
            assert name == FitStepBias.name and after <= before
        second = ir.neurons(tuned)[1]
        assert second.step_bias is not None and second.step_bias.shape[0] == steps
        np.testing.assert_allclose(second.step_bias.sum(0), 0, atol=1e-5)
        b0 = layer_errors(base, held, steps)[second.name]
        b1 = layer_errors(tuned, held, steps, ann=base)[second.name]
        assert b1 < 0.985 * b0, (steps, b0, b1)


def test_fit_matches_the_running_count_to_the_ann_mean_at_every_step():
    """The fitted current brings each channel's spikes up to step t to t x the ANN's channel mean
    (to a spike per channel, within the per-step clamp), on a current that builds up over time."""
    from snnconvert.passes.layer_state import LayerState

    torch.manual_seed(0)
    steps, channels = 6, 3
    ramp = torch.linspace(0.2, 1.8, steps).reshape(steps, 1, 1, 1, 1)
    current = [ramp * torch.rand(steps, 40, channels, 2, 2) * 0.6]
    target = [torch.rand(40, channels, 2, 2) * 0.6]
    theta = torch.ones(channels, 1, 1)
    layer = LayerState("n", current, target, steps, theta=theta, v0=theta / 2,
                       bias=torch.zeros(channels, 1, 1))
    fitted = FitStepBias.fit(layer)
    layer.step_bias = fitted
    spikes = torch.stack([layer.spikes(c) for c in current])[0]  # [T, b, C, H, W] scaled by θ
    running = spikes.transpose(1, 2).reshape(steps, channels, -1).sum(2).cumsum(0)
    goal = torch.minimum(target[0], theta).transpose(0, 1).reshape(channels, -1).sum(1)
    t = torch.arange(1, steps + 1).reshape(-1, 1)
    assert torch.all((running - t * goal).abs() <= 1.0 + 1e-4), (running, t * goal)
    assert float(fitted.abs().max()) > 0.05  # the ramp needs it


def test_runtime_matches_the_reference_with_a_step_bias_and_past_its_steps():
    """Interpreter (dense, event kernels), event engine fallback and the float64 reference agree
    spike for spike; a step bias of S rows acts on steps 1..S only (a run of 2S steps equals the
    same bias padded with S zero rows); and it changes spikes (it is not ignored)."""
    base = residual_net()
    x = np.random.default_rng(1).uniform(0, 1, size=(6, 2, 8, 8)).astype(np.float32)
    short = with_step_biases(base, 5)
    padded = onnx.ModelProto()
    padded.CopyFrom(short)
    for n in ir.neurons(padded):
        ir.set_step_bias(padded, n.node, np.concatenate([n.step_bias, np.zeros_like(n.step_bias)]))
    steps = 10
    ref = reference(short, x, steps)
    assert any(not np.array_equal(ref.counts[k], reference(base, x, steps).counts[k]) for k in ref.counts)
    np.testing.assert_array_equal(reference(padded, x, steps).readout, ref.readout)
    net = SpikingNetwork(short, cpu_kernels="torch").double()
    net.record = True
    with torch.no_grad():
        y = net(torch.as_tensor(x, dtype=torch.float64), steps).numpy()
    np.testing.assert_allclose(y, ref.readout, atol=1e-9)
    for k, c in ref.counts.items():
        np.testing.assert_array_equal(net.spike_counts[k].numpy(), c)
    for synapses in ("dense", "event"):  # float32, chunked in time, onnxruntime kernels
        res = SpikingNetwork(short, synapses=synapses, time_chunk=3).simulate(x, [4, steps], record=True)
        np.testing.assert_allclose(res.readout[steps], ref.readout, atol=1e-4)


def test_a_neuron_hook_gets_the_synaptic_current_and_fires_with_the_step_bias():
    """Every one-step ANN twin (distillation's and fine-tuning's straight-through rates, pipe-S,
    Joint A-SNN's ANN branch) replaces the neurons through the hook by clip(current, 0, θ): it
    must get the synaptic current, without the step bias, so that the twin is the IR's rate
    limit, the same network as without a step bias; and a hook that fires the current it got runs
    the network spike for spike as without a hook."""
    base = residual_net()
    biased = with_step_biases(base, 4, scale=2.0)
    x = torch.as_tensor(np.random.default_rng(2).uniform(0, 1, size=(5, 2, 8, 8)), dtype=torch.float64)

    def twin(model: onnx.ModelProto) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        net, seen = SpikingNetwork(model, cpu_kernels="torch").double(), {}
        theta = {n.name: net.parameter(n.node.input[1]) for n in ir.neurons(model)}

        def hook(name, current, lead, fire):
            seen[name] = current
            return torch.minimum(torch.relu(current), theta[name])

        net.neuron_hook = hook
        with torch.no_grad():
            return net(x, 1), seen

    (plain, plain_currents), (got, got_currents) = twin(base), twin(biased)
    torch.testing.assert_close(got, plain)
    assert plain_currents.keys() == got_currents.keys() and len(got_currents) >= 3
    for name, current in plain_currents.items():
        torch.testing.assert_close(got_currents[name], current)
    net = SpikingNetwork(biased, cpu_kernels="torch").double()
    with torch.no_grad():
        expected = net(x, 6)
        net.neuron_hook = lambda name, current, lead, fire: fire(current)
        torch.testing.assert_close(net(x, 6), expected)
        assert not torch.allclose(expected, SpikingNetwork(base, cpu_kernels="torch").double()(x, 6))

def test_step_bias_is_a_buffer_saved_and_loaded(tmp_path):
    model = with_step_biases(residual_net(), 4)
    net = SpikingNetwork(model)
    names = {n.node.input[3] for n in ir.neurons(model)}
    assert not any(param_key(n) in net.params for n in names)  # never trained
    assert sum(1 for name, _ in net.named_buffers() if name.startswith("step_bias_")) == len(names)
    path = tmp_path / "m.snn.onnx"
    ir.save(net.export(), path)
    back = ir.load(path)
    for a, b in zip(ir.neurons(model), ir.neurons(back)):
        np.testing.assert_array_equal(a.step_bias, b.step_bias)
    onnx.checker.check_model(back, full_check=True)
    x = np.random.default_rng(0).uniform(0, 1, size=(3, 2, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(back.SerializeToString(), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(residual_net().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0], atol=1e-6)


def test_a_step_bias_must_sum_to_zero():
    model = residual_net()
    n = ir.neurons(model)[0]
    with pytest.raises(ValueError, match=r"the step bias of a must sum to zero over its steps"):
        ir.set_step_bias(model, n.node, np.ones((3, 4, 1, 1), np.float32))
    ir.set_step_bias(model, n.node, np.zeros((3, 4, 1, 1), np.float32))  # all zeros: none
    assert len(n.node.input) == 3


def test_nir_refuses_a_step_bias_by_node():
    model = _cnn(reset="zero", v_init="zero")
    n = ir.neurons(model)[1]
    ir.set_step_bias(model, n.node, np.array([0.1, -0.1], np.float32).reshape(2, 1, 1, 1)
                     * np.ones((1, 4, 1, 1), np.float32))
    with pytest.raises(TargetError) as err:
        get_target("nir").export(model)
    assert str(err.value) == (
        "node 'if2' (IF): its step bias (a current per time step, from calibration for T) has no "
        "NIR equivalent: NIR biases are constant in time. Hint: Convert with --calibration refit "
        "(no step bias), or use the torch or lava target.")


def test_temporal_calibration_writes_step_biases_and_nir_gets_refit(digits):
    from snnconvert import api

    calib = digits["x_train"][:128]
    snn = api.convert(DIGITS_CNN, calib, timesteps=4, calibration="temporal")
    assert [n.step_bias is not None for n in ir.neurons(snn)] == [False, True]  # analog first layer: none
    log: list = []
    plain = api.convert(DIGITS_CNN, calib, timesteps=4, calibration="temporal", target="nir", log=log)
    assert all(n.step_bias is None for n in ir.neurons(plain))
    assert ("calibrate-for-T", "no step bias: the nir target holds none (calibration 'refit' instead "
                               "of 'temporal')") in log



def test_an_ir_file_from_before_the_step_bias_gets_the_four_input_function():
    """Files written before the step bias declare IF with three inputs; giving a neuron a step
    bias upgrades the function, so onnxruntime still runs the file (as the rate limit)."""
    model = residual_net()
    fn = next(f for f in model.functions if f.name == ir.NEURON_OP)
    del fn.input[3:]  # as written before
    rows = np.array([0.2, -0.2], np.float32).reshape(2, 1, 1, 1) * np.ones((1, 4, 1, 1), np.float32)
    ir.set_step_bias(model, ir.neurons(model)[0].node, rows)
    assert [list(f.input) for f in model.functions if f.name == ir.NEURON_OP] == [list(ir.NEURON_INPUTS)]
    x = np.random.default_rng(0).uniform(0, 1, size=(2, 2, 8, 8)).astype(np.float32)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
