"""Target profiles: bundled files load with sources, malformed files are refused by key, and
fit() counts cores and refuses a network bigger than one chip."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from snnconvert import ir
from snnconvert.errors import OptionError
from snnconvert.profiles import available, fit, load_profile


def _mlp(width: int, n_in: int = 64) -> onnx.ModelProto:
    """x[N,n_in] -> Gemm(width) -> IF -> Gemm(10)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, .1, (width, n_in)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, .1, (10, width)).astype(np.float32), "w2")]
    n, i = ir.make_neuron("if1", "h", "s", np.float32(1.0), np.float32(0.5))
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1), n,
             helper.make_node("Gemm", ["s", "w2"], ["y"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", n_in])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])],
                          inits + i)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ir.ensure_domain(m)
    return m


def test_bundled_profiles_load_with_sources():
    assert {"loihi2", "generic-float"} <= set(available())
    p = load_profile("loihi2")
    assert (p.cores_per_chip, p.neurons_per_core) == (128, 8192)
    assert p.energy["synaptic_op_pj"] == pytest.approx(23.6)
    for key in ("capacity.cores_per_chip", "capacity.neurons_per_core", "energy.synaptic_op_pj",
                "formats.weight_bits"):
        assert key in p.sources and p.sources[key]
    g = load_profile("generic-float")
    assert (g.energy["mac_pj"], g.energy["synaptic_op_pj"]) == (4.6, 0.9)
    assert not g.limited


def test_unknown_and_malformed_profiles(tmp_path):
    with pytest.raises(OptionError, match="unknown target profile 'loihi9'.*loihi2"):
        load_profile("loihi9")
    bad = tmp_path / "bad.toml"
    bad.write_text('[target]\nname = "x"\n[capacity]\ncores_per_chip = 4\nneurons_per_core = 8\n'
                   '[neuron]\nreset_modes = ["zero"]\n[energy]\nsynaptic_op_pj = 1.0\n'
                   'ann_mac_pj = 4.6\n')
    with pytest.raises(OptionError, match="capacity.synapses_per_core"):
        load_profile(bad)
    bad.write_text("[target\n")
    with pytest.raises(OptionError, match="not valid TOML"):
        load_profile(str(bad))


def test_user_profile_and_fit_counts(tmp_path):
    user = tmp_path / "tiny.toml"
    user.write_text('[target]\nname = "tiny"\n[capacity]\ncores_per_chip = 4\n'
                    'neurons_per_core = 100\nsynapses_per_core = 1000\n'
                    '[neuron]\nreset_modes = ["zero"]\n'
                    '[energy]\nsynaptic_op_pj = 1.0\nann_mac_pj = 4.6\n')
    report = fit(_mlp(30), user)   # 30 neurons x 64 = 1920 synapses -> 2 cores; readout 300 -> 1
    assert [(r.name, r.neurons, r.synapses, r.cores) for r in report.layers] == [
        ("if1", 30, 1920, 2), ("readout", 10, 300, 1)]
    assert report.fits and report.total_cores == 3
    assert any("reset 'subtract'" in s for s in report.issues)
    big = fit(_mlp(250), user)     # 250 neurons -> 3 cores, 16000 synapses -> 16 cores
    assert not big.fits
    assert "needs 19 cores, the target has 4" in big.reasons[0] and "'if1'" in big.reasons[0]
