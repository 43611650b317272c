"""pipe-D pieces on small data built here: accumulated frames for the ANN, a converted network run
on the event frames, fine-tuning on frames, and the accuracy-over-time curve of a training run."""
from __future__ import annotations

import io
import time

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnconvert
from snnconvert import plots
from snnconvert.errors import OptionError
from snnconvert.events import SaccadeConfig, accumulate_frames, images_to_dataset
from snnconvert.finetune import FinetuneConfig, Trainer, accuracy
from snnconvert.finetune.curve import Curve, CurvePoint, Stopwatch, train_with_curve

T = 6


@pytest.fixture(scope="module")
def event_digits(tmp_path_factory, digits):
    """The fixture digits as emulated saccade recordings: x float32 [N, 6, 2, 14, 14] event counts."""
    folder = tmp_path_factory.mktemp("events")
    out = {}
    for split, n, seed in (("train", 600, 0), ("test", 200, 1)):
        images = (digits[f"x_{split}"][:n, 0] * 255).astype(np.uint8)
        images_to_dataset(folder / f"{split}.npz", images, digits[f"y_{split}"][:n], T,
                          config=SaccadeConfig(threshold=0.2), seed=seed, progress=False)
        with np.load(folder / f"{split}.npz") as f:
            out[f"x_{split}"], out[f"y_{split}"] = f["x"].astype(np.float32), f["y"]
    assert out["x_train"].shape == (600, T, 2, 14, 14) and out["x_train"].sum() > 0
    return out


