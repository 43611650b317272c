"""Large weights are held once: kernels are fed them, onnxruntime sessions read the model without
copies, and a conversion changes the network it owns in place."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import snnconvert as sc
from snnconvert import ir, onnxrt
from snnconvert.passes.optimize_init import open_thresholds, opened
from snnconvert.runtime import SpikingNetwork, ort_kernels

from helpers import conv_bn_relu
from test_memory import PEAK


@pytest.fixture(scope="module")
def snn() -> onnx.ModelProto:
    x = np.random.default_rng(0).random((64, 3, 8, 8), dtype=np.float32)
    return sc.convert(conv_bn_relu(), x, timesteps=8, calibration="none")


def _outputs(net: SpikingNetwork, x: np.ndarray) -> np.ndarray:
    return net.simulate(x, 8).readout[8]


@pytest.mark.parametrize("fed_bytes", [0, 1 << 40], ids=["fed", "held"])
def test_kernels_follow_a_weight_changed_in_place(snn, monkeypatch, fed_bytes):
    """Fed (every weight, here) or held, onnxruntime's kernels give torch's result, and after a
    weight is halved in place they give the new network's: a fed weight is read at every run
    (its session is not rebuilt), a held one rebuilds its session."""
    monkeypatch.setattr(ort_kernels, "FED_BYTES", fed_bytes)
    x = np.random.default_rng(1).random((16, 3, 8, 8), dtype=np.float32)
    ours, theirs = SpikingNetwork(snn), SpikingNetwork(snn, cpu_kernels="torch")
    before = _outputs(ours, x)
    np.testing.assert_allclose(before, _outputs(theirs, x), rtol=1e-5, atol=1e-5)
    sessions = {k: v[1] for k, v in ours._ort._cache.items()}
    assert sessions, "no onnxruntime kernel ran"
    fc = next(n for n in snn.graph.node if n.op_type == "Gemm")  # on spikes: onnxruntime runs it
    with torch.no_grad():
        for net in (ours, theirs):
            net.parameter(fc.input[1]).mul_(0.5)
    after = _outputs(ours, x)
    np.testing.assert_allclose(after, _outputs(theirs, x), rtol=1e-5, atol=1e-5)
    assert np.abs(after - before).max() > 1e-2
    rebuilt = {k for k, v in ours._ort._cache.items() if v[1] is not sessions.get(k)}
    assert rebuilt == (set() if fed_bytes == 0 else {fc.name})


def test_a_session_opens_the_thresholds_without_a_copy(snn):
    """A session given the opened thresholds runs the ANN exactly as a copy with them does, and
    returns the intermediate tensors asked for, leaving the model as it was, byte for byte."""
    x = np.random.default_rng(2).random((32, 3, 8, 8), dtype=np.float32)
    names = [n.output for n in ir.neurons(snn)] + [snn.graph.output[0].name]
    before = snn.SerializeToString()
    ours = onnxrt.collect(snn, x, names, initializers=opened(snn))
    assert snn.SerializeToString() == before
    copied = onnxrt.collect(open_thresholds(snn), x, names)
    clipped = onnxrt.collect(snn, x, names)
    for name in names:
        np.testing.assert_array_equal(ours[name], copied[name])
    assert max(float(np.abs(ours[n] - clipped[n]).max()) for n in names) > 1e-2  # measured 0.03


SIMULATE = PEAK + """
import sys
import numpy as np, torch
from onnx import helper, numpy_helper, TensorProto
torch.set_num_threads(1)
import snnconvert as sc
from snnconvert.runtime import SpikingNetwork
rng = np.random.default_rng(0)
w = {"w1": rng.standard_normal((64, 2048)) * 0.2, "w2": rng.standard_normal((2048, 16384)) * 0.03,
     "w3": rng.standard_normal((16384, 10)) * 0.01}  # w2: 128 MB, fed by spikes
g = helper.make_graph([helper.make_node("Gemm", ["x", "w1"], ["h1"], name="fc1"),
                       helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
                       helper.make_node("Gemm", ["r1", "w2"], ["h2"], name="fc2"),
                       helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
                       helper.make_node("Gemm", ["r2", "w3"], ["y"], name="fc3")], "wide",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                      [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
x = rng.random((16, 64), dtype=np.float32)
snn = sc.convert(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), x, timesteps=4,
                 calibration="none")
net = SpikingNetwork(snn)
del w, g, snn
from snnconvert.runtime import fused  # load numba's kernel first (about 60 MB, once per process)
fused.if_neuron_fused(torch.rand(4, 2, 8), 4, torch.zeros(2, 8), torch.ones(8))
with open("/proc/self/status") as f:
    base = int(f.read().split("VmRSS:")[1].split()[0])
with open("/proc/self/clear_refs", "w") as f:  # VmHWM counts from here: the simulation alone
    f.write("5")
net.simulate(x, 4)
print("@@", base, peak_kb(), sorted(net._ort._cache), file=sys.stderr)
"""


def test_simulating_holds_a_large_weight_once():
    """onnxruntime's kernel is fed a 128 MB weight: simulating adds far less than the weight to
    the memory the network already holds (measured: +16 MB, numba's kernel loaded before).
    A session holding its own copy added +572 MB (4.5× the weight) while it was built, and kept
    2× resident. Loading numba's kernel costs about 60 MB once per process; whether that shows
    depended on whether freed memory was reused (+0 MB before, +67 MB once the module that
    trains neurons was imported), so it is loaded before the measurement starts."""
    done = subprocess.run([sys.executable, "-c", SIMULATE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("@@"))
    base, peak = (int(v) for v in line.split()[1:3])
    assert "'fc2'" in line  # onnxruntime ran the 128 MB Gemm
    assert peak - base < 64 * 1024, (base, peak)
