"""Every front-end error type, with its exact message, on a corpus of bad inputs built in the test."""
from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest
from onnx import helper

from snnconvert.errors import ModelLoadError, UnsupportedModelError
from snnconvert.frontend import check_supported, coverage, load_model
from test_frontend_helpers import make_model, rand


def small_model(w: np.ndarray | None = None) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu1")]
    w = rand(2, 1, 1, 1) if w is None else w
    return make_model(nodes, [("x", [1, 1, 4, 4])], [("y", [1, 2, 4, 4])], {"w": w})


# -- unreadable files -----------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert str(err.value) == f"model file not found: {path}"


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="is a directory, not an ONNX file"):
        load_model(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert str(err.value) == f"{path} is empty (0 bytes)"


@pytest.mark.parametrize("kind", ["truncated", "random", "text"])
def test_undecodable_bytes(tmp_path, kind):
    data = {
        "truncated": small_model().SerializeToString()[:-20],
        "random": np.random.default_rng(0).bytes(2000),
        "text": b"this is a text file, not a network\n" * 20,
    }[kind]
    path = tmp_path / f"{kind}.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert str(err.value) == (f"{path} is not a valid ONNX file: protobuf decoding failed ({len(data)} bytes; "
                              "truncated, corrupted or another format)")


def test_zip_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04")
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert str(err.value) == (f"{path} is a zip archive (e.g. a PyTorch checkpoint), not an ONNX model "
                              "Hint: export the network with torch.onnx.export first.")


def test_parsable_but_not_a_model(tmp_path):
    path = tmp_path / "tensor.onnx"
    path.write_bytes(b"\x08\x07")  # decodes as a ModelProto with only ir_version set
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert str(err.value) == f"{path} is not an ONNX model: it has no IR version, graph or opset import"


def test_missing_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(small_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert str(err.value) == (f"{path}: external data file 'weights.bin' of tensor 'w' is missing "
                              f"(looked in {tmp_path}) Hint: copy the data file next to the .onnx file.")


def test_external_data_present_loads(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(small_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    loaded = load_model(path)
    assert [n.op_type for n in loaded.graph.node] == ["Conv", "Relu"]


def test_checker_failure():
    model = small_model()
    model.graph.node[1].input[0] = "undefined_tensor"
    with pytest.raises(ModelLoadError) as err:
        load_model(model)
    assert str(err.value).startswith("model fails the ONNX checker: ")
    assert "undefined_tensor" in str(err.value)
    assert "\n" not in str(err.value)


def test_wrong_source_type():
    with pytest.raises(ModelLoadError, match="expected a path or an onnx.ModelProto, got int"):
        load_model(3)


# -- unsupported content --------------------------------------------------------------------------

@pytest.mark.parametrize("bad,what", [(np.nan, "1 NaN"), (np.inf, "1 Inf")])
def test_non_finite_weight(bad, what):
    w = rand(2, 1, 1, 1)
    w[1, 0, 0, 0] = bad
    with pytest.raises(UnsupportedModelError) as err:
        load_model(small_model(w))
    assert str(err.value) == (f"node 'conv1' (Conv): initializer 'w' holds {what} value(s) "
                              "Hint: the weights are corrupt (diverged training?); fix or retrain the model.")
    assert err.value.node == "conv1"


def test_unresolvable_dynamic_dim():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [("x", ["N", 3, "H", 8])], [("y", ["N", 3, "H", 8])])
    with pytest.raises(UnsupportedModelError) as err:
        load_model(model)
    assert str(err.value) == ("input 'x' has a dynamic dimension 2 ('H'); only the batch dimension (0) may "
                              "be dynamic Hint: export the model with a fixed input size (e.g. a static H and W).")


def unsupported_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("LRN", ["x"], ["l"], name="lrn1", size=3),
        helper.make_node("LeakyRelu", ["l"], ["a"], name="leaky", alpha=0.1),
        helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
        helper.make_node("Mul", ["s", "a"], ["m"], name="gate"),
        helper.make_node("MaxPool", ["m"], ["p"], name="pool", kernel_shape=[2, 2], ceil_mode=1),
        helper.make_node("Pad", ["p", "pads"], ["q"], name="pad", mode="reflect"),
        helper.make_node("Clip", ["q", "lo", "hi"], ["c"], name="clip"),
        helper.make_node("Softmax", ["c"], ["sm"], name="mid_softmax", axis=1),
        helper.make_node("Resize", ["sm", "", "scales"], ["r"], name="up", mode="linear"),
        helper.make_node("Relu", ["r"], ["y"], name="relu"),
    ]
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]), "lo": np.float32(-1), "hi": np.float32(6),
             "scales": np.array([1, 1, 2, 2], np.float32)}
    return make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 2, 8, 8])], inits)


