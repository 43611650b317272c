"""Streaming datasets: every data form reads the same samples, evaluation and calibration over a
stream equal the in-memory path exactly, and histograms do not depend on batch order."""
import json

import numpy as np
import onnx
import pytest

from snnconvert import api, datasets
from snnconvert.cli import main
from snnconvert.datasets import ImageFolder, Preprocess, batches, head, open_data
from snnconvert.errors import DataError, OptionError
from snnconvert.passes.calibrate import ActivationStats, Histogram

FIX = "tests/fixtures"


@pytest.fixture(scope="module")
def digit_forms(tmp_path_factory, digits):
    """The same 120 labelled digits as .npz, .npy pair, .npz shards and a PNG image folder."""
    from PIL import Image

    d = tmp_path_factory.mktemp("forms")
    pixels = np.round(digits["x_test"][:120, 0] * 255).astype(np.uint8)
    x = (pixels.astype(np.float32) / np.float32(255))[:, None]
    y = digits["y_test"][:120]
    order = np.argsort(y, kind="stable")  # the image folder lists class by class
    x, y, pixels = x[order], y[order], pixels[order]
    np.savez(d / "all.npz", x=x, y=y)
    (d / "pair").mkdir()
    np.save(d / "pair" / "x.npy", x)
    np.save(d / "pair" / "y.npy", y)
    (d / "shards").mkdir()
    for k, s in enumerate(range(0, 120, 50)):
        np.savez(d / "shards" / f"part{k:02d}.npz", x=x[s:s + 50], y=y[s:s + 50])
    for i, (p, label) in enumerate(zip(pixels, y)):
        folder = d / "images" / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p, mode="L").save(folder / f"{i:04d}.png")
    return d, x, y


def test_every_data_form_reads_the_same_samples(digit_forms):
    d, x, y = digit_forms
    forms = {"npz": open_data(d / "all.npz"), "npy": open_data(d / "pair"),
             "npy-file": open_data(d / "pair" / "x.npy"), "shards": open_data(d / "shards"),
             "images": open_data(d / "images", preprocess="mode=L")}
    for name, source in forms.items():
        assert source.sample_shape == (1, 8, 8) and len(source) == 120, name
        for workers in (0, 1):
            got = list(batches(source, 32, workers=workers))
            assert [len(b[0]) for b in got] == [32, 32, 32, 24]
            np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x, err_msg=name)
            np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y, err_msg=name)
    assert forms["images"].classes[:2] == ["digit0", "digit1"]


def test_shard_permutation_keeps_shards_together(digit_forms):
    d, _, _ = digit_forms
    shards = open_data(d / "shards")
    order = shards.permutation(np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(120))
    runs = np.searchsorted(shards.offsets, order, side="right") - 1
    assert np.count_nonzero(np.diff(runs)) == len(shards.files) - 1


def test_preprocess_resize_crop_normalize_layout():
    from PIL import Image

    img = Image.fromarray(np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3), mode="RGB")
    p = Preprocess.parse("resize=3 crop=2 scale=2 mean=1,2,3 std=2 layout=NHWC")
    out = p(img)
    assert out.shape == (2, 2, 3) == p.output_shape(6, 8)
    ref = np.asarray(img.resize((4, 3), Image.BILINEAR), np.float32)[0:2, 1:3] / 2
    np.testing.assert_allclose(out, (ref - np.array([1, 2, 3], np.float32)) / 2)
    chw = Preprocess(layout="NCHW")(img)
    np.testing.assert_array_equal(chw, np.asarray(img, np.float32).transpose(2, 0, 1) / 255)
    assert Preprocess(mode="L", layout="NC").output_shape(6, 8) == (48,)


