"""Greedy NMS against a plain float64 NumPy loop, for many thresholds, ties and tile sizes.

Boxes have integer corners in [0, 32], so their float32 IoUs order and compare with thresholds
(0.3, 0.5, 0.7 or any multiple of 1/1000) exactly as the real numbers do: the result must equal
the reference index for index, not just approximately.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from focaljax.ops import batched_non_max_suppression, non_max_suppression
from tests.ops import reference

SETTINGS = settings(max_examples=25, deadline=None)
NUM_BOXES = 96


def clustered_boxes(rng, num):
    """Heavily overlapping boxes: jittered copies of a few centres, with exact duplicates."""
    centres = rng.integers(4, 28, size=(rng.integers(1, 6), 2))
    pick = centres[rng.integers(0, len(centres), num)]
    half = rng.integers(1, 9, size=(num, 2))
    jitter = rng.integers(-2, 3, size=(num, 2))
    boxes = np.concatenate([pick + jitter - half, pick + jitter + half], axis=1)
    boxes = np.clip(boxes, 0, 32)
    duplicates = rng.random(num) < 0.2
    boxes[duplicates] = boxes[rng.integers(0, num, duplicates.sum())]
    return boxes.astype(np.float32)


def tied_scores(rng, num):
    """Scores from a handful of values (many ties), now and then -inf or NaN."""
    scores = rng.integers(0, 6, num).astype(np.float32) / 5
    special = rng.random(num)
    scores[special < 0.03] = -np.inf
    scores[(special >= 0.03) & (special < 0.05)] = np.nan
    return scores


thresholds = st.one_of(
    st.sampled_from([0.3, 0.5, 0.7]), st.integers(1, 999).map(lambda k: k / 1000)
)


@functools.partial(jax.jit, static_argnames=("max_output_size", "tile_size"))
def jit_nms(boxes, scores, valid, threshold, *, max_output_size, tile_size):
    return non_max_suppression(
        boxes,
        scores,
        iou_threshold=threshold,
        max_output_size=max_output_size,
        valid=valid,
        tile_size=tile_size,
    )


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    threshold=thresholds,
    max_output_size=st.sampled_from([5, 40, 2 * NUM_BOXES]),
    # Many tiles, or one tile holding every box (the tile shrinks to N).
    tile_size=st.sampled_from([8, 256]),
)
def test_nms_equals_greedy_reference(seed, threshold, max_output_size, tile_size):
    rng = np.random.default_rng(seed)
    boxes, scores = clustered_boxes(rng, NUM_BOXES), tied_scores(rng, NUM_BOXES)
    valid = rng.random(NUM_BOXES) < 0.9
    got = jit_nms(
        boxes,
        scores,
        valid,
        threshold,
        max_output_size=max_output_size,
        tile_size=tile_size,
    )
    assert got.dtype == jnp.int32 and got.shape == (max_output_size,)
    want = reference.nms(boxes, scores, threshold, max_output_size, valid=valid)
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), threshold=thresholds)
def test_nms_under_vmap_equals_reference_per_image(seed, threshold):
    rng = np.random.default_rng(seed)
    boxes = np.stack([clustered_boxes(rng, NUM_BOXES) for _ in range(3)])
    scores = np.stack([tied_scores(rng, NUM_BOXES) for _ in range(3)])
    # A different threshold per image, traced. The reference gets the exact decimal: an IoU of
    # exactly 7/10 is not above a threshold of 0.7, in float32 (both round to the same number) as
    # in the reals, but it is above float64(float32(0.7)).
    per_image = [threshold, 0.5, 0.3]
    got = jax.vmap(functools.partial(jit_nms, max_output_size=30, tile_size=16))(
        boxes, scores, np.ones((3, NUM_BOXES), bool), np.array(per_image, np.float32)
    )
    for i in range(3):
        want = reference.nms(boxes[i], scores[i], per_image[i], 30)
        np.testing.assert_array_equal(got[i], want, err_msg=f"image {i}")


def test_nms_hand_computed_example():
    boxes = np.array(
        [
            [0, 0, 10, 10],
            [1, 0, 11, 10],
            [5, 0, 15, 10],
            [20, 20, 30, 30],
            [0, 0, 10, 10],  # a duplicate of box 0
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.95, 0.8, 0.1, 0.95], np.float32)
    # Visiting order 1, 4 (tied with 1, higher index), 0, 2, 3. Box 1 overlaps 4 and 0 with IoU
    # 90 / 110 and box 2 with IoU 60 / 140 = 0.43; box 3 overlaps nothing.
    got = non_max_suppression(boxes, scores, iou_threshold=0.5, max_output_size=4)
    np.testing.assert_array_equal(got, [1, 2, 3, -1])
    got = non_max_suppression(boxes, scores, iou_threshold=0.4, max_output_size=4)
    np.testing.assert_array_equal(got, [1, 3, -1, -1])
    # Exactly at the threshold is kept: IoU of 0 and [0, 0, 10, 5] is 1/2.
    pair = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
    np.testing.assert_array_equal(
        non_max_suppression(pair, [1.0, 0.5], iou_threshold=0.5, max_output_size=2), [0, 1]
    )


def test_nms_with_nothing_to_keep():
    boxes = np.zeros((4, 4), np.float32)
    got = non_max_suppression(boxes, np.full(4, -np.inf), iou_threshold=0.5, max_output_size=3)
    np.testing.assert_array_equal(got, [-1, -1, -1])
    got = non_max_suppression(np.zeros((0, 4)), np.zeros(0), iou_threshold=0.5, max_output_size=2)
    np.testing.assert_array_equal(got, [-1, -1])


@functools.partial(jax.jit, static_argnames=("max_output_size", "tile_size"))
def jit_batched_nms(boxes, scores, classes, threshold, *, max_output_size, tile_size):
    return batched_non_max_suppression(
        boxes,
        scores,
        classes,
        iou_threshold=threshold,
        max_output_size=max_output_size,
        tile_size=tile_size,
    )


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    threshold=thresholds,
    max_output_size=st.sampled_from([10, NUM_BOXES]),
    tile_size=st.sampled_from([8, 256]),
)
def test_batched_nms_equals_per_class_greedy_reference(seed, threshold, max_output_size, tile_size):
    rng = np.random.default_rng(seed)
    boxes, scores = clustered_boxes(rng, NUM_BOXES), tied_scores(rng, NUM_BOXES)
    classes = rng.integers(0, 4, NUM_BOXES).astype(np.int32)
    got = jit_batched_nms(
        boxes, scores, classes, threshold, max_output_size=max_output_size, tile_size=tile_size
    )
    want = reference.nms(boxes, scores, threshold, max_output_size, classes=classes)
    np.testing.assert_array_equal(got, want)
    # The same as NMS per class, merged by score: the torchvision definition.
    merged = []
    for c in range(4):
        idx = np.flatnonzero(classes == c)
        kept = reference.nms(boxes[idx], scores[idx], threshold, len(idx))
        merged += idx[kept[kept >= 0]].tolist()
    merged.sort(key=lambda i: (-float(scores[i]), i))
    merged = (merged + [-1] * max_output_size)[:max_output_size]
    np.testing.assert_array_equal(got, merged)


def test_batched_nms_keeps_overlapping_boxes_of_different_classes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    got = batched_non_max_suppression(
        boxes, [0.9, 0.8, 0.7], [0, 1, 0], iou_threshold=0.5, max_output_size=3
    )
    np.testing.assert_array_equal(got, [0, 1, -1])


def test_nms_rejects_bad_input():
    with pytest.raises(ValueError, match=r"scores has shape \(3,\), expected \(2,\)"):
        non_max_suppression(np.zeros((2, 4)), np.zeros(3), iou_threshold=0.5, max_output_size=1)
    with pytest.raises(ValueError, match=r"iou_threshold is 1.5, expected a number in \[0, 1\]"):
        non_max_suppression(np.zeros((2, 4)), np.zeros(2), iou_threshold=1.5, max_output_size=1)
    with pytest.raises(ValueError, match=r"max_output_size is 0, expected a positive int"):
        non_max_suppression(np.zeros((2, 4)), np.zeros(2), iou_threshold=0.5, max_output_size=0)
    with pytest.raises(ValueError, match=r"classes has shape \(2,\) and dtype float32"):
        batched_non_max_suppression(
            np.zeros((2, 4)),
            np.zeros(2),
            np.zeros(2, np.float32),
            iou_threshold=0.5,
            max_output_size=1,
        )
