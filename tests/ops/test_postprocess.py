"""RetinaNet and Fast R-CNN inference against float64 NumPy transcriptions of the procedures."""

import doctest
import functools
import math

import jax
import numpy as np
import pytest

import focaljax.ops.postprocess
from focaljax.ops import (
    BoxCoder,
    fast_rcnn_postprocess,
    generate_anchors,
    num_anchors_per_level,
    retinanet_postprocess,
)
from tests.ops import reference

IMAGE_SIZE = (64, 96)
LEVELS = {"min_level": 3, "max_level": 5}
NUM_CLASSES = 3


def numpy_postprocess(
    logits,
    deltas,
    anchors,
    per_level,
    image_size,
    *,
    topk,
    score_threshold,
    nms_threshold,
    max_detections,
    weights=(1.0, 1.0, 1.0, 1.0),
):
    """Per level the `topk` best (anchor, class) pairs, those scoring above the threshold decoded
    and clipped, per-class greedy NMS over all levels, the `max_detections` best."""
    logits = np.asarray(logits, np.float64)
    num_classes = logits.shape[1]
    candidates = []  # (score, anchor, class), in level order
    start = 0
    for count in per_level:
        flat = logits[start : start + count].reshape(-1)
        for i in sorted(range(flat.size), key=lambda i: (-flat[i], i))[:topk]:
            score = 1 / (1 + math.exp(-flat[i]))
            if score > score_threshold:
                candidates.append((score, start + i // num_classes, i % num_classes))
        start += count
    height, width = image_size
    boxes = []
    for _, a, _ in candidates:
        x1, y1, x2, y2 = reference.decode(np.asarray(deltas[a], np.float64), anchors[a], weights)
        boxes.append(
            [
                min(max(x1, 0), width),
                min(max(y1, 0), height),
                min(max(x2, 0), width),
                min(max(y2, 0), height),
            ]
        )
    scores = [c[0] for c in candidates]
    classes = [c[2] for c in candidates]
    kept = reference.nms(
        np.reshape(boxes, (-1, 4)), scores, nms_threshold, max_detections, classes=classes
    )
    kept = kept[kept >= 0]
    out = {
        "boxes": np.zeros([max_detections, 4]),
        "scores": np.zeros(max_detections),
        "classes": np.full(max_detections, -1),
        "num_valid": len(kept),
    }
    for row, i in enumerate(kept):
        out["boxes"][row] = boxes[i]
        out["scores"][row] = scores[i]
        out["classes"][row] = classes[i]
    return out


def setup(seed, *, num_images=None):
    """Anchors of a small pyramid and random head outputs; a few anchors get confident logits."""
    rng = np.random.default_rng(seed)
    anchors = generate_anchors(IMAGE_SIZE, **LEVELS)
    per_level = num_anchors_per_level(IMAGE_SIZE, **LEVELS)
    shape = () if num_images is None else (num_images,)
    logits = rng.normal(-4.0, 1.5, size=(*shape, len(anchors), NUM_CLASSES))
    hot = rng.random(size=logits.shape) < 0.05
    logits = np.where(hot, rng.normal(1.0, 2.0, size=logits.shape), logits).astype(np.float32)
    deltas = rng.normal(0.0, 0.5, size=(*shape, len(anchors), 4)).astype(np.float32)
    return anchors, per_level, logits, deltas


def postprocess_fn(anchors, per_level, **kwargs):
    return functools.partial(
        retinanet_postprocess,
        anchors=anchors,
        anchors_per_level=per_level,
        image_size=IMAGE_SIZE,
        **kwargs,
    )


def assert_detections_equal(got, want):
    num_valid = int(got["num_valid"])
    assert num_valid == want["num_valid"]
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("topk", "score_threshold", "nms_threshold", "max_detections"),
    [(1000, 0.05, 0.5, 100), (20, 0.05, 0.5, 15), (50, 0.3, 0.3, 30), (5, 0.0, 0.7, 8)],
)
def test_postprocess_matches_numpy_reference(topk, score_threshold, nms_threshold, max_detections):
    anchors, per_level, logits, deltas = setup(0)
    kwargs = {
        "pre_nms_topk": topk,
        "score_threshold": score_threshold,
        "nms_iou_threshold": nms_threshold,
        "max_detections": max_detections,
    }
    got = jax.jit(postprocess_fn(anchors, per_level, **kwargs))(logits, deltas)
    assert got["boxes"].shape == (max_detections, 4)
    want = numpy_postprocess(
        logits,
        deltas,
        anchors,
        per_level,
        IMAGE_SIZE,
        topk=topk,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        max_detections=max_detections,
    )
    assert want["num_valid"] > 0
    assert_detections_equal(got, want)


def test_postprocess_output_is_sorted_clipped_and_padded():
    anchors, per_level, logits, deltas = setup(1)
    fn = postprocess_fn(anchors, per_level, pre_nms_topk=100, max_detections=400)
    got = jax.device_get(fn(logits, deltas))
    n = int(got["num_valid"])
    assert 0 < n <= 300  # at most 100 candidates from each of 3 levels
    assert np.all(np.diff(got["scores"][:n]) <= 0) and np.all(got["scores"][:n] > 0.05)
    assert np.all(got["boxes"][:n] >= 0)
    assert np.all(got["boxes"][:n, [0, 2]] <= IMAGE_SIZE[1])
    assert np.all(got["boxes"][:n, [1, 3]] <= IMAGE_SIZE[0])
    np.testing.assert_array_equal(got["classes"][n:], -1)
    np.testing.assert_array_equal(got["scores"][n:], 0)
    np.testing.assert_array_equal(got["boxes"][n:], 0)


def test_postprocess_under_vmap_and_jit_equals_reference_per_image():
    anchors, per_level, logits, deltas = setup(2, num_images=3)
    # One image with nothing above the threshold.
    logits[1] = -10.0
    weights = (10.0, 10.0, 5.0, 5.0)
    fn = postprocess_fn(
        anchors, per_level, pre_nms_topk=40, max_detections=25, box_coder=BoxCoder(weights=weights)
    )
    got = jax.jit(jax.vmap(fn))(logits, deltas)
    assert got["num_valid"].shape == (3,)
    for i in range(3):
        want = numpy_postprocess(
            logits[i],
            deltas[i],
            anchors,
            per_level,
            IMAGE_SIZE,
            topk=40,
            score_threshold=0.05,
            nms_threshold=0.5,
            max_detections=25,
            weights=weights,
        )
        assert_detections_equal(jax.tree.map(lambda x, i=i: x[i], got), want)
    assert int(got["num_valid"][1]) == 0


def test_postprocess_suppresses_within_a_class_only():
    anchors = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [40, 40, 50, 50]], np.float32)
    logits = np.full((3, 2), -10.0, np.float32)
    logits[0, 0], logits[1, 0], logits[1, 1], logits[2, 1] = 3.0, 2.0, 1.0, -1.0
    got = retinanet_postprocess(
        logits,
        np.zeros((3, 4), np.float32),
        anchors=anchors,
        anchors_per_level=(3,),
        image_size=(64, 64),
        max_detections=4,
    )
    # Anchor 1, class 0 overlaps anchor 0, class 0 (IoU 9/11) and is dropped; class 1 is kept.
    np.testing.assert_array_equal(got["classes"], [0, 1, 1, -1])
    np.testing.assert_allclose(
        got["scores"][:3], 1 / (1 + np.exp(-np.array([3.0, 1.0, -1.0]))), rtol=1e-6
    )
    np.testing.assert_allclose(got["boxes"][:3], anchors[[0, 1, 2]], atol=1e-5)
    assert int(got["num_valid"]) == 3