def test_preprocess_and_data_errors(tmp_path, digit_forms):
    with pytest.raises(OptionError, match=r"preprocess: unknown key\(s\) blur Hint: Known keys"):
        Preprocess.parse("blur=3")
    with pytest.raises(OptionError, match="mean needs 1 or 3 values for mode RGB, got 2"):
        Preprocess.parse("mean=0.1,0.2")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a data file or folder"):
        open_data(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    np.savez(tmp_path / "bad" / "a.npz", x=np.zeros((3, 2), np.float32))
    np.savez(tmp_path / "bad" / "b.npz", x=np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match=r"samples have shape \[4\], the first shard's have \[2\]"):
        open_data(tmp_path / "bad")
    d, _, _ = digit_forms
    with pytest.raises(DataError, match=r"samples have shape \[1, 8, 8\], the model expects \[8, 8, 1\]"
                                        r".*Hint: The dimensions match in another order"):
        open_data(d / "pair", shape=[8, 8, 1])
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(DataError, match="has no labels"):
        open_data(tmp_path / "x.npy", labels=True)


def test_toml_dataset_spec(tmp_path, digit_forms):
    d, x, _ = digit_forms
    spec = tmp_path / "digits.toml"
    spec.write_text(f'[data]\npath = "{d / "images"}"\n[preprocess]\nmode = "L"\nscale = 255.0\n')
    source = open_data(spec)
    assert isinstance(source, ImageFolder)
    np.testing.assert_array_equal(head(source, 7), x[:7])


def test_histogram_is_independent_of_batch_order_and_merges_exactly():
    rng = np.random.default_rng(1)
    parts = [rng.gamma(2.0, s, size=(4, 300)) * (rng.random((4, 300)) > 0.3) for s in (0.1, 3.0, 40.0)]
    hists = []
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        h = Histogram.empty(4)
        for k in order:
            h.add(parts[k])
        hists.append(h)
    for h in hists[1:]:
        np.testing.assert_array_equal(h.counts, hists[0].counts)
        np.testing.assert_array_equal(h.ranges, hists[0].ranges)
    a, b = Histogram.empty(4), Histogram.empty(4)
    a.add(parts[0])
    b.add(parts[1])
    b.add(parts[2])
    for r, rng_b in enumerate(b.ranges):  # what reduce() does across two ranks
        a.grow(r, float(max(rng_b, a.ranges[r])))
        b.grow(r, float(max(rng_b, a.ranges[r])))
    np.testing.assert_array_equal(a.counts + b.counts, hists[0].counts)
    assert np.all(hists[0].ranges > np.max(np.concatenate(parts, 1), axis=1))


def test_stream_evaluation_equals_in_memory(digits):
    snn = api.convert(f"{FIX}/digits_cnn.onnx", digits["x_train"][:200], timesteps=8)
    x, y = digits["x_test"][:150], digits["y_test"][:150]
    ref = api.evaluate(snn, x, y, [2, 8], batch_size=64)
    from torch.utils.data import DataLoader, TensorDataset
    import torch

    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=64)
    listed = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 150, 64)]
    for data in (datasets.ArraySource(x, y), loader, listed):
        got = api.evaluate(snn, data, None, [2, 8], batch_size=64)
        assert got.to_json() == ref.to_json()
    assert ref.samples == 150 and set(ref.rows[1].layer_rates) == {n.name for n in
                                                                   __import__("snnconvert").ir.neurons(snn)}


def test_convert_with_a_stream_equals_arrays(digits, digit_forms):
    calib = digits["x_train"][:300]
    a = api.convert(f"{FIX}/digits_cnn.onnx", calib, timesteps=8, v_init="optimized")
    b = api.convert(f"{FIX}/digits_cnn.onnx", datasets.ArraySource(calib), timesteps=8, v_init="optimized")
    for ta, tb in zip(a.graph.initializer, b.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(ta), onnx.numpy_helper.to_array(tb))
    stats_a, stats_b = ActivationStats(), ActivationStats()
    for xb, _ in batches(calib, 100):
        stats_a.update(xb)
    for xb, _ in reversed(list(batches(calib, 50))):
        stats_b.update(xb)
    np.testing.assert_array_equal(stats_a.value("percentile:99.9", True), stats_b.value("percentile:99.9", True))