def test_check_supported_names_every_unsupported_node():
    with pytest.raises(UnsupportedModelError) as err:
        check_supported(unsupported_model())
    names = [p[0] for p in err.value.problems]
    assert names == ["lrn1", "leaky", "sig", "gate", "pool", "pad", "clip", "mid_softmax", "up"]
    assert "\n" not in str(err.value), "the CLI prints one line"
    head, *rest = str(err.value).split(": ", 1)
    lines = [head + ":"] + ["  " + part for part in rest[0].split(" | ")]
    assert lines[0] == "9 unsupported node(s) in the model:"
    assert lines[1] == ("  node 'lrn1' (LRN): local response normalization has no spiking equivalent. "
                        "Hint: remove it and retrain, or replace it by BatchNormalization.")
    assert lines[2] == ("  node 'leaky' (LeakyRelu): a negative slope needs signed neurons, which are not "
                        "supported. Hint: retrain with ReLU.")
    assert lines[4] == ("  node 'gate' (Mul): Mul of two activations is a multiplicative interaction with no "
                        "spiking equivalent. Hint: one operand must be a constant.")
    assert lines[5] == ("  node 'pool' (MaxPool): MaxPool with ceil_mode=1 is not supported. "
                        "Hint: pad the input explicitly and use ceil_mode=0.")
    assert lines[6] == ("  node 'pad' (Pad): Pad mode 'reflect' is not supported. Hint: use zero padding "
                        "(mode 'constant', value 0).")
    assert lines[7] == ("  node 'clip' (Clip): Clip with min -1 is not a ReLU-like activation (neurons cannot "
                        "go negative). Hint: use min 0 (ReLU6 = Clip(0, 6)).")
    assert "Resize mode 'linear'" in lines[9]


def test_supported_model_passes_with_statuses():
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["xs"], name="norm"),
        helper.make_node("Conv", ["xs", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Clip", ["bn", "zero", "six"], ["r"], name="relu6"),
        helper.make_node("Pad", ["r", "pads"], ["p"], name="pad"),
        helper.make_node("MaxPool", ["p"], ["mp"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Dropout", ["mp"], ["d"], name="drop"),
        helper.make_node("Flatten", ["d"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2"], ["z"], name="fc", transB=1),
        helper.make_node("Softmax", ["z"], ["y"], name="softmax"),
    ]
    ones = np.ones(2, np.float32)
    inits = {"scale": np.float32(0.5), "w": rand(2, 1, 1, 1), "g": ones, "b": ones, "m": ones, "v": ones,
             "zero": np.float32(0), "six": np.float32(6), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]),
             "w2": rand(3, 18)}
    model = make_model(nodes, [("x", [1, 1, 4, 4])], [("y", [1, 3])], inits)
    status = {m.name: m.status for m in check_supported(model)}
    assert status == {"norm": "absorbed", "conv": "synapse", "bn": "absorbed", "relu6": "neuron",
                      "pad": "structural", "pool": "pool", "drop": "dropped", "flat": "structural",
                      "fc": "synapse", "softmax": "dropped"}
    loaded_status = {m.name: m.status for m in coverage(load_model(model))}
    assert "softmax" not in loaded_status and "drop" not in loaded_status and "norm" not in loaded_status


def test_more_than_one_input_is_refused():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = make_model(nodes, [("a", [1, 4]), ("b", [1, 4])], [("y", [1, 4])])
    with pytest.raises(UnsupportedModelError) as err:
        check_supported(model)
    assert err.value.problems == [("<graph>", "Input", "the graph has 2 inputs (a, b); exactly one is "
                                   "supported. Hint: merge the inputs or export a single-input model.")]
