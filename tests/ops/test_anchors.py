"""Pyramid anchors against a float64 NumPy loop written from the spec (level, y, x, anchor)."""

import math

import numpy as np
import pytest

from focaljax.ops import (
    DEFAULT_ASPECT_RATIOS,
    DEFAULT_SCALES,
    generate_anchors,
    level_sizes,
    num_anchors_per_level,
    num_anchors_per_location,
)


def numpy_anchors(image_size, min_level, max_level, sizes, scales, ratios):
    """Anchor (level, y, x, scale, ratio): centre ((x + 1/2) s, (y + 1/2) s), area (size k)^2 and
    height / width = r."""
    height, width = image_size
    anchors = []
    for level, size in zip(range(min_level, max_level + 1), sizes, strict=True):
        stride = 2**level
        for y in range(math.ceil(height / stride)):
            for x in range(math.ceil(width / stride)):
                cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
                for k in scales:
                    for r in ratios:
                        w = size * k / math.sqrt(r)
                        h = size * k * math.sqrt(r)
                        anchors.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(anchors)


def test_retinanet_defaults_match_the_paper():
    np.testing.assert_allclose(DEFAULT_SCALES, [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    assert DEFAULT_ASPECT_RATIOS == (0.5, 1.0, 2.0)
    assert num_anchors_per_location() == 9
    anchors = generate_anchors((64, 64))
    # P3..P7 of a 64x64 image: 8x8, 4x4, 2x2, 1x1, 1x1 cells with 9 anchors each.
    assert anchors.shape == ((64 + 16 + 4 + 1 + 1) * 9, 4) and anchors.dtype == np.float32
    # The first anchor: P3 cell (0, 0), scale 1, ratio 0.5: 32 * sqrt(2) wide, 32 / sqrt(2) high.
    w, h = 32 * math.sqrt(2), 32 / math.sqrt(2)
    np.testing.assert_allclose(anchors[0], [4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2], rtol=1e-6)
    # The largest anchor at P7: base 4 * 128 = 512, scale 2^(2/3), square.
    side = 512 * 2 ** (2 / 3)
    np.testing.assert_allclose(
        anchors[-2], [64 - side / 2, 64 - side / 2, 64 + side / 2, 64 + side / 2], rtol=1e-6
    )


@pytest.mark.parametrize("image_size", [(64, 96), (100, 75), (33, 17)])
def test_generate_anchors_matches_numpy_loop_in_level_y_x_anchor_order(image_size):
    got = generate_anchors(image_size)
    sizes = [4 * 2**level for level in range(3, 8)]
    want = numpy_anchors(image_size, 3, 7, sizes, DEFAULT_SCALES, DEFAULT_ASPECT_RATIOS)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    assert sum(num_anchors_per_level(image_size)) == len(got)


def test_level_sizes_round_up_like_stride_2_same_convolutions():
    assert level_sizes((100, 75), 3, 7) == [(13, 10), (7, 5), (4, 3), (2, 2), (1, 1)]
    assert level_sizes((640, 640)) == [(80, 80), (40, 40), (20, 20), (10, 10), (5, 5)]
    assert num_anchors_per_level((640, 640)) == (57600, 14400, 3600, 900, 225)


def test_rpn_configuration_has_one_anchor_size_per_level():
    kwargs = {"min_level": 2, "max_level": 6, "anchor_sizes": (32, 64, 128, 256, 512)}
    got = generate_anchors((64, 64), scales=(1.0,), **kwargs)
    want = numpy_anchors((64, 64), 2, 6, kwargs["anchor_sizes"], (1.0,), DEFAULT_ASPECT_RATIOS)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    per_level = num_anchors_per_level((64, 64), min_level=2, max_level=6, scales=(1.0,))
    assert per_level == (16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3, 2 * 2 * 3, 1 * 3)
    widths = got[:, 2] - got[:, 0]
    heights = got[:, 3] - got[:, 1]
    np.testing.assert_allclose(np.sqrt(widths * heights)[:3], 32, rtol=1e-5)
    np.testing.assert_allclose(heights[:3] / widths[:3], DEFAULT_ASPECT_RATIOS, rtol=1e-5)


def test_custom_scales_and_ratios():
    got = generate_anchors(
        (32, 32), min_level=4, max_level=5, scales=(1.0, 1.5), aspect_ratios=(1.0,)
    )
    want = numpy_anchors((32, 32), 4, 5, (64, 128), (1.0, 1.5), (1.0,))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"image_size is \(64,\), expected two positive ints"):
        generate_anchors((64,))
    with pytest.raises(ValueError, match=r"min_level=5 and max_level=3"):
        generate_anchors((64, 64), min_level=5, max_level=3)
    with pytest.raises(ValueError, match=r"anchor_sizes has 2 entries, expected one per level"):
        generate_anchors((64, 64), anchor_sizes=(32, 64))
    with pytest.raises(ValueError, match=r"aspect_ratios is \(\), expected a non-empty"):
        generate_anchors((64, 64), aspect_ratios=())
