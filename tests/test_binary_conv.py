"""The binary-spike conv kernel (runtime/binary_conv.py) against torch's conv2d."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from snnconvert.runtime import binary_conv
from snnconvert.runtime.binary_conv import BinaryConv

pytestmark = pytest.mark.skipif(not binary_conv.available(), reason="needs numba")

# F, H, W, C, O, kernel, strides, pads (top, left, bottom, right), dilations
SHAPES = [
    (2, 9, 7, 16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),      # ResNet stage 1
    (3, 9, 8, 16, 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),      # stride 2, odd input
    (2, 8, 8, 16, 32, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),      # 1x1 stride-2 shortcut
    (2, 6, 6, 64, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),      # 4 vectors a row
    (2, 7, 9, 5, 7, (3, 2), (1, 2), (0, 1, 2, 0), (2, 1)),        # C % 8, O % 16, asymmetric
    (2, 8, 6, 20, 33, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1)),      # sinabs-like, O = 2·16 + 1
    (3, 1, 1, 24, 10, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),      # a Gemm as a 1x1 conv
]


def reference(spikes, weight, amplitude, strides, pads, dilations) -> np.ndarray:
    """torch float64 conv2d of spikes · amplitude, channel-last."""
    x = torch.from_numpy(spikes.astype(np.float64) * amplitude).permute(0, 3, 1, 2)
    x = torch.nn.functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    y = torch.nn.functional.conv2d(x, torch.from_numpy(weight), stride=strides, dilation=dilations)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
@pytest.mark.parametrize("density", [0.0, 0.05, 1.0])
def test_matches_torch_float64_and_float32(shape, density):
    f, h, w, c, o, k, strides, pads, dilations = shape
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    weight = rng.standard_normal((o, c, *k))
    amplitude = rng.uniform(0.5, 2.0, c)
    spikes = (rng.random((f, h, w, c)) < density).astype(np.uint8)
    ref = reference(spikes, weight, amplitude, strides, pads, dilations)
    scale = max(1.0, np.abs(ref).max())
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        kernel = BinaryConv.build(weight, amplitude, strides, pads, dilations, (h, w), dtype)
        start = rng.standard_normal(ref.shape).astype(dtype)
        out = start.copy()
        kernel.accumulate(spikes, out)  # adds into out
        np.testing.assert_allclose(out - start, ref, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("compact", [False, True])
def test_every_table_layout_gives_the_same_sums(bits, compact):
    rng = np.random.default_rng(bits * 2 + compact)
    f, h, w, c, o = 2, 6, 7, 24, 40
    weight = rng.standard_normal((o, c, 3, 3))
    amplitude = rng.uniform(0.5, 2.0, c)
    spikes = (rng.random((f, h, w, c)) < 0.15).astype(np.uint8)
    kernel = BinaryConv.build(weight, amplitude, (2, 1), (1, 1, 0, 1), (1, 1), (h, w), np.float64,
                              bits=bits, compact=compact)
    out = np.zeros((f, *kernel.out_hw, o))
    kernel.accumulate(spikes, out)
    ref = reference(spikes, weight, amplitude, (2, 1), (1, 1, 0, 1), (1, 1))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    assert kernel.bits == bits


@pytest.mark.parametrize("o", [16, 32, 48, 64, 80, 7])
@pytest.mark.parametrize("compact", [False, True])
def test_wide_rows_sum_several_outputs_side_by_side(o, compact):
    """Rows of 19 outputs: blocks of 8 (or 4) neighbouring outputs and a tail, for 1-5 vectors."""
    rng = np.random.default_rng(o)
    f, h, w, c = 2, 3, 19, 16
    weight = rng.standard_normal((o, c, 3, 3))
    amplitude = rng.uniform(0.5, 2.0, c)
    spikes = (rng.random((f, h, w, c)) < 0.2).astype(np.uint8)
    ref = reference(spikes, weight, amplitude, (1, 1), (1, 1, 1, 1), (1, 1))
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        kernel = BinaryConv.build(weight, amplitude, (1, 1), (1, 1, 1, 1), (1, 1), (h, w), dtype,
                                  compact=compact)
        out = np.zeros(ref.shape, dtype)
        kernel.accumulate(spikes, out)
        np.testing.assert_allclose(out, ref, rtol=0, atol=tol * np.abs(ref).max())


def test_output_tile_padded_to_16_channels():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((20, 8, 3, 3))
    spikes = (rng.random((2, 5, 9, 8)) < 0.3).astype(np.uint8)
    ref = reference(spikes, weight, np.ones(8), (1, 1), (1, 1, 1, 1), (1, 1))
    for compact in (False, True):
        kernel = BinaryConv.build(weight, np.ones(8), (1, 1), (1, 1, 1, 1), (1, 1), (5, 9),
                                  np.float64, compact=compact)
        tile = np.zeros((2, 5, 9, 32))
        kernel.accumulate(spikes, tile)
        np.testing.assert_allclose(tile[..., :20], ref, atol=1e-12 * np.abs(ref).max())
        assert not tile[..., 20:].any()


def test_default_layout_keeps_the_table_small():
    small = BinaryConv.build(np.ones((16, 16, 3, 3)), np.ones(16), in_hw=(8, 8), pads=(1, 1, 1, 1))
    big = BinaryConv.build(np.ones((128, 128, 3, 3)), np.ones(128), in_hw=(4, 4), pads=(1, 1, 1, 1))
    assert small.bits == 8 and big.bits == 4
    assert big.table.nbytes <= binary_conv.TABLE_BUDGET


def test_numba_core_is_callable_from_compiled_code():
    import numba
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((16, 8, 3, 3))
    kernel = BinaryConv.build(weight, np.ones(8), (1, 1), (1, 1, 1, 1), (1, 1), (5, 5), np.float64)
    spikes = (rng.random((2, 5, 5, 8)) < 0.3).astype(np.uint8)

    @numba.njit
    def run(spikes, out, table, geom, packed, eq, et, offs, acc):
        binary_conv.binary_conv_frames(spikes, out, table, geom, packed, eq, et, offs, acc)

    out = np.zeros((2, 5, 5, 16))
    run(spikes, out, *kernel.kernel_args())
    np.testing.assert_allclose(out, reference(spikes, weight, np.ones(8), (1, 1), (1, 1, 1, 1), (1, 1)),
                               atol=1e-12 * 100)


def test_cost_helpers():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((32, 16, 3, 3))
    args = (np.ones(16), (1, 1), (1, 1, 1, 1), (1, 1), (6, 6), np.float32)
    compact = BinaryConv.build(weight, *args, compact=True)
    direct = BinaryConv.build(weight, *args, compact=False)
    zeros = np.zeros((3, 6, 6, 16), np.uint8)
    ones = np.ones((3, 6, 6, 16), np.uint8)
    # compact: 2 groups through each in-bounds tap of each output position, 2 vectors each
    in_bounds = sum(min(y + 1, 5) - max(y - 1, 0) + 1 for y in range(6)) ** 2
    assert compact.lookups(zeros) == 0
    assert compact.lookups(ones) == 3 * in_bounds * 2 * 2
    # direct: every tap's 2 groups, zero patterns and padding included
    assert direct.lookups(zeros) == direct.lookups(ones) == 3 * 36 * 9 * 2 * 2
    assert compact.time(ones, repeats=1) >= 0.0


def test_bad_arguments_are_refused_with_the_expected_shape():
    kernel = BinaryConv.build(np.ones((4, 3, 3, 3)), np.ones(3), in_hw=(5, 5))
    with pytest.raises(ValueError, match=r"spikes must be C-contiguous uint8 \[F, 5, 5, 3\]"):
        kernel.accumulate(np.zeros((1, 5, 5, 3), np.float32), np.zeros((1, 3, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"out must be C-contiguous float32 \[1, 3, 3, 4\]"):
        kernel.accumulate(np.zeros((1, 5, 5, 3), np.uint8), np.zeros((1, 3, 3, 4), np.float64))
    with pytest.raises(ValueError, match="has no output"):
        BinaryConv.build(np.ones((4, 3, 3, 3)), np.ones(3), in_hw=(2, 2))