@pytest.fixture(scope="module")
def event_ann(event_digits):
    """A small CNN trained on the accumulated frames (the mean over time), and its ONNX export."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.from_numpy(accumulate_frames(event_digits["x_train"]))
    y = torch.from_numpy(event_digits["y_train"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        for i in range(0, len(x), 50):
            loss = F.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(model, x[:1], buf, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    return model, onnx.load_from_string(buf.getvalue())


def ann_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


# ------------------------------------------------------------------ accumulated frames

def test_accumulated_frames_are_the_mean_over_time() -> None:
    x = np.random.default_rng(0).integers(0, 5, size=(7, 4, 2, 3, 3)).astype(np.uint8)
    acc = accumulate_frames(x, block=3)
    assert acc.dtype == np.float32 and acc.shape == (7, 2, 3, 3)
    np.testing.assert_allclose(acc, x.astype(np.float64).mean(1), rtol=1e-6)
    np.testing.assert_allclose(accumulate_frames(x, 2), x[:, :2].astype(np.float64).mean(1), rtol=1e-6)


def test_accumulated_frames_refuse_data_without_time_axis_and_bad_steps() -> None:
    with pytest.raises(OptionError, match="time axis"):
        accumulate_frames(np.zeros((4, 3)))
    for steps in (0, 5):
        with pytest.raises(OptionError, match=r"steps must be in 1\.\.4"):
            accumulate_frames(np.zeros((2, 4, 2, 3, 3)), steps)


# ----------------------------------------------------- converted net on event frames

def test_net_trained_on_accumulated_frames_converts_and_runs_on_the_frames(event_digits, event_ann) -> None:
    model, onnx_model = event_ann
    ann_acc = ann_accuracy(model, accumulate_frames(event_digits["x_test"]), event_digits["y_test"])
    assert ann_acc > 0.8
    snn = snnconvert.convert(onnx_model, accumulate_frames(event_digits["x_train"][:200]), timesteps=T,
                             encoding="frames")
    net = Trainer(snn, FinetuneConfig(timesteps=T)).net
    on_frames = accuracy(net, event_digits["x_test"], event_digits["y_test"], T)
    assert on_frames > 0.5  # chance is 0.1; the rest of the gap is what fine-tuning closes
    # every frame equal to the mean frame: the SNN runs the ANN's rate limit, the conversion is tight
    mean = accumulate_frames(event_digits["x_test"])
    constant = np.repeat(mean[:, None], 32, axis=1)
    with torch.no_grad():
        snn_pred = net(torch.from_numpy(constant), 32).argmax(1).numpy()
        ann_pred = model(torch.from_numpy(mean)).argmax(1).numpy()
    assert (snn_pred == ann_pred).mean() > 0.9


def test_finetuning_on_frames_lowers_the_loss(event_digits, event_ann) -> None:
    _, onnx_model = event_ann
    snn = snnconvert.convert(onnx_model, accumulate_frames(event_digits["x_train"][:200]), timesteps=T,
                             encoding="frames")
    x, y = event_digits["x_train"][:256], event_digits["y_train"][:256]
    trainer = Trainer(snn, FinetuneConfig(timesteps=T, lr=1e-3, batch_size=32, epochs=2, train_leak=True))
    trainer.fit_logit_scale(x, y)

    def loss() -> float:
        with torch.no_grad():
            out = trainer.net(torch.from_numpy(x), T)
        return float(F.cross_entropy(out * trainer.logit_scale, torch.from_numpy(y)))

    before = loss()
    for _ in range(2):
        trainer.run_epoch(x, y)
    assert loss() < before * 0.9


# ------------------------------------------------------------------ accuracy over time

def test_curve_finds_best_and_time_to_reach_with_its_offset() -> None:
    curve = Curve("run", [CurvePoint(0, 0.0, 0.0, 0.5), CurvePoint(10, 4.0, 2.0, 0.8),
                          CurvePoint(20, 8.0, 4.0, 0.9), CurvePoint(30, 12.0, 6.0, 0.9)],
                  offset_wall_s=3.0, offset_cpu_s=1.0)
    assert curve.best().samples == 20
    assert curve.time_to_reach(0.8) == 7.0 and curve.time_to_reach(0.8, "cpu") == 3.0
    assert curve.time_to_reach(0.95) is None
    assert Curve.from_dict(curve.to_dict()) == curve
    with pytest.raises(OptionError, match="no points"):
        Curve("empty").best()


def test_stopwatch_counts_only_while_running() -> None:
    watch = Stopwatch()
    watch.start()
    sum(i * i for i in range(200_000))
    watch.stop()
    counted = watch.cpu_s
    assert counted > 0 and watch.wall_s > 0
    sum(i * i for i in range(200_000))
    assert watch.cpu_s == counted


def test_train_with_curve_respects_the_budget_and_excludes_evaluation(event_digits, event_ann, tmp_path) -> None:
    _, onnx_model = event_ann
    snn = snnconvert.convert(onnx_model, accumulate_frames(event_digits["x_train"][:200]), timesteps=T,
                             encoding="frames")
    x, y = event_digits["x_train"][:320], event_digits["y_train"][:320]
    trainer = Trainer(snn, FinetuneConfig(timesteps=T, lr=1e-3, batch_size=32, epochs=3))
    trainer.fit_logit_scale(x, y)
    t0 = time.perf_counter()
    curve = train_with_curve(trainer, x, y, event_digits["x_test"], event_digits["y_test"], budget_s=1e9,
                             eval_every=4, max_epochs=2, name="bptt", offset_wall_s=2.0, log=False)
    total = time.perf_counter() - t0
    samples = [p.samples for p in curve.points]
    assert samples == [0, 128, 256, 320, 448, 576, 640]  # every 4 batches and at each epoch's end
    assert trainer.epoch == 2
    walls = [p.wall_s for p in curve.points]
    assert walls == sorted(walls) and walls[0] == 0.0 and walls[-1] < total  # evaluation not counted
    assert curve.time(curve.points[-1]) == pytest.approx(walls[-1] + 2.0)
    assert curve.points[-1].accuracy > 0.1
    # a budget stops training at the first evaluation past it
    short = Trainer(snn, FinetuneConfig(timesteps=T, batch_size=32))
    quick = train_with_curve(short, x, y, event_digits["x_test"][:50], event_digits["y_test"][:50],
                             budget_s=1e-6, clock="wall", eval_every=1, log=False)
    assert [p.samples for p in quick.points] == [0, 32]
    with pytest.raises(OptionError, match="unknown clock"):
        train_with_curve(short, x, y, x, y, budget_s=1.0, clock="gpu")  # type: ignore[arg-type]
    png = tmp_path / "curves.png"
    plots.accuracy_vs_time([curve, quick], png, target=0.5, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
