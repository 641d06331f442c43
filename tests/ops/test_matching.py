"""IoU matching and target building against float64 NumPy loops written from the docstrings.

Random boxes have integer corners in [0, 32]: their IoUs are ratios of integers below 2**11, whose
float32 values compare (with each other and with thresholds like 0.4) exactly as the real numbers
do, so float32 results can be checked for equality against the float64 reference.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from focaljax.ops import BACKGROUND, FOREGROUND, IGNORED, BoxCoder, build_targets, match
from tests.ops import reference

SETTINGS = settings(max_examples=25, deadline=None)
NUM_ANCHORS, NUM_ROWS = 48, 6
THRESHOLDS = {"retinanet": (0.5, 0.4), "rpn": (0.7, 0.3)}


def numpy_iou(boxes1, boxes2):
    """`[M, A]` IoU and intersection of every pair."""
    pairs = [[reference.overlap(a, b) for b in boxes2] for a in boxes1]
    inter = np.array([[p[0] for p in row] for row in pairs]).reshape(len(boxes1), len(boxes2))
    union = np.array([[p[1] for p in row] for row in pairs]).reshape(inter.shape)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0), inter


def numpy_match(iou, valid, fg, bg, low_quality):
    num_boxes, num_anchors = iou.shape
    matched = np.full(num_anchors, -1)
    labels = np.full(num_anchors, BACKGROUND)
    for a in range(num_anchors):
        best, best_m = -1.0, -1
        for m in range(num_boxes):
            if valid[m] and iou[m, a] > best:  # strict: the lowest m wins ties
                best, best_m = iou[m, a], m
        if best_m >= 0:
            labels[a] = FOREGROUND if best >= fg else BACKGROUND if best < bg else IGNORED
            matched[a] = best_m
    if low_quality:
        best_of = {}  # anchor -> boxes it is a best anchor of
        for m in range(num_boxes):
            if valid[m] and iou[m].max() > 0:
                for a in np.flatnonzero(iou[m] == iou[m].max()):
                    best_of.setdefault(a, []).append(m)
        for a, boxes in best_of.items():
            labels[a] = FOREGROUND
            matched[a] = max(boxes, key=lambda m: (iou[m, a], -m))
    matched[labels != FOREGROUND] = -1
    return matched, labels


def numpy_build_targets(anchors, gt_boxes, gt_labels, gt_is_crowd, fg, bg, low_quality, weights):
    anchors, gt_boxes = np.asarray(anchors, np.float64), np.asarray(gt_boxes, np.float64)
    real = np.asarray(gt_labels) >= 0
    crowd = real & np.asarray(gt_is_crowd, bool)
    iou, inter = numpy_iou(gt_boxes, anchors)
    matched, labels = numpy_match(iou, real & ~crowd, fg, bg, low_quality)
    out = {
        "labels": np.full(len(anchors), -1),
        "cls_weights": np.ones(len(anchors)),
        "box_targets": np.zeros([len(anchors), 4]),
        "box_weights": np.zeros(len(anchors)),
        "matched_gt": np.full(len(anchors), -1),
    }
    for a, anchor in enumerate(anchors):
        area = (anchor[2] - anchor[0]) * (anchor[3] - anchor[1])
        if any(crowd[m] and inter[m, a] > bg * area for m in range(len(gt_boxes))):
            labels[a] = IGNORED
        if labels[a] == IGNORED:
            out["cls_weights"][a] = 0.0
        elif labels[a] == FOREGROUND:
            m = matched[a]
            out["labels"][a] = gt_labels[m]
            out["box_targets"][a] = reference.encode(gt_boxes[m], anchor, weights)
            out["box_weights"][a] = 1.0
            out["matched_gt"][a] = m
    return out


def integer_boxes(rng, num, *, min_size=1, max_size=20):
    x1, y1 = rng.integers(0, 32 - min_size, size=(2, num))
    w = rng.integers(min_size, max_size + 1, size=num)
    h = rng.integers(min_size, max_size + 1, size=num)
    return np.stack([x1, y1, np.minimum(x1 + w, 32), np.minimum(y1 + h, 32)], 1).astype(np.float32)


def random_image(seed, *, num_real, num_crowd=0):
    """Anchors and ground truth padded to NUM_ROWS rows, with duplicated boxes now and then."""
    rng = np.random.default_rng(seed)
    anchors = integer_boxes(rng, NUM_ANCHORS, min_size=2)
    boxes = integer_boxes(rng, NUM_ROWS)
    if num_real > 1 and rng.random() < 0.5:
        boxes[1] = boxes[0]
    if rng.random() < 0.5:
        boxes[0] = anchors[0]  # an exact anchor: IoU 1
    labels = rng.integers(0, 5, NUM_ROWS)
    labels[num_real:] = -1
    # Padding rows hold leftover boxes, not zeros, so a leak would show.
    crowd = np.zeros(NUM_ROWS, bool)
    crowd[num_real - num_crowd : num_real] = True
    crowd[num_real:] = rng.random(NUM_ROWS - num_real) < 0.5
    return anchors, boxes, labels.astype(np.int32), crowd


@functools.partial(jax.jit, static_argnames=("fg", "bg", "low_quality", "weights"))
def jit_build_targets(anchors, boxes, labels, crowd, *, fg, bg, low_quality, weights):
    return build_targets(
        anchors,
        boxes,
        labels,
        crowd,
        fg_iou_threshold=fg,
        bg_iou_threshold=bg,
        allow_low_quality_matches=low_quality,
        box_coder=BoxCoder(weights=weights),
    )


def assert_targets_equal(got, want):
    for key in ("labels", "matched_gt", "cls_weights", "box_weights"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_allclose(got["box_targets"], want["box_targets"], rtol=1e-4, atol=1e-5)


def test_match_assigns_foreground_ignore_band_and_background():
    # One box, anchors at IoU 0.6, 0.5, 0.45, 0.4, 0.39, 0 (RetinaNet bands 0.5 / 0.4).
    iou = np.array([[0.6, 0.5, 0.45, 0.4, 0.39, 0.0]], np.float32)
    matched, labels = match(iou, allow_low_quality_matches=False)
    np.testing.assert_array_equal(labels, [1, 1, -1, -1, 0, 0])
    np.testing.assert_array_equal(matched, [0, 0, -1, -1, -1, -1])
    # With low-quality matches a box whose best anchor is in the ignore band still gets it.
    iou = np.array([[0.45, 0.3, 0.0], [0.0, 0.2, 0.1]], np.float32)
    matched, labels = match(iou)
    np.testing.assert_array_equal(labels, [1, 1, 0])
    np.testing.assert_array_equal(matched, [0, 1, -1])
    _, labels = match(iou, allow_low_quality_matches=False)
    np.testing.assert_array_equal(labels, [-1, 0, 0])


def test_match_rpn_thresholds():
    iou = np.array([[0.75, 0.7, 0.5, 0.3, 0.29]], np.float32)
    matched, labels = match(
        iou, fg_iou_threshold=0.7, bg_iou_threshold=0.3, allow_low_quality_matches=False
    )
    np.testing.assert_array_equal(labels, [1, 1, -1, -1, 0])
    np.testing.assert_array_equal(matched, [0, 0, -1, -1, -1])


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    num_real=st.integers(0, NUM_ROWS),
    thresholds=st.sampled_from(sorted(THRESHOLDS)),
    low_quality=st.booleans(),
)
def test_match_equals_numpy_reference(seed, num_real, thresholds, low_quality):
    anchors, boxes, _, _ = random_image(seed, num_real=num_real)
    valid = np.arange(NUM_ROWS) < num_real
    iou, _ = numpy_iou(boxes, anchors)
    fg, bg = THRESHOLDS[thresholds]
    matched, labels = jax.jit(
        functools.partial(
            match, fg_iou_threshold=fg, bg_iou_threshold=bg, allow_low_quality_matches=low_quality
        )
    )(iou.astype(np.float32), valid=valid)
    want_matched, want_labels = numpy_match(iou, valid, fg, bg, low_quality)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(matched, want_matched)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), num_real=st.integers(1, NUM_ROWS))
def test_low_quality_matching_leaves_no_overlapping_box_unmatched(seed, num_real):
    anchors, boxes, _, _ = random_image(seed, num_real=num_real)
    valid = np.arange(NUM_ROWS) < num_real
    iou, _ = numpy_iou(boxes, anchors)
    matched, _ = match(iou.astype(np.float32), valid=valid)
    matched = np.asarray(matched)
    for m in np.flatnonzero(valid & (iou.max(axis=1) > 0)):
        if m in matched:
            continue
        # The documented exception: each best anchor of m went to a box for which it is also a
        # best anchor and that overlaps it at least as much (e.g. a duplicate of m).
        for a in np.flatnonzero(iou[m] == iou[m].max()):
            other = matched[a]
            assert other >= 0 and iou[other, a] == iou[other].max() >= iou[m, a], (m, a)
    # Distinct boxes each exactly on their own anchor are all matched.
    distinct = np.unique(anchors, axis=0)[:NUM_ROWS]
    matched, _ = match(numpy_iou(distinct, anchors)[0].astype(np.float32))
    assert set(np.asarray(matched).tolist()) >= set(range(len(distinct)))


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    num_real=st.integers(0, NUM_ROWS),
    num_crowd=st.integers(0, 2),
    thresholds=st.sampled_from(sorted(THRESHOLDS)),
    low_quality=st.booleans(),
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_build_targets_equals_numpy_reference(
    seed, num_real, num_crowd, thresholds, low_quality, weights
):
    anchors, boxes, labels, crowd = random_image(
        seed, num_real=num_real, num_crowd=min(num_crowd, num_real)
    )
    fg, bg = THRESHOLDS[thresholds]
    kwargs = {"fg": fg, "bg": bg, "low_quality": low_quality, "weights": weights}
    got = jit_build_targets(anchors, boxes, labels, crowd, **kwargs)
    assert_targets_equal(
        got, numpy_build_targets(anchors, boxes, labels, crowd, fg, bg, low_quality, weights)
    )
    # Padding rows never matter: other leftovers in them give the same targets.
    real = labels >= 0
    moved = np.where(real[:, None], boxes, anchors[-NUM_ROWS:])
    flipped = np.where(real, crowd, ~crowd)
    assert_targets_equal(
        jit_build_targets(anchors, moved, labels, flipped, **kwargs), jax.device_get(got)
    )
    usable = np.flatnonzero(real & ~crowd).tolist()
    assert set(np.asarray(got["matched_gt"]).tolist()) <= {-1, *usable}


def test_crowd_boxes_make_overlapping_anchors_ignored_not_negative():
    anchors = np.array(
        [[0, 0, 4, 4], [2, 2, 6, 6], [20, 20, 24, 24], [8, 8, 10, 10], [30, 30, 31, 31]],
        np.float32,
    )
    # A large crowd region covering the first two anchors and half of the fourth only partly.
    boxes = np.array([[0, 0, 9, 9], [20, 20, 24, 24], [0, 0, 0, 0]], np.float32)
    labels = np.array([3, 1, -1], np.int32)
    crowd = np.array([True, False, False])
    got = build_targets(anchors, boxes, labels, crowd)
    # Anchor 0, 1: inside the crowd box (IoU < 0.4 but fully covered) -> ignored.
    # Anchor 2: exact match with the real box -> class 1. Anchor 3: a quarter inside -> background.
    np.testing.assert_array_equal(got["labels"], [-1, -1, 1, -1, -1])
    np.testing.assert_array_equal(got["cls_weights"], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(got["box_weights"], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(got["matched_gt"], [-1, -1, 1, -1, -1])
    np.testing.assert_allclose(got["box_targets"], np.zeros((5, 4)), atol=1e-6)
    # Without the crowd flag, the big box is an object and its best anchor its low-quality match.
    got = build_targets(anchors, boxes, labels, np.zeros(3, bool))
    assert got["labels"][1] == 3 and got["cls_weights"][0] == 1


def test_image_without_boxes_is_all_background():
    anchors = integer_boxes(np.random.default_rng(0), 30, min_size=2)
    boxes = integer_boxes(np.random.default_rng(1), 4)  # leftovers in padding rows
    got = jax.jit(build_targets)(anchors, boxes, -np.ones(4, np.int32), np.array([1, 0, 1, 0]))
    np.testing.assert_array_equal(got["labels"], -1)
    np.testing.assert_array_equal(got["cls_weights"], 1)
    np.testing.assert_array_equal(got["box_weights"], 0)
    np.testing.assert_array_equal(got["matched_gt"], -1)
    np.testing.assert_array_equal(got["box_targets"], 0)
    empty = build_targets(anchors, np.zeros((0, 4)), np.zeros(0, np.int32), np.zeros(0, bool))
    np.testing.assert_array_equal(empty["labels"], -1)
    np.testing.assert_array_equal(empty["cls_weights"], 1)


def test_build_targets_under_vmap_equals_per_image_reference():
    images = [
        random_image(seed, num_real=seed % (NUM_ROWS + 1), num_crowd=seed % 2) for seed in range(5)
    ]
    anchors = images[0][0]
    boxes, labels, crowd = (np.stack([image[i] for image in images]) for i in (1, 2, 3))
    batched = jax.jit(jax.vmap(build_targets, in_axes=(None, 0, 0, 0)))(
        anchors, boxes, labels, crowd
    )
    assert batched["box_targets"].shape == (5, NUM_ANCHORS, 4)
    for i in range(5):
        want = numpy_build_targets(
            anchors, boxes[i], labels[i], crowd[i], 0.5, 0.4, True, (1.0, 1.0, 1.0, 1.0)
        )
        assert_targets_equal(jax.tree.map(lambda x, i=i: x[i], batched), want)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"bg_iou_threshold=0.6 and fg_iou_threshold=0.5"):
        match(np.zeros((2, 3)), bg_iou_threshold=0.6)
    with pytest.raises(ValueError, match=r"iou has shape \(3,\), expected \[M, A\]"):
        match(np.zeros(3))
    with pytest.raises(ValueError, match=r"gt_labels has shape \(2,\), expected \(3,\)"):
        build_targets(np.zeros((5, 4)), np.zeros((3, 4)), np.zeros(2, np.int32), np.zeros(3))
    with pytest.raises(ValueError, match=r"anchors has shape \(2, 5, 4\) and gt_boxes \(3, 4\)"):
        build_targets(jnp.zeros((2, 5, 4)), np.zeros((3, 4)), np.zeros(3), np.zeros(3))
