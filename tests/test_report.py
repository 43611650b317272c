"""Report: counts, SOPs vs MACs, correlations, energy, fit refusal and PNGs on a small CNN."""
from __future__ import annotations

import json

import numpy as np
import pytest

from snnconvert import ir
from snnconvert.errors import TargetError

pytest.importorskip("snnconvert.runtime")

from snnconvert.api import build_report, run_report  # noqa: E402

from test_nir import _cnn  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (64, 2, 8, 8)).astype(np.float32)
    out = tmp_path_factory.mktemp("rep")
    return build_report(_cnn(), x, None, timesteps=16, profile="generic-float", out_dir=out)


def test_layer_counts_and_events(report):
    rows = {r["name"]: r for r in report.data["layers"]}
    assert rows["if1"]["neurons"] == 4 * 8 * 8
    assert rows["if1"]["ann_macs"] == rows["if1"]["synapses"] == 4 * 2 * 22 * 22  # 22 valid taps per axis (3x3, pad 1, 8 wide)
    assert rows["if1"]["input"] == "analog" and rows["if1"]["macs"] == rows["if1"]["ann_macs"]
    # conv2 after a 2x2 pool: the merged synaptic layer has 4 sources per pooled input
    assert rows["if2"]["synapses"] == 4 * rows["if2"]["ann_macs"]
    # SOPs = spikes x fan-out <= spikes x max fan-out (4 channels x 9 taps)
    spikes1 = rows["if1"]["spikes_per_inference"]
    assert 0 < rows["if2"]["sops"] <= spikes1 * 36 + 1e-6
    for name in ("if1", "if2"):
        assert 0 < rows[name]["firing_rate"] < 1
        assert rows[name]["ann_rate_correlation"] > 0.8


def test_energy_and_json(report):
    d = json.loads(report.to_json())
    t, e = d["totals"], d["energy"]
    expected = (t["snn_sops"] * 0.9 + t["snn_macs"] * 4.6) * 1e-12
    assert e["snn_joules"] == pytest.approx(expected)
    assert e["ann_joules"] == pytest.approx(t["ann_macs"] * 4.6e-12)
    assert any("4.6 pJ per MAC" in a for a in e["assumptions"])
    assert d["fit"]["fits"] and set(d["accuracy_vs_T"]) == {"1", "2", "4", "8", "16"}


def test_plots_written(report):
    assert [p.name for p in report.plots] == ["accuracy_vs_T.png", "firing_rates.png"]
    for p in report.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_run_report_refuses_network_that_does_not_fit(tmp_path):
    model = _cnn()
    ir.save(model, tmp_path / "m.snn.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2, 8, 8), np.float32), y=np.zeros(4, np.int64))
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('[target]\nname = "tiny"\n[capacity]\ncores_per_chip = 2\n'
                    'neurons_per_core = 64\nsynapses_per_core = 100000\n'
                    '[neuron]\nreset_modes = ["zero"]\n'
                    '[energy]\nsynaptic_op_pj = 1.0\nann_mac_pj = 4.6\n')
    with pytest.raises(TargetError, match="does not fit on 'tiny': needs 6 cores"):
        run_report(tmp_path / "m.snn.onnx", tmp_path / "d.npz", 8, str(tiny))
    rep = run_report(tmp_path / "m.snn.onnx", tmp_path / "d.npz", 8, "generic-float",
                     tmp_path / "r.json", tmp_path / "png")
    assert json.loads((tmp_path / "r.json").read_text())["samples"] == 4
    assert len(rep.plots) == 2


def test_streamed_report_matches_whole_array_statistics(report):
    """Batch by batch (running sums) gives what whole arrays give: correlation, rates, SOPs."""
    import torch

    from snnconvert.datasets import ArraySource
    from snnconvert.runtime import SpikingNetwork

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (64, 2, 8, 8)).astype(np.float32)
    small = build_report(_cnn(), ArraySource(x), None, timesteps=16, batch_size=10)
    assert small.data["samples"] == 64
    for a, b in zip(report.data["layers"], small.data["layers"]):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-9), (a["name"], key)
    net = SpikingNetwork(_cnn())
    net.simulate(x, 16, record=True)
    from snnconvert import onnxrt
    neuron = ir.neurons(_cnn())[0]
    act = onnxrt.collect(_cnn(), x, [neuron.output])[neuron.output]
    rate = net.spike_counts[neuron.name].to(torch.float64).numpy() * neuron.threshold.reshape(-1, 1, 1) / 16
    expected = np.corrcoef(act.ravel(), rate.ravel())[0, 1]
    row = next(r for r in small.data["layers"] if r["name"] == neuron.name)
    assert row["ann_rate_correlation"] == pytest.approx(expected, rel=1e-9)


def test_synapses_and_events_of_1d_and_3d_convolutions():
    """Event counting reads the registry, so it covers every rank the runtime runs (was 2-D only)."""
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from snnconvert.ops.synapses import synaptic_events, synapses
    from snnconvert.ops import tensor_shapes

    for spatial, kernel in (([10], [3]), ([4, 4, 4], [3, 3, 3])):
        nd = len(spatial)
        n, inits = ir.make_neuron("n", "h", "s", np.float32(1.0), np.float32(0.5))
        w1 = np.ones([4, 2] + kernel, np.float32)
        w2 = np.ones([3, 4] + kernel, np.float32)
        g = helper.make_graph(
            [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1", pads=[1] * 2 * nd), n,
             helper.make_node("Conv", ["s", "w2"], ["y"], name="c2")],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2] + spatial)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")] + inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        ir.ensure_domain(m)
        shapes = tensor_shapes(m)
        syn = synapses(m, shapes)
        taps = 1
        for size, k in zip(spatial, kernel):  # valid taps per axis of a pad-1 'same' conv
            taps *= size * k - 2
        assert syn["n"] == 4 * 2 * taps
        out = [s - k + 1 for s, k in zip(spatial, kernel)]
        assert syn["readout"] == 3 * 4 * int(np.prod(out)) * int(np.prod(kernel))
        one_spike = torch.zeros((1, 4, *spatial), dtype=torch.float64)
        centre = [s // 2 for s in spatial]
        one_spike[(0, 0) + tuple(centre)] = 1
        ev = synaptic_events(m, shapes, {"n": one_spike})
        fan_out = 3  # output channels, times the windows covering the neuron on each axis
        for c, o_n, k in zip(centre, out, kernel):
            fan_out *= sum(1 for o in range(o_n) if o <= c <= o + k - 1)
        assert ev["readout"] == fan_out
