"""Box conversions, IoU/GIoU, clipping and the box coder against float64 NumPy loops."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from focaljax.ops import (
    BoxCoder,
    box_area,
    clip_boxes,
    cxcywh_to_xyxy,
    elementwise_giou,
    elementwise_iou,
    pairwise_giou,
    pairwise_intersection,
    pairwise_iou,
    xyxy_to_cxcywh,
)
from tests.ops import reference

SETTINGS = settings(max_examples=25, deadline=None)


def numpy_pairwise(boxes1, boxes2, kind):
    out = np.zeros([len(boxes1), len(boxes2)])
    for i, a in enumerate(boxes1):
        for j, b in enumerate(boxes2):
            inter, union, hull = reference.overlap(a, b)
            iou = inter / union if union > 0 else 0.0
            if kind == "iou":
                out[i, j] = iou
            elif kind == "giou":
                out[i, j] = iou - ((hull - union) / hull if hull > 0 else 0.0)
            else:
                out[i, j] = inter
    return out


def random_boxes(rng, shape, *, low=0.0, high=100.0, min_size=0.5, max_size=40.0):
    xy = rng.uniform(low, high, size=(*shape, 2))
    wh = rng.uniform(min_size, max_size, size=(*shape, 2))
    return np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)


def box_arrays(num_boxes=12):
    """Hypothesis: `[num_boxes, 4]` xyxy boxes with integer corners in [0, 32], some empty or
    repeated. A fixed shape keeps jit from recompiling for every example."""
    corners = hnp.arrays(np.int32, (num_boxes, 4), elements=st.integers(0, 32))
    return corners.map(
        lambda c: np.concatenate(
            [np.minimum(c[:, :2], c[:, 2:]), np.maximum(c[:, :2], c[:, 2:])], axis=1
        ).astype(np.float32)
    )


def test_conversions_match_hand_computed_values_and_round_trip():
    xyxy = np.array([[0.0, 0.0, 10.0, 20.0], [5.0, 7.0, 6.0, 8.5]], np.float32)
    cxcywh = np.array([[5.0, 10.0, 10.0, 20.0], [5.5, 7.75, 1.0, 1.5]], np.float32)
    np.testing.assert_allclose(xyxy_to_cxcywh(xyxy), cxcywh)
    np.testing.assert_allclose(cxcywh_to_xyxy(cxcywh), xyxy)
    boxes = random_boxes(np.random.default_rng(0), (3, 5))
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, rtol=1e-6, atol=1e-5)


def test_box_area_is_width_times_height_and_zero_for_inverted_boxes():
    boxes = np.array([[0, 0, 3, 4], [2, 2, 2, 5], [5, 5, 4, 9], [1, 1, 0, 0]], np.float32)
    np.testing.assert_array_equal(box_area(boxes), [12.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("kind", ["iou", "giou", "intersection"])
def test_pairwise_overlaps_match_numpy_loops(kind):
    rng = np.random.default_rng(1)
    boxes1 = random_boxes(rng, (13,))
    boxes2 = np.concatenate([random_boxes(rng, (9,)), boxes1[:3], [[5, 5, 5, 5]]]).astype(
        np.float32
    )
    fn = {"iou": pairwise_iou, "giou": pairwise_giou, "intersection": pairwise_intersection}[kind]
    got = fn(boxes1, boxes2)
    assert got.shape == (13, 13)
    np.testing.assert_allclose(got, numpy_pairwise(boxes1, boxes2, kind), rtol=1e-5, atol=1e-6)


def test_pairwise_iou_hand_computed_cases():
    a = np.array([[0, 0, 2, 2]], np.float32)
    b = np.array(
        [[0, 0, 2, 2], [1, 0, 3, 2], [2, 2, 4, 4], [0, 0, 1, 1], [3, 3, 3, 3], [0, 0, 2, 1]],
        np.float32,
    )
    # Identical 1; half-shifted 2/6; touching corner 0; nested 1/4; empty box 0; half-height 1/2.
    np.testing.assert_allclose(pairwise_iou(a, b)[0], [1, 1 / 3, 0, 0.25, 0, 0.5], rtol=1e-6)
    # Disjoint unit boxes at distance 1 in a 3x3 hull: GIoU = 0 - (9 - 2) / 9.
    g = pairwise_giou([[0, 0, 1, 1]], [[2, 2, 3, 3]])
    np.testing.assert_allclose(g, [[-7 / 9]], rtol=1e-6)
    # Two empty boxes: union 0 and empty hull, both taken as 0.
    np.testing.assert_array_equal(pairwise_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]]), [[0.0]])
    np.testing.assert_array_equal(pairwise_giou([[1, 1, 1, 1]], [[1, 1, 1, 1]]), [[0.0]])


def test_pairwise_iou_batches_over_leading_axes_and_under_vmap():
    rng = np.random.default_rng(2)
    boxes1, boxes2 = random_boxes(rng, (3, 5)), random_boxes(rng, (3, 7))
    batched = pairwise_iou(boxes1, boxes2)
    vmapped = jax.jit(jax.vmap(pairwise_giou))(boxes1, boxes2)
    assert batched.shape == vmapped.shape == (3, 5, 7)
    for image in range(3):
        np.testing.assert_allclose(
            batched[image], numpy_pairwise(boxes1[image], boxes2[image], "iou"), atol=1e-6
        )
        np.testing.assert_allclose(
            vmapped[image], numpy_pairwise(boxes1[image], boxes2[image], "giou"), atol=1e-5
        )
    # One set of anchors against a batch of ground truth broadcasts.
    want = np.stack([numpy_pairwise(boxes1[i], boxes2[0], "iou") for i in range(3)])
    np.testing.assert_allclose(pairwise_iou(boxes1, boxes2[0]), want, atol=1e-6)


@jax.jit
def overlaps(boxes1, boxes2):
    return (
        pairwise_iou(boxes1, boxes2),
        pairwise_iou(boxes2, boxes1),
        pairwise_iou(boxes1, boxes1),
        pairwise_giou(boxes1, boxes2),
    )


@SETTINGS
@given(box_arrays(), box_arrays())
def test_iou_is_in_unit_interval_symmetric_and_one_on_the_diagonal(boxes1, boxes2):
    iou, iou_swapped, self_iou, giou = (np.asarray(x) for x in overlaps(boxes1, boxes2))
    assert np.all((iou >= 0) & (iou <= 1))
    np.testing.assert_array_equal(iou, iou_swapped.T)
    np.testing.assert_array_equal(np.diag(self_iou), (box_area(boxes1) > 0).astype(np.float32))
    assert np.all((giou >= -1) & (giou <= iou + 1e-6))
    np.testing.assert_allclose(iou, numpy_pairwise(boxes1, boxes2, "iou"), rtol=1e-6, atol=1e-7)


def test_elementwise_iou_and_giou_equal_the_pairwise_diagonal():
    rng = np.random.default_rng(3)
    boxes1, boxes2 = random_boxes(rng, (20,)), random_boxes(rng, (20,), low=10.0)
    np.testing.assert_allclose(
        elementwise_iou(boxes1, boxes2), np.diag(numpy_pairwise(boxes1, boxes2, "iou")), rtol=1e-5
    )
    np.testing.assert_allclose(
        elementwise_giou(boxes1, boxes2),
        np.diag(numpy_pairwise(boxes1, boxes2, "giou")),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match=r"boxes1 has shape \(3, 4\) and boxes2 \(2, 4\)"):
        elementwise_iou(np.zeros((3, 4)), np.zeros((2, 4)))


def test_clip_boxes_clips_x_to_width_and_y_to_height():
    boxes = np.array([[-5, -3, 50, 10], [10, 20, 30, 200], [-9, -9, -1, -1]], np.float32)
    want = np.array([[0, 0, 40, 10], [10, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(clip_boxes(boxes, (30, 40)), want)
    # Per-image sizes as a traced array under vmap.
    sizes = jnp.array([[30, 40], [15, 12]])
    clipped = jax.jit(jax.vmap(clip_boxes))(jnp.stack([boxes, boxes]), sizes)
    np.testing.assert_array_equal(clipped[0], want)
    np.testing.assert_array_equal(clipped[1], np.clip(boxes, 0, [12, 15, 12, 15]))
    with pytest.raises(ValueError, match=r"image_size is \(1, 2, 3\), expected \(height, width\)"):
        clip_boxes(boxes, (1, 2, 3))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_encode_matches_rcnn_formula(weights):
    rng = np.random.default_rng(4)
    boxes, anchors = random_boxes(rng, (30,)), random_boxes(rng, (30,))
    got = BoxCoder(weights=weights).encode(boxes, anchors)
    want = [
        reference.encode(b.astype(np.float64), a.astype(np.float64), weights)
        for b, a in zip(boxes, anchors, strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_box_coder_decode_clamps_log_scale_at_log_1000_over_16():
    anchor = np.array([[0.0, 0.0, 10.0, 20.0]], np.float32)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    # dw / ww = 100 would overflow exp; it is clamped to log(1000 / 16), so w = 10 * 62.5.
    decoded = coder.decode(np.array([[0.0, 0.0, 500.0, -500.0]], np.float32), anchor)
    want_w, want_h = 10 * 1000 / 16, 20 * math.exp(-100)
    np.testing.assert_allclose(
        decoded, [[5 - want_w / 2, 10 - want_h / 2, 5 + want_w / 2, 10 + want_h / 2]], rtol=1e-5
    )
    assert np.all(np.isfinite(coder.decode(np.full((1, 4), 1e30, np.float32), anchor)))


@functools.partial(jax.jit, static_argnums=0)
def round_trips(coder, boxes, deltas, anchors):
    """decode(encode(boxes)) for a batch of box sets (vmapped) and encode(decode(deltas))."""
    boxes_again = jax.vmap(lambda b: coder.decode(coder.encode(b, anchors), anchors))(boxes)
    return boxes_again, coder.encode(coder.decode(deltas, anchors), anchors)


@SETTINGS
@given(
    st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 0.5, 3.0, 1.5)]),
    st.integers(0, 2**32 - 1),
)
def test_box_coder_decode_inverts_encode(weights, seed):
    rng = np.random.default_rng(seed)
    # Ratios of sizes within the clamp, so decoding is exact.
    boxes = random_boxes(rng, (4, 8), min_size=2.0, max_size=60.0)
    anchors = random_boxes(rng, (8,), min_size=2.0, max_size=60.0)
    deltas = rng.normal(size=(8, 4)).astype(np.float32)
    boxes_again, deltas_again = round_trips(BoxCoder(weights=weights), boxes, deltas, anchors)
    np.testing.assert_allclose(boxes_again, boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(deltas_again, deltas, rtol=1e-4, atol=1e-4)


def test_bad_input_is_rejected_with_the_shape():
    with pytest.raises(ValueError, match=r"boxes has shape \(3, 5\), expected \(..., 4\)"):
        xyxy_to_cxcywh(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"boxes1 has shape \(4,\) and boxes2 \(2, 4\)"):
        pairwise_iou(np.zeros(4), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"weights is \(1.0, 1.0, 0.0, 1.0\), expected four"):
        BoxCoder(weights=(1.0, 1.0, 0.0, 1.0))