def test_postprocess_rejects_bad_input():
    anchors, per_level, logits, deltas = setup(3)
    fn = postprocess_fn(anchors, per_level)
    with pytest.raises(ValueError, match=r"box_deltas has shape \(10, 4\), expected"):
        fn(logits, deltas[:10])
    with pytest.raises(ValueError, match=r"cls_logits has shape .*, expected \[A, num_classes\]"):
        fn(logits[None], deltas)
    with pytest.raises(ValueError, match=r"anchors_per_level .* must be positive and sum to"):
        retinanet_postprocess(
            logits, deltas, anchors=anchors, anchors_per_level=(1, 2), image_size=IMAGE_SIZE
        )


FAST_RCNN_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
NUM_ROIS = 64


def numpy_fast_rcnn_postprocess(
    logits, deltas, rois, image_size, roi_valid, *, score_threshold, nms_threshold, max_detections
):
    """Softmax per RoI (background last); every (RoI, foreground class) pair scoring above the
    threshold, its class's box decoded from the RoI and clipped; RoIs that are masked or have a
    non-finite logit or box give none; per-class greedy NMS; the `max_detections` best."""
    logits = np.asarray(logits, np.float64)
    num_classes = logits.shape[1] - 1
    scores, boxes, classes = [], [], []
    for r in range(len(rois)):
        row_boxes = [
            reference.decode(np.asarray(deltas[r, c], np.float64), rois[r], FAST_RCNN_WEIGHTS)
            for c in range(num_classes)
        ]
        finite = np.isfinite(logits[r]).all() and np.isfinite(row_boxes).all()
        if not (roi_valid[r] and finite):
            continue
        exp = np.exp(logits[r] - logits[r].max())
        probabilities = exp / exp.sum()
        for c in range(num_classes):
            if probabilities[c] > score_threshold:
                scores.append(probabilities[c])
                boxes.append(reference.clip(row_boxes[c], image_size))
                classes.append(c)
    kept = reference.nms(
        np.reshape(boxes, (-1, 4)), scores, nms_threshold, max_detections, classes=classes
    )
    kept = kept[kept >= 0]
    out = {
        "boxes": np.zeros([max_detections, 4]),
        "scores": np.zeros(max_detections),
        "classes": np.full(max_detections, -1),
        "num_valid": len(kept),
    }
    for row, i in enumerate(kept):
        out["boxes"][row] = boxes[i]
        out["scores"][row] = scores[i]
        out["classes"][row] = classes[i]
    return out


