"""The CLI: conversion and evaluation from the shell, exit codes and one-line messages."""
import json
import subprocess
import sys

import numpy as np
import pytest

from snnconvert.cli import main

FIX = "tests/fixtures"


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, digits):
    d = tmp_path_factory.mktemp("data")
    np.savez(d / "calib.npz", x=digits["x_train"][:200])
    np.savez(d / "test.npz", x=digits["x_test"][:150], y=digits["y_test"][:150])
    return d


def test_convert_then_eval_writes_ir_artifact_and_json(tmp_path, data_files, capsys):
    out = tmp_path / "cnn.snn.onnx"
    code, stdout, _ = run([f"{FIX}/digits_cnn.onnx", "--calib", str(data_files / "calib.npz"), "-T", "16",
                           "-o", str(out)], capsys)
    assert code == 0, stdout
    assert out.exists() and (tmp_path / "cnn.pt").exists()
    assert "fold-batchnorm" in stdout and "normalize-thresholds" in stdout
    report = tmp_path / "r.json"
    code, stdout, _ = run(["eval", str(out), "--data", str(data_files / "test.npz"),
                           "--timesteps", "4,16", "--json", str(report)], capsys)
    assert code == 0
    r = json.loads(report.read_text())
    assert [row["timesteps"] for row in r["snn"]] == [4, 16]
    assert 0.85 < r["snn"][1]["accuracy"] <= 1 and 0 <= r["ann"]["accuracy"] <= 1
    assert set(r["snn"][0]) == {"timesteps", "accuracy", "agreement", "firing_rate", "layer_rates"}


def test_eval_of_an_ann_reports_the_onnxruntime_accuracy(data_files, capsys, digits):
    from snnconvert.api import ann_outputs
    from snnconvert.frontend import load_model

    code, stdout, _ = run(["eval", f"{FIX}/digits_cnn.onnx", "--calib", str(data_files / "calib.npz"),
                           "--data", str(data_files / "test.npz"), "--timesteps", "8"], capsys)
    assert code == 0
    expected = np.mean(ann_outputs(load_model(f"{FIX}/digits_cnn.onnx"), digits["x_test"][:150]).argmax(1)
                       == digits["y_test"][:150])
    assert f"ANN accuracy: {expected:.4f}" in stdout


@pytest.mark.parametrize("args,message", [
    (["missing.onnx"], "error: model file not found: missing.onnx"),
    ([f"{FIX}/digits_cnn.onnx", "--calib", f"{FIX}/digits.npz"],
     "error: calibration file tests/fixtures/digits.npz has no array 'x' (found: x_train, y_train, x_test, y_test)"),
    (["eval", f"{FIX}/digits_cnn.onnx", "--data", f"{FIX}/digits.npz", "--timesteps", "4,x"],
     "error: --timesteps must be a comma-separated list of integers, got '4,x'"),
    ([f"{FIX}/digits_cnn.onnx", "--norm", "median"],
     "error: unknown normalization 'median'"),
    ([f"{FIX}/digits_cnn.onnx"], "error: calibration needs data, but none was given"),
    ([f"{FIX}/digits_cnn.onnx", "-o", f"{FIX}/digits_cnn.onnx"], "would overwrite the input model"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    code, _, err = run(args, capsys)
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip() and "%" not in l]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_calibration_with_wrong_layout_names_the_shapes(tmp_path, digits, capsys):
    np.savez(tmp_path / "nhwc.npz", x=digits["x_train"][:20].transpose(0, 2, 3, 1))
    code, _, err = run([f"{FIX}/digits_cnn.onnx", "--calib", str(tmp_path / "nhwc.npz"),
                        "-o", str(tmp_path / "o.snn.onnx")], capsys)
    assert code == 2
    assert "samples have shape [8, 8, 1], the model expects [1, 8, 8]" in err
    assert "check the layout (NCHW vs NHWC)" in err
    assert not (tmp_path / "o.snn.onnx").exists()


def test_inspect_lists_mappings(capsys):
    code, stdout, _ = run(["inspect", f"{FIX}/digits_resnet.onnx"], capsys)
    assert code == 0 and "Concat" in stdout and "neuron" in stdout


def test_python_dash_m_entry_point_works():
    out = subprocess.run([sys.executable, "-m", "snnconvert", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "convert" in out.stdout and "eval" in out.stdout


def test_eval_with_optimized_init_fits_each_t(tmp_path, data_files, capsys):
    report = tmp_path / "opt.json"
    code, stdout, _ = run(["eval", f"{FIX}/digits_resnet.onnx", "--calib", str(data_files / "calib.npz"),
                           "--data", str(data_files / "test.npz"), "--timesteps", "2,4",
                           "--v-init", "optimized", "--json", str(report)], capsys)
    assert code == 0
    rows = json.loads(report.read_text())["snn"]
    assert [r["timesteps"] for r in rows] == [2, 4]
    assert rows[1]["accuracy"] >= 0.9


def test_shorthand_convert_after_group_options(tmp_path, data_files, capsys):
    out = tmp_path / "t.snn.onnx"
    code, stdout, _ = run(["--threads", "1", f"{FIX}/digits_cnn.onnx", "--calib", str(data_files / "calib.npz"),
                           "-o", str(out)], capsys)
    assert code == 0 and out.exists()


def test_a_converted_file_is_recognized_by_content(tmp_path, data_files, capsys):
    out = tmp_path / "net"  # no .snn.onnx suffix
    code, stdout, _ = run([f"{FIX}/digits_cnn.onnx", "--calib", str(data_files / "calib.npz"), "-T", "8",
                           "-o", str(out)], capsys)
    assert code == 0, stdout
    code, stdout, err = run(["eval", str(out), "--data", str(data_files / "test.npz"), "--timesteps", "8"],
                            capsys)
    assert code == 0, err
    assert "ANN (rate limit of the IR) accuracy" in stdout
    code, _, err = run([str(out), "--calib", str(data_files / "calib.npz")], capsys)
    assert code == 2 and f"error: '{out}' is already a converted spiking network" in err


@pytest.mark.parametrize("ends_with, expected", [
    ("stopped: the output disk is full", (1, "stopped: the output disk is full\n")),
    (3, (3, "")), (None, (0, "")),
])
def test_a_command_that_ends_itself_keeps_its_code_and_message(ends_with, expected, capsys):
    """sys.exit("...") inside a command prints its message and exits 1, as Python would; before,
    the message was dropped."""
    import click

    from snnconvert.cli import cli

    @click.command("ends-itself")
    def ends_itself() -> None:
        sys.exit(ends_with)

    cli.add_command(ends_itself)
    try:
        code, _, err = run(["ends-itself"], capsys)
    finally:
        del cli.commands["ends-itself"]
    assert (code, err) == expected
