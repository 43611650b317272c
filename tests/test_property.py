"""Property: a random small CNN exported from torch either converts, with the SNN readout approaching
the ANN's as T grows, or is refused naming the offending node."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import snnconvert
from snnconvert.errors import UnsupportedModelError
from test_runtime_ops_util import ort_run, snn_run

EXAMPLES = 40


class Block(nn.Module):
    """conv -> act, optionally with a residual add or a concatenated 1x1 branch, then a pool."""

    def __init__(self, c_in: int, c_out: int, k: int, join: str, pool: str, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
        self.side = nn.Conv2d(c_in, c_out, 1) if join != "none" else None
        self.join, self.act = join, act
        self.pool = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2), "none": nn.Identity()}[pool]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.join == "add":
            y = y + self.side(x)
        y = self.act(y)
        if self.join == "concat":
            y = torch.cat([y, torch.relu(self.side(x))], dim=1)
        return self.pool(y)

    def channels_out(self, c_out: int) -> int:
        return 2 * c_out if self.join == "concat" else c_out


@st.composite
def networks(draw):
    size = draw(st.sampled_from([6, 8]))
    c = draw(st.integers(1, 3))
    blocks, hw = [], size
    for i in range(draw(st.integers(1, 2))):
        c_out = draw(st.integers(2, 4))
        pool = draw(st.sampled_from(["max", "avg", "none"])) if hw >= 4 else "none"
        bad = draw(st.integers(0, 9)) == 0
        act = nn.Sigmoid() if bad else nn.ReLU()
        block = Block(c, c_out, draw(st.sampled_from([1, 3])), draw(st.sampled_from(["none", "add", "concat"])),
                      pool, act)
        blocks.append(block)
        c = block.channels_out(c_out)
        hw = hw // 2 if pool != "none" else hw
    net = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(c * hw * hw, 4))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    for p in net.parameters():
        nn.init.normal_(p, std=0.4)
    return net.eval(), (1, blocks[0].conv.in_channels, size, size), seed


def export(net: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(shape), buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True, database=None)  # the same examples on every run: CI must not flake
@given(networks())
def test_random_cnn_converts_faithfully_or_is_refused_by_name(case):
    net, shape, seed = case
    model = export(net, shape)
    x = np.random.default_rng(seed).random((24, *shape[1:]), dtype=np.float32)
    sigmoids = [n.name for n in model.graph.node if n.op_type == "Sigmoid"]
    event("refused" if sigmoids else "converted")
    event("max-pool" if any(n.op_type == "MaxPool" for n in model.graph.node) else "no max-pool")
    if sigmoids:
        with pytest.raises(UnsupportedModelError) as err:
            snnconvert.convert(model, x)
        assert f"node '{sigmoids[0]}' (Sigmoid)" in str(err.value)
        return
    snn = snnconvert.convert(model, x, timesteps=256, norm="max", per_channel=True, v_init="half",
                              calibration="none")  # the rate limit of an uncalibrated IR is the ANN
    ann = ort_run(model, x)
    np.testing.assert_allclose(ort_run(snn, x), ann, rtol=1e-3, atol=1e-3)
    if np.std(ann) < 1e-6:
        return
    corr = {t: np.corrcoef(snn_run(snn, x, t).ravel(), ann.ravel())[0, 1] for t in (16, 256)}
    assert corr[256] >= 0.99, corr
    err = {t: np.abs(snn_run(snn, x, t) - ann).mean() for t in (16, 256)}
    assert err[256] <= err[16] + 1e-6, err
