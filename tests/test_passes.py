"""Each conversion pass on small graphs built here."""
import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import conv_bn_relu, model, run_ort, vi
from snnconvert import ir
from snnconvert.errors import DataError, OptionError, UnsupportedModelError
from snnconvert.passes import (Calibrate, FoldBatchNorm, InitMembrane, NormalizeThresholds,
                               PassContext, Pipeline, ReplaceNeurons, default_pipeline)
from snnconvert.passes.calibrate import Histogram
from snnconvert.runtime import SpikingNetwork

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_into_conv_is_exact(bias):
    m = conv_bn_relu(bias=bias)
    x = RNG.normal(size=(7, 3, 8, 8)).astype(np.float32)
    folded = FoldBatchNorm()(m, PassContext())
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    onnx.checker.check_model(folded)
    np.testing.assert_allclose(run_ort(folded, x), run_ort(m, x), atol=1e-5, rtol=1e-5)
    assert any(n.op_type == "BatchNormalization" for n in m.graph.node), "input must not be mutated"


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_batchnorm_into_gemm_is_exact(trans_b):
    w = RNG.normal(size=(6, 5) if trans_b else (5, 6))
    inits = {"W": w, "b": RNG.normal(size=6), "s": RNG.uniform(.5, 2, 6), "bb": RNG.normal(size=6),
             "mu": RNG.normal(size=6), "var": RNG.uniform(.5, 2, 6)}
    m = model([helper.make_node("Gemm", ["x", "W", "b"], ["g"], transB=trans_b, alpha=0.5, beta=2.0),
               helper.make_node("BatchNormalization", ["g", "s", "bb", "mu", "var"], ["y"])],
              [vi("x", ["N", 5])], [vi("y", ["N", 6])], inits)
    x = RNG.normal(size=(4, 5)).astype(np.float32)
    folded = FoldBatchNorm()(m, PassContext())
    assert [n.op_type for n in folded.graph.node] == ["Gemm"]
    np.testing.assert_allclose(run_ort(folded, x), run_ort(m, x), atol=1e-5, rtol=1e-5)


def test_standalone_batchnorm_after_add_becomes_affine():
    inits = {"W": RNG.normal(size=(4, 3, 1, 1)), "s": RNG.uniform(.5, 2, 4), "bb": RNG.normal(size=4),
             "mu": RNG.normal(size=4), "var": RNG.uniform(.5, 2, 4), "W2": RNG.normal(size=(4, 3, 1, 1))}
    m = model([helper.make_node("Conv", ["x", "W"], ["a"]), helper.make_node("Conv", ["x", "W2"], ["b"]),
               helper.make_node("Add", ["a", "b"], ["c"]),
               helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["y"], name="bn")],
              [vi("x", ["N", 3, 5, 5])], [vi("y", ["N", 4, 5, 5])], inits)
    m = onnx.shape_inference.infer_shapes(m)
    ctx = PassContext()
    folded = FoldBatchNorm()(m, ctx)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Conv", "Add", "Mul", "Add"]
    x = RNG.normal(size=(2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run_ort(folded, x), run_ort(m, x), atol=1e-5, rtol=1e-5)
    assert "turned 1 into per-channel affine ops" in ctx.log[-1][1]


def test_replace_neurons_keeps_clip_bound_and_refuses_signed_clip():
    m = model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
               helper.make_node("Clip", ["r", "lo", "hi"], ["y"], name="clip6")],
              [vi("x", ["N", 4])], [vi("y", ["N", 4])], {"lo": np.float32(0), "hi": np.float32(6)})
    out = ReplaceNeurons()(m, PassContext())
    th = [float(n.threshold) for n in ir.neurons(out)]
    assert th[0] == np.inf and th[1] == 6.0
    bad = model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="tanhish")],
                [vi("x", ["N", 4])], [vi("y", ["N", 4])], {"lo": np.float32(-1), "hi": np.float32(1)})
    with pytest.raises(UnsupportedModelError) as err:
        ReplaceNeurons()(bad, PassContext())
    assert str(err.value).startswith("node 'tanhish' (Clip): Clip with lower bound -1.0 cannot become")


def test_histogram_percentiles_match_numpy_while_the_range_grows():
    data = RNG.lognormal(size=200_000)
    h = Histogram.empty(1)
    for chunk in np.array_split(np.sort(data), 20):
        h.add(chunk[None, :])
    for p in (50, 99, 99.9, 99.99):
        exact = np.percentile(data, p)
        assert abs(h.percentile(p)[0] - exact) <= 2 * h.ranges[0] / h.counts.shape[1] + 1e-9


def _calibrated(m, calib, method, per_channel):
    ctx = PassContext(calib=calib)
    pipe = Pipeline([FoldBatchNorm(), ReplaceNeurons(), Calibrate(), NormalizeThresholds(method, per_channel)])
    return pipe(m, ctx), ctx