def fast_rcnn_setup(seed, *, num_images=None):
    """RoIs in and around the image, box-head logits (some RoIs confident) and deltas, and a
    mask that drops about a fifth of the RoIs, which are given the most confident class 0."""
    rng = np.random.default_rng(seed)
    shape = () if num_images is None else (num_images,)
    centres = rng.uniform([-8, -8], [IMAGE_SIZE[1] + 8, IMAGE_SIZE[0] + 8], (*shape, NUM_ROIS, 2))
    sizes = rng.uniform(4, 40, (*shape, NUM_ROIS, 2))
    rois = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1).astype(np.float32)
    logits = rng.normal(0.0, 1.0, (*shape, NUM_ROIS, NUM_CLASSES + 1))
    logits[..., :NUM_CLASSES] += 3.0 * (rng.random((*shape, NUM_ROIS, NUM_CLASSES)) < 0.2)
    roi_valid = rng.random((*shape, NUM_ROIS)) > 0.2
    logits[..., 0] += np.where(roi_valid, 0.0, 8.0)
    deltas = rng.normal(0.0, 1.0, (*shape, NUM_ROIS, NUM_CLASSES, 4)).astype(np.float32)
    return logits.astype(np.float32), deltas, rois, roi_valid


@functools.partial(jax.jit, static_argnames="max_detections")
def jit_fast_rcnn(logits, deltas, rois, roi_valid, score_threshold, nms_threshold, max_detections):
    return fast_rcnn_postprocess(
        logits,
        deltas,
        rois,
        image_size=IMAGE_SIZE,
        roi_valid=roi_valid,
        score_threshold=score_threshold,
        nms_iou_threshold=nms_threshold,
        max_detections=max_detections,
    )


@pytest.mark.parametrize(
    ("score_threshold", "nms_threshold"), [(0.05, 0.5), (0.2, 0.3), (0.001, 0.7), (0.05, 1.0)]
)
def test_fast_rcnn_postprocess_matches_numpy_reference(score_threshold, nms_threshold):
    logits, deltas, rois, roi_valid = fast_rcnn_setup(10)
    got = jit_fast_rcnn(logits, deltas, rois, roi_valid, score_threshold, nms_threshold, 60)
    assert got["boxes"].shape == (60, 4) and got["classes"].dtype == np.int32
    want = numpy_fast_rcnn_postprocess(
        logits,
        deltas,
        rois,
        IMAGE_SIZE,
        roi_valid,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        max_detections=60,
    )
    assert want["num_valid"] > 10
    assert_detections_equal(got, want)


