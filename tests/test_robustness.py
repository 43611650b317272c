"""A corpus of bad inputs through the real CLI entry: each exits 2 with ONE line naming the problem.

Every case asserts the exact message, that no traceback is printed, that no output (and no
temporary file) is left behind and that the input files are unchanged.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from snnconvert import ir
from snnconvert.cli import main
from snnconvert.errors import ModelLoadError
from snnconvert.frontend import load_model

RNG = np.random.default_rng(0)
PROGRESS = re.compile(r"\d+%\|")  # a tqdm progress bar line


def small_model(act: str = "Relu", in_shape=(2, 6, 6), batch="N", weight_fill: float | None = None,
                ir_version: int = 8) -> onnx.ModelProto:
    """Conv(2->3, 3x3) -> act -> Flatten -> Gemm(48->4), input [batch, *in_shape]."""
    w = (RNG.standard_normal((3, in_shape[0], 3, 3)) * 0.5).astype(np.float32)
    if weight_fill is not None:
        w[0, 0, 0, 0] = weight_fill
    g = (RNG.standard_normal((3 * (in_shape[1] - 2) * (in_shape[2] - 2), 4)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1"),
             helper.make_node(act, ["c"], ["r"], name="act1"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "g"], ["y"], name="fc")]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    return model


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """Run the CLI in-process; return (exit code, non-empty stderr lines other than progress bars)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exc.value.code, [line for line in err.splitlines() if line.strip() and not PROGRESS.search(line)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def work(tmp_path):
    """A folder with a good model and good calibration/evaluation data."""
    onnx.save(small_model(), tmp_path / "good.onnx")
    x = RNG.random((20, 2, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(20) % 4)
    return tmp_path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _model_file(folder: Path, name: str, model: onnx.ModelProto) -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _external_data_model(folder: Path) -> Path:
    path = folder / "ext.onnx"
    model = small_model()
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True,
                                                         location="ext.onnx.data", size_threshold=0)
    onnx.save(model, path)
    (folder / "ext.onnx.data").unlink()
    return path


def _npz(folder: Path, name: str, **arrays) -> Path:
    np.savez(folder / name, **arrays)
    return folder / name


GOOD = "good.onnx"
X = RNG.random((20, 2, 6, 6)).astype(np.float32)

# (case id, builder(folder) -> argv, exact expected stderr line with {d} = folder)
CASES = [
    ("missing_model", lambda d: ["convert", d / "nope.onnx"],
     "error: model file not found: {d}/nope.onnx"),
    ("empty_file", lambda d: ["convert", _write(d / "empty.onnx", b"")],
     "error: {d}/empty.onnx is empty (0 bytes)"),
    ("random_bytes", lambda d: ["convert", _write(d / "rand.onnx", RNG.bytes(3000))],
     "error: {d}/rand.onnx is not a valid ONNX file: protobuf decoding failed (3000 bytes; truncated, "
     "corrupted or another format)"),
    ("truncated", lambda d: ["convert", _write(d / "trunc.onnx", (d / GOOD).read_bytes()[:700])],
     "error: {d}/trunc.onnx is not a valid ONNX file: protobuf decoding failed (700 bytes; truncated, "
     "corrupted or another format)"),
    ("text_file", lambda d: ["convert", _write(d / "notes.onnx", b"hello, this is not a model\n")],
     "error: {d}/notes.onnx is not a valid ONNX file: protobuf decoding failed (27 bytes; truncated, "
     "corrupted or another format)"),
    ("zip_checkpoint", lambda d: ["convert", _zip(d / "model.pt")],
     "error: {d}/model.pt is a zip archive (e.g. a PyTorch checkpoint), not an ONNX model "
     "Hint: export the network with torch.onnx.export first."),
    ("missing_external_data", lambda d: ["convert", _external_data_model(d)],
     "error: {d}/ext.onnx: external data file 'ext.onnx.data' of tensor 'w' is missing (looked in {d}) "
     "Hint: copy the data file next to the .onnx file."),
    ("nan_weights", lambda d: ["convert", _model_file(d, "nan.onnx", small_model(weight_fill=np.nan))],
     "error: node 'conv1' (Conv): initializer 'w' holds 1 NaN value(s) Hint: the weights are corrupt "
     "(diverged training?); fix or retrain the model."),
    ("inf_weights", lambda d: ["convert", _model_file(d, "inf.onnx", small_model(weight_fill=np.inf))],
     "error: node 'conv1' (Conv): initializer 'w' holds 1 Inf value(s) Hint: the weights are corrupt "
     "(diverged training?); fix or retrain the model."),
    ("unsupported_op", lambda d: ["convert", _model_file(d, "sig.onnx", small_model("Sigmoid"))],
     "error: node 'act1' (Sigmoid): a saturating non-linearity has no integrate-and-fire equivalent. "
     "Hint: retrain the network with ReLU (or ReLU6 / Clip(0, max))."),
    ("signed_neuron", lambda d: ["convert", _model_file(d, "leaky.onnx", small_model("LeakyRelu"))],
     "error: node 'act1' (LeakyRelu): a negative slope needs signed neurons, which are not supported. "
     "Hint: retrain with ReLU."),
    ("dynamic_spatial", lambda d: ["convert", _model_file(d, "dyn.onnx", _dynamic_model())],
     "error: input 'x' has a dynamic dimension 2 ('H'); only the batch dimension (0) may be dynamic "
     "Hint: export the model with a fixed input size (e.g. a static H and W)."),
    ("output_is_input", lambda d: ["convert", d / GOOD, "-o", d / GOOD],
     "error: output {d}/good.onnx would overwrite the input model Hint: Choose another path with -o."),
    ("output_is_input_other_spelling", lambda d: ["convert", d / GOOD, "-o", f"{d}/../{d.name}/{GOOD}"],
     "error: output {d}/../{n}/good.onnx would overwrite the input model Hint: Choose another path with -o."),
    ("missing_calib", lambda d: ["convert", d / GOOD, "--calib", d / "nope.npz"],
     "error: calibration file not found: {d}/nope.npz"),
    ("calib_not_npz", lambda d: ["convert", d / GOOD, "--calib", _write(d / "c.npz", b"garbage")],
     "error: calibration file {d}/c.npz is not a readable .npz archive (ValueError) "
     "Hint: Save it with numpy.savez(path, x=..., y=...)."),
    ("calib_no_x", lambda d: ["convert", d / GOOD, "--calib", _npz(d, "c.npz", inputs=X)],
     "error: calibration file {d}/c.npz has no array 'x' (found: inputs) "
     "Hint: Store the preprocessed inputs under the key 'x'."),
    ("calib_empty", lambda d: ["convert", d / GOOD, "--calib", _npz(d, "c.npz", x=X[:0])],
     "error: calibration file {d}/c.npz: 'x' is empty"),
    ("calib_wrong_shape", lambda d: ["convert", d / GOOD, "--calib", _npz(d, "c.npz", x=X[:, :, :5])],
     "error: calibration file {d}/c.npz: samples have shape [2, 5, 6], the model expects [2, 6, 6]"),
    ("calib_nhwc", lambda d: ["convert", d / GOOD, "--calib", _npz(d, "c.npz", x=X.transpose(0, 2, 3, 1))],
     "error: calibration file {d}/c.npz: samples have shape [6, 6, 2], the model expects [2, 6, 6] "
     "Hint: The dimensions match in another order: check the layout (NCHW vs NHWC)."),
    ("calib_string_dtype", lambda d: ["convert", d / GOOD, "--calib", _npz(d, "c.npz", x=np.array(["a", "b"]))],
     "error: calibration file {d}/c.npz: 'x' must be a numeric array, got dtype <U1"),
    ("calib_nan", lambda d: ["convert", d / GOOD, "--calib", _npz(d, "c.npz", x=np.full_like(X, np.nan))],
     "error: calibration file {d}/c.npz: 'x' holds NaN or Inf values"),
    ("calib_object_pickle", lambda d: ["convert", d / GOOD, "--calib",
                                       _npz(d, "c.npz", x=np.array([{"a": 1}], dtype=object))],
     "error: calibration file {d}/c.npz is not a readable .npz archive (ValueError) "
     "Hint: Save it with numpy.savez(path, x=..., y=...)."),
    ("labels_wrong_length", lambda d: ["eval", d / GOOD, "--calib", d / "calib.npz", "--timesteps", "4",
                                       "--data", _npz(d, "e.npz", x=X, y=np.zeros(19, np.int64))],
     "error: evaluation file {d}/e.npz: 'y' must be 20 integer labels, got dtype int64 shape [19]"),
    ("labels_float", lambda d: ["eval", d / GOOD, "--calib", d / "calib.npz", "--timesteps", "4",
                                "--data", _npz(d, "e.npz", x=X, y=np.zeros(20))],
     "error: evaluation file {d}/e.npz: 'y' must be 20 integer labels, got dtype float64 shape [20]"),
    ("labels_missing", lambda d: ["eval", d / GOOD, "--calib", d / "calib.npz", "--timesteps", "4",
                                  "--data", _npz(d, "e.npz", x=X)],
     "error: evaluation file {d}/e.npz has no labels 'y' Hint: Add integer labels under 'y'."),
    ("eval_wrong_shape", lambda d: ["eval", d / GOOD, "--calib", d / "calib.npz", "--timesteps", "4",
                                    "--data", _npz(d, "e.npz", x=X[:, :1], y=np.zeros(20, np.int64))],
     "error: evaluation file {d}/e.npz: samples have shape [1, 6, 6], the model expects [2, 6, 6]"),
    ("bad_norm", lambda d: ["convert", d / GOOD, "--calib", d / "calib.npz", "--norm", "median"],
     "error: unknown normalization 'median' Hint: Use 'max' or 'percentile:P' with 0 < P <= 100, "
     "e.g. percentile:99.99."),
    ("bad_timesteps_list", lambda d: ["eval", d / GOOD, "--data", d / "data.npz", "--timesteps", "4,x"],
     "error: --timesteps must be a comma-separated list of integers, got '4,x'"),
    ("no_calibration", lambda d: ["convert", d / GOOD, "-o", d / "out.snn.onnx"],
     "error: calibration needs data, but none was given Hint: Pass --calib C.npz with an array 'x' "
     "of preprocessed inputs."),
    ("inspect_random_bytes", lambda d: ["inspect", _write(d / "rand.onnx", RNG.bytes(100))],
     "error: {d}/rand.onnx is not a valid ONNX file: protobuf decoding failed (100 bytes; truncated, "
     "corrupted or another format)"),
    ("eval_not_snn", lambda d: ["eval", _model_file(d, "plain.snn.onnx", small_model()), "--data", d / "data.npz"],
     "error: {d}/plain.snn.onnx is an ONNX model but not a converted SNN Hint: Convert it first with "
     "'snnconvert convert', or pass --calib."),
]


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return path


def _dynamic_model() -> onnx.ModelProto:
    model = small_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "H"
    return model


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(case, work, capsys):
    _, build, expected = next(c for c in CASES if c[0] == case)
    args = build(work)
    before = snapshot(work)
    code, lines = cli(args, capsys)
    assert code == 2, lines
    assert lines == [expected.format(d=work, n=work.name)]
    assert snapshot(work) == before, "an input was changed or an output/temp file was left"


def test_corpus_size():
    assert len(CASES) >= 30


def test_good_model_converts_and_inputs_are_untouched(work, capsys):
    before = snapshot(work)
    code, lines = cli(["convert", work / GOOD, "--calib", work / "calib.npz", "-o", work / "out.snn.onnx"], capsys)
    assert code == 0, lines
    after = snapshot(work)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["out.pt", "out.snn.onnx"]
    assert ir.is_snn(ir.load(work / "out.snn.onnx"))


def test_interrupted_convert_leaves_no_partial_output(work, capsys, monkeypatch):
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    before = snapshot(work)
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(work / GOOD), "--calib", str(work / "calib.npz"), "-o", str(work / "out.snn.onnx")])
    assert exc.value.code == 1  # click turns the interrupt into "aborted"
    assert snapshot(work) == before