def test_cli_eval_image_folder_equals_npz(tmp_path, digit_forms, capsys):
    d, _, _ = digit_forms
    results = []
    for data in (str(d / "all.npz"), str(d / "images")):
        out = tmp_path / f"{len(results)}.json"
        with pytest.raises(SystemExit) as exc:
            main(["eval", f"{FIX}/digits_cnn.onnx", "--calib", str(d / "shards"), "--data", data,
                  "--preprocess", "mode=L", "--timesteps", "4", "--json", str(out), "--workers", "1"])
        assert exc.value.code == 0, capsys.readouterr().err
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1]
    assert "120 samples" in capsys.readouterr().out


def test_sharded_batches_cover_every_sample_once_whatever_the_process_count():
    order = np.random.default_rng(0).permutation(23)
    for world in (1, 2, 3):
        for split in ("batches", "within"):
            for skip in (0, 2):
                parts = [list(datasets.ShardedBatches(order, 5, split, r, world, skip=skip))
                         for r in range(world)]
                assert [len(p) for p in parts] == [len(datasets.ShardedBatches(order, 5, split, r, world,
                                                                               skip=skip)) for r in range(world)]
                seen = sorted(i for p in parts for b in p for i in b)
                assert seen == sorted(order[skip * 5:].tolist())
    within = [list(datasets.ShardedBatches(order, 5, "within", r, 2)) for r in range(2)]
    assert [len(b) for b in within[0]] == [3, 3, 3, 3, 2] and within[0][0] + within[1][0] == order[:5].tolist()


def test_bf16_evaluation_runs_and_stays_close(digits):
    """precision="bf16": synaptic ops under bfloat16 autocast (torch kernels on the CPU)."""
    snn = api.convert(f"{FIX}/digits_cnn.onnx", digits["x_train"][:200], timesteps=8)
    x, y = digits["x_test"][:100], digits["y_test"][:100]
    fp32 = api.evaluate(snn, x, y, [8])
    bf16 = api.evaluate(snn, x, y, [8], precision="bf16")
    assert abs(bf16.rows[0].accuracy - fp32.rows[0].accuracy) <= 0.05
    assert bf16.rows[0].firing_rate == pytest.approx(fp32.rows[0].firing_rate, rel=0.05)
    from helpers import mlp_ir

    mlp = api.evaluate(mlp_ir(), np.random.default_rng(0).random((20, 4), np.float32), None, [4],
                       precision="bf16")  # a Gemm readout computed under autocast comes back float32
    assert mlp.samples == 20 and mlp.rows[0].accuracy is None
    with pytest.raises(OptionError, match="unknown precision 'fp8'"):
        api.evaluate(snn, x, y, [8], precision="fp8")


def test_cli_report_reads_an_image_folder_like_the_npz(tmp_path, digit_forms, digits, capsys):
    d, _, _ = digit_forms
    snn = tmp_path / "d.snn.onnx"
    from snnconvert import ir

    ir.save(api.convert(f"{FIX}/digits_cnn.onnx", digits["x_train"][:200], timesteps=8), snn)
    out = []
    for data in (str(d / "all.npz"), str(d / "images")):
        path = tmp_path / f"r{len(out)}.json"
        with pytest.raises(SystemExit) as exc:
            main(["report", str(snn), "--data", data, "--preprocess", "mode=L", "-T", "8",
                  "--json", str(path), "--limit", "100"])
        assert exc.value.code == 0, capsys.readouterr().err
        out.append(json.loads(path.read_text()))
    assert out[0]["samples"] == 100 and out[0]["layers"] == out[1]["layers"]
    assert out[0]["accuracy_vs_T"] == out[1]["accuracy_vs_T"]
