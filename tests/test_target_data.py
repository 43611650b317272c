"""Target data cannot go stale: fixed-point integers carry a digest of the float parameters they
came from; a mismatch is refused by name or derived again; fine-tuning drops them."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import snnconvert
from snnconvert import ir
from snnconvert.errors import TargetError
from snnconvert.finetune import finetune

lava = pytest.importorskip("snnconvert.targets.lava")

from snnconvert.targets.lava import fixed  # noqa: E402
from snnconvert.targets.lava.lowering import lower  # noqa: E402
from snnconvert.targets.lava.reference import simulate  # noqa: E402

from conftest import FIXTURES  # noqa: E402

T = 8


@pytest.fixture(scope="module")
def fixed_snn(digits):
    snn = snnconvert.convert(FIXTURES / "digits_cnn.onnx", digits["x_train"][:200], timesteps=T)
    return lava.quantize(snn, digits["x_train"][:128])


def _integers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
            if t.name.startswith(fixed.PREFIX)}


def test_quantized_model_is_stamped_fresh(fixed_snn):
    assert ir.derived_state(fixed_snn, fixed.PREFIX) == "fresh"
    assert set(ir.derived_prefixes(fixed_snn)) == {fixed.PREFIX}
    assert lava.network(fixed_snn).fixed is not None


def test_edited_weights_refuse_the_old_integers_by_name(fixed_snn, digits):
    edited = onnx.ModelProto.FromString(fixed_snn.SerializeToString())
    w = next(t for t in edited.graph.initializer
             if len(t.dims) == 4 and not t.name.startswith(fixed.PREFIX))
    ir.set_initializer(edited, w.name, onnx.numpy_helper.to_array(w) * 1.5)
    assert ir.derived_state(edited, fixed.PREFIX) == "stale"
    with pytest.raises(TargetError, match=r"the fixed-point parameters 'lava_fx\.\*' were derived "
                                          r"from other float parameters than this model carries"):
        lava.network(edited)
    again = lava.prepare(edited, True, digits["x_train"][:128])
    assert ir.derived_state(again, fixed.PREFIX) == "fresh"
    new, old = _integers(again), _integers(fixed_snn)
    assert any(not np.array_equal(new[k], old[k]) for k in old)
    floated = lava.prepare(edited, False, None)
    assert ir.derived_state(floated, fixed.PREFIX) == "absent" and lava.network(floated).fixed is None


def test_tuned_fixed_point_ir_deploys_integers_derived_from_the_tuned_weights(fixed_snn, digits, tmp_path):
    x, y = digits["x_train"][:128], digits["y_train"][:128]
    tuned, _ = finetune(fixed_snn, x, y, timesteps=T, epochs=1, lr=2e-3, batch_size=64)
    assert not _integers(tuned) and ir.derived_state(tuned, fixed.PREFIX) == "absent"
    calib = digits["x_train"][:128]
    art = lava.compile(tuned, tmp_path / "tuned.lava", fixed_point=True, calib=calib)
    deployed = lava.load(art)
    expected = lava.quantize(tuned, calib)
    got, want = _integers(deployed.model), _integers(expected)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    untuned = _integers(fixed_snn)
    assert any(not np.array_equal(untuned[k], want[k]) for k in want)
    # Lava's fixed-point run is bit-exact with the integer reference of the tuned weights
    xs = digits["x_test"][:3]
    ref = simulate(lower(tuned), xs.astype(np.float64), T, fixed.load_layers(expected, lower(expected)))
    run = deployed.run(xs, T, fixed_point=True, neuron_counts=True)
    np.testing.assert_array_equal(run.readout, ref.readout)
    for name, counts in ref.counts.items():
        np.testing.assert_array_equal(run.counts[name], counts)