def test_failed_convert_keeps_existing_output(work, capsys):
    out = work / "out.snn.onnx"
    out.write_bytes(b"previous result")
    onnx.save(small_model("Tanh"), work / "tanh.onnx")
    code, lines = cli(["convert", work / "tanh.onnx", "--calib", work / "calib.npz", "-o", out], capsys)
    assert code == 2 and len(lines) == 1 and "node 'act1' (Tanh)" in lines[0]
    assert out.read_bytes() == b"previous result"


def test_several_unsupported_nodes_are_all_named(work, capsys):
    model = small_model("Sigmoid")
    model.graph.node.insert(3, helper.make_node("Tanh", ["f"], ["f2"], name="squash"))
    model.graph.node[4].input[0] = "f2"
    path = _model_file(work, "two.onnx", model)
    code, lines = cli(["convert", path, "--calib", work / "calib.npz"], capsys)
    assert code == 2
    assert lines == ["error: 2 unsupported node(s) in the model: "
                     "node 'act1' (Sigmoid): a saturating non-linearity has no integrate-and-fire equivalent. "
                     "Hint: retrain the network with ReLU (or ReLU6 / Clip(0, max)). | "
                     "node 'squash' (Tanh): a signed saturating non-linearity has no integrate-and-fire "
                     "equivalent. Hint: retrain the network with ReLU (or ReLU6 / Clip(0, max))."]


def test_directory_as_model_is_refused(capsys):
    with pytest.raises(ModelLoadError, match=r"is a directory, not an ONNX file$"):
        load_model(Path(__file__).resolve().parent)
    code, lines = cli(["convert", str(Path(__file__).resolve().parent)], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].endswith("is a directory, not an ONNX file")