def test_fast_rcnn_postprocess_never_detects_from_invalid_or_background_rois():
    logits, deltas, rois, roi_valid = fast_rcnn_setup(11)
    everything = jit_fast_rcnn(logits, deltas, rois, np.ones(NUM_ROIS, bool), 0.05, 0.5, 60)
    masked = jax.device_get(jit_fast_rcnn(logits, deltas, rois, roi_valid, 0.05, 0.5, 60))
    # The masked RoIs are the most confident: unmasked, they would give the best detection.
    assert float(everything["scores"][0]) > 0.99
    assert masked["num_valid"] > 0 and masked["scores"][0] < 0.99
    nothing = jit_fast_rcnn(logits, deltas, rois, np.zeros(NUM_ROIS, bool), 0.05, 0.5, 60)
    background = logits.copy()
    background[:, -1] = 20.0
    background_only = jit_fast_rcnn(background, deltas, rois, roi_valid, 0.05, 0.5, 60)
    for got in (nothing, background_only):
        assert int(got["num_valid"]) == 0
        np.testing.assert_array_equal(got["classes"], -1)
        np.testing.assert_array_equal(got["scores"], 0)
        np.testing.assert_array_equal(got["boxes"], 0)


def test_fast_rcnn_postprocess_drops_rois_with_non_finite_outputs():
    logits, deltas, rois, roi_valid = fast_rcnn_setup(12)
    roi_valid[:2] = True
    # RoIs 0 and 1 are the most confident; one has a NaN logit, the other an infinite delta in
    # one class only, which drops all of its classes, as in detectron2.
    logits[:2, 0] = 20.0
    logits[0, -1] = np.nan
    deltas[1, 2, 0] = np.inf
    got = jit_fast_rcnn(logits, deltas, rois, roi_valid, 0.05, 0.5, 60)
    want = numpy_fast_rcnn_postprocess(
        logits,
        deltas,
        rois,
        IMAGE_SIZE,
        roi_valid,
        score_threshold=0.05,
        nms_threshold=0.5,
        max_detections=60,
    )
    assert_detections_equal(got, want)
    assert int(got["num_valid"]) > 0 and np.all(np.isfinite(got["boxes"]))
    assert float(got["scores"][0]) < 0.9999


def test_fast_rcnn_postprocess_under_vmap_and_jit_equals_reference_per_image():
    logits, deltas, rois, roi_valid = fast_rcnn_setup(13, num_images=2)
    batched = jax.vmap(jit_fast_rcnn, in_axes=(0, 0, 0, 0, None, None, None))
    got = jax.jit(batched, static_argnums=6)(logits, deltas, rois, roi_valid, 0.05, 0.5, 60)
    assert got["num_valid"].shape == (2,)
    for i in range(2):
        want = numpy_fast_rcnn_postprocess(
            logits[i],
            deltas[i],
            rois[i],
            IMAGE_SIZE,
            roi_valid[i],
            score_threshold=0.05,
            nms_threshold=0.5,
            max_detections=60,
        )
        assert_detections_equal(jax.tree.map(lambda x, i=i: x[i], got), want)


def test_fast_rcnn_postprocess_rejects_bad_input():
    logits, deltas, rois, roi_valid = fast_rcnn_setup(14)
    fn = functools.partial(fast_rcnn_postprocess, image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match=r"cls_logits has shape \(64, 1\), expected \[R, num_"):
        fn(logits[:, :1], deltas, rois)
    with pytest.raises(ValueError, match=r"cls_logits has shape \(2, 64, 4\), expected"):
        fn(np.stack([logits] * 2), deltas, rois)
    with pytest.raises(ValueError, match=r"box_deltas has shape \(64, 4\), expected \(64, 3, 4\)"):
        fn(logits, deltas[:, 0], rois)
    with pytest.raises(ValueError, match=r"rois has shape \(10, 4\), expected \(64, 4\)"):
        fn(logits, deltas, rois[:10])
    with pytest.raises(ValueError, match=r"roi_valid has shape \(64,\) and dtype float32, exp"):
        fn(logits, deltas, rois, roi_valid=roi_valid.astype(np.float32))
    with pytest.raises(ValueError, match=r"image_size is \(64,\), expected \(height, width\)"):
        fast_rcnn_postprocess(logits, deltas, rois, image_size=(64,))
    with pytest.raises(ValueError, match=r"max_detections is 0, expected a positive int"):
        fn(logits, deltas, rois, max_detections=0)


def test_fast_rcnn_postprocess_docstring_example_runs():
    result = doctest.testmod(focaljax.ops.postprocess)
    assert result.attempted > 0 and result.failed == 0
