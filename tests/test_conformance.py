"""Conformance: every op the registry knows x every target, against the IR's executable meaning
(snnconvert.ir_reference, float64 numpy).

Each case is a small ANN holding the op between two neuron layers, converted by the default
pipeline. A target that declares it holds the op (``supports``) must reproduce the reference:
torch (float64) and Lava (its float processes) spike for spike, Lava fixed point bit-exact with
its integer reference, NIR (exported with reset to zero and v0 = 0, so nothing is lost) spike
for spike. A target that refuses it must refuse it by name, up front and at compile; an op it
only approximates must be listed as a loss. Ops the front-end refuses are refused everywhere.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import snnconvert
from snnconvert import api, ir, ir_reference
from snnconvert.errors import SnnConvertError, TargetError, UnsupportedModelError
from snnconvert.frontend import load_model
from snnconvert.ops import REGISTRY, GraphView
from snnconvert.runtime import SpikingNetwork
from snnconvert.targets import get_target
from test_runtime_ops_util import make_model

mk = helper.make_node
T = 6
N = 3
TARGETS = ("torch", "lava", "lava-fixed", "nir")


def _rng(seed=0):
    return np.random.default_rng(seed)


def _w(*shape, k=1.0, seed=0):
    return (_rng(seed).standard_normal(shape) * k / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


# ---------------------------------------------------------------- one graph per op
# A case: (nodes after the first neuron "s0" [N,4,6,6] -> output tensor "t", initializers,
# opset). The template adds x -> Conv -> Relu -> s0 before and Relu -> Flatten -> Gemm after.

def _case(op: str):
    c = lambda *s, k=1.5, seed=1: _w(*s, k=k, seed=seed)  # noqa: E731
    if op == "ConvTranspose":  # stride 2: upsampling 6x6 -> 12x12
        return [mk("ConvTranspose", ["s0", "tw"], ["t"], strides=[2, 2], pads=[1, 1, 0, 0],
                   output_padding=[1, 1])], {"tw": c(4, 3, 3, 3, k=3.0)}
    if op == "ConvTranspose:stride1":
        return [mk("ConvTranspose", ["s0", "tw", "tb"], ["t"], pads=[1, 1, 1, 1])], {
            "tw": c(4, 3, 3, 3, k=3.0), "tb": np.full(3, 0.05, np.float32)}
    if op == "Conv":
        return [mk("Conv", ["s0", "cw"], ["t"], pads=[1, 1, 1, 1])], {"cw": c(4, 4, 3, 3)}
    if op in ("Gemm", "MatMul"):
        w = c(144, 8, k=4.0)
        node = mk("Gemm", ["f", "gw"], ["t"]) if op == "Gemm" else mk("MatMul", ["f", "gw"], ["t"])
        return [mk("Flatten", ["s0"], ["f"]), node], {"gw": w}
    if op == "AveragePool":
        return [mk("AveragePool", ["s0"], ["t"], kernel_shape=[2, 2], strides=[2, 2])], {}
    if op == "GlobalAveragePool":
        return [mk("GlobalAveragePool", ["s0"], ["t"])], {}
    if op in ("MaxPool", ir.SPIKING_MAX_POOL):
        return [mk("Conv", ["s0", "cw"], ["h"], pads=[1, 1, 1, 1]),
                mk("MaxPool", ["h"], ["t"], kernel_shape=[2, 2], strides=[2, 2])], {"cw": c(4, 4, 3, 3)}
    if op == "GlobalMaxPool":
        return [mk("Conv", ["s0", "cw"], ["h"], pads=[1, 1, 1, 1]), mk("GlobalMaxPool", ["h"], ["t"])], \
            {"cw": c(4, 4, 3, 3)}
    if op == "BatchNormalization":
        r = _rng(3)
        return [mk("BatchNormalization", ["s0", "sc", "bi", "mu", "va"], ["t"])], {
            "sc": r.uniform(0.5, 2, 4).astype(np.float32), "bi": r.normal(0, .1, 4).astype(np.float32),
            "mu": r.uniform(0, .2, 4).astype(np.float32), "va": r.uniform(.5, 1.5, 4).astype(np.float32)}
    if op in ("Add", "Sub", "Sum"):
        conv = mk("Conv", ["s0", "cw"], ["h"], pads=[1, 1, 1, 1])
        if op == "Sub":
            return [conv, mk("Sub", ["h", "k"], ["t"])], {"cw": c(4, 4, 3, 3),
                                                          "k": np.full((4, 1, 1), 0.1, np.float32)}
        return [conv, mk(op, ["h", "s0"], ["t"])], {"cw": c(4, 4, 3, 3)}
    if op in ("Mul", "Div"):
        return [mk(op, ["s0", "k"], ["t"])], {"k": np.array([0.5, 1.5, 2.0, 0.8], np.float32).reshape(4, 1, 1)}
    if op in ("Flatten", "Identity", "Dropout"):
        return [mk(op, ["s0"], ["t"])], {}
    if op == "Reshape":
        return [mk("Reshape", ["s0", "sh"], ["t"])], {"sh": np.array([-1, 144], np.int64)}
    if op == "Squeeze":
        return [mk("GlobalAveragePool", ["s0"], ["g"]), mk("Squeeze", ["g", "ax"], ["t"])], \
            {"ax": np.array([2, 3], np.int64)}
    if op == "Unsqueeze":
        return [mk("Flatten", ["s0"], ["f"]), mk("Unsqueeze", ["f", "ax"], ["t"])], {"ax": np.array([2], np.int64)}
    if op == "Transpose":
        return [mk("Transpose", ["s0"], ["p"], perm=[0, 2, 3, 1]), mk("Flatten", ["p"], ["f"]),
                mk("Gemm", ["f", "gw"], ["t"])], {"gw": c(144, 8, k=4.0)}
    if op == "Concat":
        return [mk("Conv", ["s0", "cw"], ["a"], pads=[1, 1, 1, 1]), mk("Conv", ["s0", "cv"], ["b"]),
                mk("Concat", ["a", "b"], ["t"], axis=1)], {"cw": c(4, 4, 3, 3), "cv": c(2, 4, 1, 1, seed=2)}
    if op == "Pad":
        return [mk("Pad", ["s0", "pp"], ["t"])], {"pp": np.array([0, 2, 0, 0, 0, 2, 0, 0], np.int64)}
    if op == "Slice":
        return [mk("Slice", ["s0", "st", "en", "ax", "sp"], ["t"])], {
            "st": np.array([0, 0], np.int64), "en": np.array([6, 6], np.int64),
            "ax": np.array([2, 3], np.int64), "sp": np.array([2, 2], np.int64)}
    if op == "Upsample":  # opset 9; the front-end upgrades it to Resize
        return [mk("Upsample", ["s0", "sc"], ["t"], mode="nearest")], {
            "sc": np.array([1, 1, 2, 2], np.float32)}
    if op == "Resize":
        return [mk("Resize", ["s0", "", "sc"], ["t"], mode="nearest")], {
            "sc": np.array([1, 1, 2, 2], np.float32)}
    if op == "Clip":
        return [mk("Conv", ["s0", "cw"], ["h"], pads=[1, 1, 1, 1]), mk("Clip", ["h", "lo", "hi"], ["t"])], \
            {"cw": c(4, 4, 3, 3), "lo": np.float32(0), "hi": np.float32(1.0)}
    if op in ("Relu", ir.NEURON_OP):
        return [mk("Conv", ["s0", "cw"], ["h"], pads=[1, 1, 1, 1]), mk("Relu", ["h"], ["t"])], \
            {"cw": c(4, 4, 3, 3)}
    if op == "Constant":
        return [mk("Constant", [], ["k"], value=onnx.numpy_helper.from_array(np.float32(1.5))),
                mk("Mul", ["s0", "k"], ["t"])], {}
    return None


# Ops with no node of their own once converted: the front-end folds them into initializers or
# removes them; their matrix row checks coverage, not targets.
FOLDED = {"Shape": "constant expression", "Size": "constant expression"}
FINAL_ONLY = ("Softmax", "LogSoftmax")
# IR ops no ANN op converts to: built as IR and checked by their own test below
BUILT_AS_IR = (ir.DELAY_DENSE,)
# the op as it stands in the case's ANN after load_model (the IR ops come from conversion)
AS_LOADED = {ir.NEURON_OP: "Relu", ir.SPIKING_MAX_POOL: "MaxPool", "GlobalMaxPool": "MaxPool",
             "Upsample": "Resize"}


def _ann(op: str) -> onnx.ModelProto:
    nodes, inits = _case(op)
    head = [mk("Conv", ["x", "w0"], ["h0"], pads=[1, 1, 1, 1]), mk("Relu", ["h0"], ["s0"])]
    tail = [mk("Relu", ["t"], ["s1"]), mk("Flatten", ["s1"], ["f1"]),
            mk("Gemm", ["f1", "wo", "bo"], ["y"], transB=1)]
    if op == "Clip":
        tail[0] = mk("Identity", ["t"], ["s1"])
    opset = 9 if op == "Upsample" else 17
    probe = make_model(head + nodes, [2, 6, 6], {"w0": _w(4, 2, 3, 3, k=3.0), **inits}, out="t", opset=opset)
    flat = int(np.prod([d.dim_value for d in probe.graph.output[0].type.tensor_type.shape.dim[1:]]))
    return make_model(head + nodes + tail, [2, 6, 6],
                      {"w0": _w(4, 2, 3, 3, k=3.0), **inits, "wo": _w(3, flat, k=2.0, seed=5),
                       "bo": np.zeros(3, np.float32)}, opset=opset)


@pytest.fixture(scope="module")
def data():
    r = _rng(11)
    return r.uniform(0, 1, (16, 2, 6, 6)).astype(np.float32), r.uniform(0, 1, (N, 2, 6, 6)).astype(np.float32)


def _convert(op: str, calib: np.ndarray, **options) -> onnx.ModelProto:
    return snnconvert.convert(_ann(op), calib, timesteps=T, **options)


VARIANTS = ["ConvTranspose:stride1"]  # a second case for ops whose targets hold only some forms


def _case_ops() -> list[str]:
    return sorted([key[1] for key in REGISTRY if _case(key[1]) is not None] + VARIANTS)


def _refused_ops() -> list[str]:
    return sorted(key[1] for key in REGISTRY if _case(key[1]) is None and key[1] not in FOLDED
                  and key[1] not in FINAL_ONLY and key[1] not in BUILT_AS_IR)


def _nir_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _check(op: str, target: str, snn: onnx.ModelProto, x: np.ndarray) -> None:
    ref = ir_reference.simulate(snn, x, T)
    if target == "torch":
        net = SpikingNetwork(snn, cpu_kernels="torch").double()
        net.record = True
        with torch.no_grad():
            y = net(torch.as_tensor(x, dtype=torch.float64), T).numpy()
        for name, counts in ref.counts.items():
            np.testing.assert_array_equal(net.spike_counts[name].numpy(), counts, err_msg=name)
        np.testing.assert_allclose(y, ref.readout, rtol=1e-9, atol=1e-9)
        return
    if target in ("lava", "lava-fixed"):
        lava = get_target("lava")
        if target == "lava":
            net = lava.network(snn)
            got = net.run(x, T, fixed_point=False, neuron_counts=True)
            want = ref
        else:
            net = lava.network(lava.quantize(snn, x))
            got = net.run(x, T, fixed_point=True, neuron_counts=True)
            want = net.reference(x, T, fixed_point=True)  # the integer reference, bit for bit
            np.testing.assert_array_equal(got.readout, want.readout)
        for name, counts in want.counts.items():
            if name in ref.counts:
                np.testing.assert_array_equal(got.counts[name], counts, err_msg=name)
        if target == "lava":
            np.testing.assert_allclose(got.readout, ref.readout, rtol=1e-9, atol=1e-9)
        return
    nir_target = get_target("nir")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lossless export must not warn
        graph, losses = nir_target.export(snn)
    assert not losses, losses
    result, counts = nir_target.NirSimulator(graph).simulate(x, T)
    for name, c in ref.counts.items():
        np.testing.assert_array_equal(counts[_nir_key(name)], c, err_msg=name)
    np.testing.assert_allclose(result.readout[T], ref.readout, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op", _case_ops())
def test_op_on_target_matches_the_reference_or_is_refused(op, target, data):
    calib, x = data
    backend = "lava" if target.startswith("lava") else target
    if backend == "lava":
        pytest.importorskip("snnconvert.targets.lava")
    if backend == "nir":
        pytest.importorskip("nir")
    ann = load_model(_ann(op))
    base = op.split(":")[0]
    held = [s for s in api.target_support(ann, backend) if s.op_type == AS_LOADED.get(base, base)]
    options = {"reset": "zero", "v_init": "zero"} if backend == "nir" else {}
    if held and not all(s.verdict.ok for s in held):
        with pytest.raises(TargetError) as up_front:
            api.check_target(ann, backend)
        assert f"({held[0].op_type})" in str(up_front.value)
        snn = _convert(op, calib, **options)
        with pytest.raises(TargetError, match=r"node '"):
            if backend == "lava":
                get_target("lava").network(snn)
            else:
                get_target(backend).export(snn) if backend == "nir" else SpikingNetwork(snn)
        return
    snn = _convert(op, calib, **options)
    if backend == "nir" and held and held[0].verdict.status == "approximated":
        _, losses = get_target("nir").export(snn)
        assert losses and all("approximated" in str(loss) or "MaxPool" in str(loss) for loss in losses)
        return
    if target == "lava-fixed":
        try:
            get_target("lava").quantize(snn, calib)
        except TargetError as exc:  # refused by name, never silently wrong
            assert "fixed point needs one" in str(exc) and "node '" in str(exc)
            return
    _check(op, target, snn, x)


@pytest.mark.parametrize("op", _refused_ops())
def test_refused_op_is_refused_by_coverage_and_every_target(op):
    node = mk(op, ["a", "b"], ["c"], name="n")
    graph = GraphView(make_model([mk("Relu", ["x"], ["a"]), mk("Relu", ["x"], ["b"])], [2], out="a"))
    entry = REGISTRY[("", op)]
    verdict = entry.verdict(node, {}, graph)
    assert verdict.status == "unsupported" and " Hint: " in verdict.detail
    for target in ("torch", "lava", "nir"):
        try:
            backend = get_target(target)
        except SnnConvertError:
            continue
        assert not backend.supports(node, graph).ok, target


@pytest.mark.parametrize("op", sorted(FOLDED))
def test_folded_ops_never_reach_a_target(op):
    entry = REGISTRY[("", op)]
    assert entry.verdict(mk(op, ["a"], ["b"]), {}, None).detail.startswith(FOLDED[op])


@pytest.mark.parametrize("op", FINAL_ONLY)
def test_softmax_is_dropped_at_the_end_and_refused_inside(op):
    nodes = [mk("Flatten", ["x"], ["f"]), mk("Gemm", ["f", "w"], ["g"], transB=1), mk(op, ["g"], ["y"])]
    m = make_model(nodes, [2, 3, 3], {"w": _w(4, 18)})
    assert [n.op_type for n in load_model(m).graph.node] == ["Flatten", "Gemm"]
    inner = make_model([mk(op, ["x"], ["s"]), mk("Relu", ["s"], ["y"])], [5], {})
    with pytest.raises(UnsupportedModelError, match="only a final softmax is allowed"):
        snnconvert.convert(inner, np.zeros((2, 5), np.float32))


def test_the_matrix_covers_every_registered_op():
    covered = {op.split(":")[0] for op in _case_ops()} | set(_refused_ops()) | set(FOLDED) | set(FINAL_ONLY) \
        | set(BUILT_AS_IR)
    assert covered == {key[1] for key in REGISTRY}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", ["input-frames", "input-analog", "hidden-analog"])
def test_delay_synapse_on_every_target(target, variant):
    """DelayDense (per-synapse delays) on the graph input (spike frames, or an analog input) and
    between neuron layers: each target holding it reproduces the reference spike for spike (Lava
    fixed point: bit-exact with its integer reference); one that does not refuses it by name."""
    from test_delays import C, delay_ir, spikes

    backend = "lava" if target.startswith("lava") else target
    if backend == "lava":
        pytest.importorskip("snnconvert.targets.lava")
    if backend == "nir":
        pytest.importorskip("nir")
    where, enc = variant.split("-")
    snn = delay_ir(reset="zero", v0=0.0, encoding="frames" if enc == "frames" else "analog",
                   input_delays=where == "input")
    x = spikes() if enc == "frames" else _rng(5).uniform(0, 1, (N, C)).astype(np.float32)
    if not all(get_target(backend).supports(n, GraphView(snn)).ok for n in snn.graph.node):
        with pytest.raises(TargetError, match="node '"):
            get_target(backend).network(snn) if backend == "lava" else get_target(backend).export(snn)
        return
    _check(ir.DELAY_DENSE, target, snn, x)


def _neuron_ir(reset: str, leak: float, v0: str, seed: int = 4) -> onnx.ModelProto:
    """Conv -> IF -> AveragePool -> Conv -> IF -> Flatten -> Gemm, built as IR, per-channel θ."""
    r = _rng(seed)
    nodes, inits = [], {"w0": _w(4, 2, 3, 3, k=3.0), "w1": _w(4, 4, 3, 3, k=2.0, seed=1),
                        "wo": _w(3, 36, k=2.0, seed=2)}
    extra = []

    def neuron(name, x, y):
        theta = r.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32)
        start = {"zero": np.zeros_like(theta), "half": theta / 2,
                 "random": (theta * r.uniform(0, 1, theta.shape)).astype(np.float32)}[v0]
        n, i = ir.make_neuron(name, x, y, theta, start, reset=reset, leak=leak)
        nodes.append(n)
        extra.extend(i)

    nodes.append(mk("Conv", ["x", "w0"], ["h0"], pads=[1, 1, 1, 1], name="c0"))
    neuron("a", "h0", "s0")
    nodes.append(mk("AveragePool", ["s0"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"))
    nodes.append(mk("Conv", ["p", "w1"], ["h1"], pads=[1, 1, 1, 1], name="c1"))
    neuron("b", "h1", "s1")
    nodes += [mk("Flatten", ["s1"], ["f"], name="flat"), mk("Gemm", ["f", "wo"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "neurons", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()] + extra)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ir.ensure_domain(m)
    ir.set_meta(m, "timesteps", str(T))
    return m


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("reset,leak,v0", [("subtract", 0.0, "half"), ("zero", 0.0, "zero"),
                                           ("subtract", 0.2, "random"), ("zero", 0.25, "half")])
def test_neuron_semantics_on_every_target(reset, leak, v0, target, data):
    """IF/LIF, both resets, leak, per-channel θ and v0: each target against the reference."""
    calib, x = data
    snn = _neuron_ir(reset, leak, v0)
    if target.startswith("lava"):
        pytest.importorskip("snnconvert.targets.lava")
    if target == "nir":
        pytest.importorskip("nir")
        lossy = reset == "subtract" or v0 != "zero"
        if lossy:
            _, losses = get_target("nir").export(snn)
            assert {loss.node for loss in losses} == {"a", "b"}
            return
    _check("IF", target, snn, x)


@pytest.mark.parametrize("op", _case_ops())
def test_registry_shape_rules_agree_with_onnxruntime(op, data):
    from snnconvert import onnxrt
    from snnconvert.ops import tensor_shapes

    snn = _convert(op, data[0])
    ours, theirs = tensor_shapes(snn), onnxrt.tensor_shapes(snn)
    assert ours == {k: theirs[k] for k in ours} and set(ours) == set(theirs)


TIME_INPUTS = [("frames", "membrane"), ("rate:bernoulli:5", "last"), ("rate:deterministic", "window:4")]


def _with_io(m: onnx.ModelProto, encoding: str, readout: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    ir.set_meta(out, "encoding", encoding)
    ir.set_meta(out, "readout", readout)
    return out


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("encoding,readout", TIME_INPUTS)
@pytest.mark.parametrize("reset,leak,v0", [("subtract", 0.2, "random"), ("zero", 0.25, "zero")])
def test_time_varying_input_on_every_target(reset, leak, v0, encoding, readout, target, data):
    """Spike frames [N, T, ...] and both rate encoders (the runtime's one encoder, same seed) into
    LIF layers, with the last-step and window readouts: torch float64 and Lava float spike for
    spike against the reference, Lava fixed point bit-exact with its integer reference; NIR runs
    frames losslessly and refuses what it has no encoder or readout for, by name."""
    calib, x = data
    snn = _with_io(_neuron_ir(reset, leak, v0), encoding, readout)
    if encoding == "frames":
        x = (_rng(7).uniform(0, 1, (N, T) + x.shape[1:]) < x[:, None]).astype(np.float32)
    if target.startswith("lava"):
        pytest.importorskip("snnconvert.targets.lava")
    if target == "nir":
        pytest.importorskip("nir")
        if encoding != "frames" or readout != "membrane":
            with pytest.raises(TargetError, match=f"the nir target .*'{encoding if encoding != 'frames' else readout}'"):
                get_target("nir").export(snn)
            return
        if reset == "subtract":
            return  # lossy on NIR (test_neuron_semantics_on_every_target)
    _check("IF", target, snn, x)


@pytest.mark.parametrize("target", ["torch", "lava", "nir"])
@pytest.mark.parametrize("form", ["value", "value_ints"])
def test_a_constant_node_means_the_same_to_every_reader(form, target, data):
    """An IR may keep a Constant node (a Reshape's shape, in either form exporters write): the
    reference, the torch runtime, Lava's lowering, NIR's export, the shape rules and the synapse
    count all read it. Before, each decoded the attribute twice (AttributeError on 'value') or read
    only 'value' (KeyError; NIR and the synapse count: TypeError on 'value_ints')."""
    from snnconvert import onnxrt
    from snnconvert.ops import tensor_shapes
    from snnconvert.ops.synapses import synapses

    if target == "lava":
        pytest.importorskip("snnconvert.targets.lava")
    if target == "nir":
        pytest.importorskip("nir")
    snn = _neuron_ir("zero", 0.0, "zero") if target == "nir" else _neuron_ir("subtract", 0.0, "half")
    flat_synapses = synapses(snn, tensor_shapes(snn))
    nodes = list(snn.graph.node)
    (flat,) = [n for n in nodes if n.op_type == "Flatten"]
    shape = ({"value": onnx.numpy_helper.from_array(np.array([0, -1], np.int64))} if form == "value"
             else {"value_ints": [0, -1]})
    i = nodes.index(flat)
    nodes[i:i + 1] = [mk("Constant", [], ["flat_shape"], name="flat_shape", **shape),
                      mk("Reshape", [flat.input[0], "flat_shape"], [flat.output[0]], name="flat")]
    del snn.graph.node[:]
    snn.graph.node.extend(nodes)
    onnx.checker.check_model(snn)
    assert tensor_shapes(snn) == {k: v for k, v in onnxrt.tensor_shapes(snn).items() if k != "flat_shape"}
    assert synapses(snn, tensor_shapes(snn)) == flat_synapses
    _check("IF", target, snn, data[1])