def test_max_normalization_sets_the_activation_max():
    m = onnx.shape_inference.infer_shapes(conv_bn_relu())
    calib = RNG.normal(size=(50, 3, 8, 8)).astype(np.float32)
    out, _ = _calibrated(m, calib, "max", False)
    (n,) = ir.neurons(out)
    pre = FoldBatchNorm()(m, PassContext())
    probe = onnx.ModelProto()
    probe.CopyFrom(pre)
    probe.graph.output.append(onnx.ValueInfoProto(name=pre.graph.node[0].output[0]))
    import onnxruntime as ort

    s = ort.InferenceSession(probe.SerializeToString())
    act = s.run([pre.graph.node[0].output[0]], {"x": calib})[0]
    assert float(n.threshold) == pytest.approx(act.max(), rel=1e-6)
    out_pc, _ = _calibrated(m, calib, "max", True)
    (npc,) = ir.neurons(out_pc)
    assert npc.threshold.shape == (4, 1, 1)
    np.testing.assert_allclose(npc.threshold.ravel(), act.max(axis=(0, 2, 3)), rtol=1e-6)


def test_normalization_options_are_validated():
    for bad in ("median", "percentile:0", "percentile:101", "percentile:x"):
        with pytest.raises(OptionError, match="unknown normalization"):
            NormalizeThresholds(bad)
    with pytest.raises(DataError, match="calibration needs data"):
        Calibrate()(conv_bn_relu(), PassContext())


def test_init_membrane_half_and_zero():
    m, _ = _calibrated(onnx.shape_inference.infer_shapes(conv_bn_relu()),
                       RNG.normal(size=(20, 3, 8, 8)).astype(np.float32), "max", True)
    for mode, frac in (("half", 0.5), ("zero", 0.0)):
        (n,) = ir.neurons(InitMembrane(mode)(m, PassContext()))
        np.testing.assert_allclose(n.v_init, frac * n.threshold)


@pytest.mark.parametrize("t", [4, 8, 16])
def test_half_initial_potential_quarters_the_layer1_error(t):
    """Bu et al. 2022: with z uniform in a bin, MSE is 1/3 (θ/T)² for v0 = 0 and 1/12 for θ/2."""
    z = RNG.uniform(0, 1, size=20_000).astype(np.float32)
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 1])], [vi("y", ["N", 1])], {})
    errs = {}
    for mode in ("zero", "half"):
        ctx = PassContext(calib=z[:, None])
        snn = Pipeline([ReplaceNeurons(), Calibrate(), NormalizeThresholds("max"), InitMembrane(mode)])(m, ctx)
        theta = float(ir.neurons(snn)[0].threshold)
        rate = SpikingNetwork(snn).simulate(z[:, None], [t]).readout[t][:, 0]
        e = (rate - z) / (theta / t)
        errs[mode] = (np.mean(e ** 2), np.mean(e))
    assert errs["zero"][0] == pytest.approx(1 / 3, abs=0.03) and errs["zero"][1] == pytest.approx(-0.5, abs=0.03)
    assert errs["half"][0] == pytest.approx(1 / 12, abs=0.01) and abs(errs["half"][1]) < 0.03


def test_optimized_init_brings_layer_means_to_the_ann(digits):
    from snnconvert import frontend

    ann = frontend.load_model("tests/fixtures/digits_cnn.onnx")
    calib = digits["x_train"][:200]
    base = default_pipeline(v_init="half", calibration="none")(ann, PassContext(calib=calib, timesteps=4))
    ctx = PassContext(calib=calib, timesteps=4)
    tuned = default_pipeline(v_init="optimized", calibration="none")(ann, ctx)
    assert ctx.log[-1][0] == "optimize-init"

    from snnconvert.api import ann_outputs

    targets = {}
    for n in ir.neurons(base):
        probe = onnx.ModelProto()
        probe.CopyFrom(base)
        probe.graph.output[0].name = n.output
        targets[n.name] = ann_outputs(probe, calib).mean(axis=(0, 2, 3))

    def layer_error(snn):
        net = SpikingNetwork(snn)
        net.simulate(calib, [4], record=True)
        err = []
        for n in ir.neurons(snn):
            target = targets[n.name]
            rate = (net.spike_counts[n.name] / 4 * n.threshold).mean(axis=(0, 2, 3)).numpy()
            err.append(np.abs(rate - target).mean())
        return np.mean(err)

    assert layer_error(tuned) < 0.6 * layer_error(base)


def test_pipeline_is_editable_and_accepts_plain_callables():
    pipe = default_pipeline()
    assert pipe.names() == ["fold-batchnorm", "replace-neurons", "calibrate", "normalize-thresholds",
                            "init-membrane", "remember-ann", "calibrate-for-T", "distill-for-T"]
    seen = []

    def spy(m, ctx):
        seen.append(len(m.graph.node))
        return m

    spy.name = "spy"
    pipe.insert_after("fold-batchnorm", spy).remove("init-membrane")
    assert pipe.names()[1] == "spy" and "init-membrane" not in pipe.names()
    pipe.replace("normalize-thresholds", NormalizeThresholds("max"))
    m = onnx.shape_inference.infer_shapes(conv_bn_relu())
    out = pipe(m, PassContext(calib=RNG.normal(size=(10, 3, 8, 8)).astype(np.float32)))
    assert seen == [5] and len(ir.neurons(out)) == 1
    with pytest.raises(KeyError, match="no pass named 'nope'"):
        pipe.remove("nope")
