"""`ohem_mask` with the RetinaNet paper's NMS (Table 1d) and SSD's 1:3 rule, against a plain NumPy
loop: a stable sort by loss, greedy NMS with float64 IoUs, then the selection rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax import losses

NUM_ANCHORS = 40
NUM_SAMPLES = 6


def _np_iou(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter = width * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_ohem(loss, *, num_samples, valid, positive, fraction=None, ratio=None, boxes=None,
                   threshold=None, topk=None):
    """The mask as the paper and SSD describe it, one anchor at a time."""
    order = sorted(range(len(loss)), key=lambda i: (-float(loss[i]), i))
    candidates = [i for i in order if valid[i]]
    if threshold is not None:
        kept = []
        for i in candidates[:topk]:
            if all(_np_iou(boxes[i], boxes[j]) <= threshold for j in kept):
                kept.append(i)
        candidates = kept
    positives = [i for i in candidates if positive[i]]
    negatives = [i for i in candidates if not positive[i]]
    if ratio is not None:
        chosen = positives[:num_samples]
        chosen += negatives[:min(num_samples - len(chosen), math.floor(ratio * len(chosen)))]
    elif fraction is not None:
        chosen = positives[:math.floor(num_samples * fraction)]
        chosen += negatives[:num_samples - len(chosen)]
    else:
        chosen = candidates[:num_samples]
    mask = np.zeros(len(loss), np.float32)
    mask[chosen] = 1
    return mask


def _images(seed):
    """A batch of images that covers the edge cases: ties, all invalid, no positive, more
    positives than `NUM_SAMPLES`, all losses equal. Boxes on an integer grid, so that many IoUs
    are exactly 0.5 or 0.7 and the `>` rule is exercised."""
    rng = np.random.default_rng(seed)
    shape = (6, NUM_ANCHORS)
    loss = rng.random(shape).astype(np.float32)
    loss[0] = rng.integers(0, 4, NUM_ANCHORS) / 4  # many ties
    loss[5] = 1.0  # all tied
    valid = rng.random(shape) < 0.85
    valid[1] = False
    # Image 2 has no positive, image 3 only positives (more than NUM_SAMPLES); the others few, so
    # that P is often below NUM_SAMPLES, and odd.
    positive = rng.random(shape) < np.array([0.1, 0.3, 0, 1, 0.1, 0.1])[:, None]
    corner = rng.integers(0, 8, (*shape, 2))
    size = rng.integers(1, 6, (*shape, 2))
    boxes = np.concatenate([corner, corner + size], -1).astype(np.float32)
    return loss, valid, positive, boxes


# (the reference's keywords, ohem_mask's): each rule, both thresholds, all candidates (with a
# positive rule: NMS over every valid anchor) and the top few; SSD's rule and a fractional ratio
# without NMS too. Few NMS cases, as each compiles for about a second.
CASES = {
    "top-nms0.5": ({"threshold": 0.5}, {"nms_iou_threshold": 0.5}),
    "ssd-nms0.7": ({"ratio": 3.0, "threshold": 0.7}, {"negative_ratio": 3.0,
                                                      "nms_iou_threshold": 0.7}),
    "fraction-nms0.5-top7": ({"fraction": 0.25, "threshold": 0.5, "topk": 7},
                             {"positive_fraction": 0.25, "nms_iou_threshold": 0.5,
                              "pre_nms_topk": 7}),
    "ssd": ({"ratio": 3.0}, {"negative_ratio": 3.0}),
    "ratio0.5": ({"ratio": 0.5}, {"negative_ratio": 0.5}),
}


@pytest.mark.parametrize(("reference_kwargs", "kwargs"), CASES.values(), ids=CASES.keys())
def test_vmapped_jitted_mask_equals_the_numpy_loop(reference_kwargs, kwargs):
    def one_image(loss, valid, positive, boxes):
        return losses.ohem_mask(
            loss, num_samples=NUM_SAMPLES, valid=valid, positive_mask=positive,
            boxes=boxes if "nms_iou_threshold" in kwargs else None, **kwargs,
        )

    masks = jax.jit(jax.vmap(one_image))
    for seed in range(3):
        loss, valid, positive, boxes = _images(seed)
        got = np.asarray(masks(loss, valid, positive, boxes))
        for image in range(len(loss)):
            want = reference_ohem(loss[image], num_samples=NUM_SAMPLES, valid=valid[image],
                                  positive=positive[image], boxes=boxes[image], **reference_kwargs)
            np.testing.assert_array_equal(got[image], want, err_msg=f"seed {seed}, image {image}")


def test_the_reference_images_reach_the_edge_cases():
    # Guards the test above against inputs that never exercise what it claims to.
    loss, valid, positive, boxes = _images(0)
    assert not valid[1].any() and not (valid[2] & positive[2]).any()
    assert (valid[3] & positive[3]).sum() > NUM_SAMPLES
    num_positives = (valid & positive).sum(axis=1)
    assert any(n % 2 and n < NUM_SAMPLES for n in num_positives)
    assert len(set(loss[0].tolist())) < NUM_ANCHORS // 2
    ious = {round(_np_iou(a, b), 9) for a in boxes[4] for b in boxes[4]}
    assert {0.5, 0.7} & ious
    # NMS drops something, and the survivors change the choice.
    plain = reference_ohem(loss[4], num_samples=NUM_SAMPLES, valid=valid[4], positive=positive[4])
    nms = reference_ohem(loss[4], num_samples=NUM_SAMPLES, valid=valid[4], positive=positive[4],
                         boxes=boxes[4], threshold=0.5)
    assert (plain != nms).any()


def test_nms_keeps_a_box_whose_iou_equals_the_threshold_and_drops_one_above_it():
    # IoU(0, 1) = 50 / 100 = 0.5 exactly; IoU(0, 2) = 60 / 100 = 0.6.
    boxes = jnp.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 6]], jnp.float32)
    loss = jnp.array([3.0, 2.0, 1.0])
    mask = losses.ohem_mask(loss, num_samples=3, boxes=boxes, nms_iou_threshold=0.5)
    np.testing.assert_array_equal(mask, [1, 1, 0])


def test_ssd_rule_keeps_every_positive_and_three_negatives_for_each():
    loss = jnp.arange(10.0, 0.0, -1.0)  # anchor 0 is the hardest
    positive = jnp.array([False] * 7 + [True] * 3)
    mask = losses.ohem_mask(loss, num_samples=8, positive_mask=positive, negative_ratio=3.0)
    # 3 positives, min(8 - 3, 9) = 5 negatives: the 5 hardest.
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0, 0, 1, 1, 1])
    none = losses.ohem_mask(loss, num_samples=8, positive_mask=jnp.zeros(10, bool),
                            negative_ratio=3.0)
    np.testing.assert_array_equal(none, np.zeros(10))


BOXES = np.zeros((5, 4), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"negative_ratio": 3.0, "positive_fraction": 0.25, "positive_mask": np.ones(5, bool)},
         r"negative_ratio and positive_fraction were both given, expected at most one"),
        ({"negative_ratio": 3.0}, r"negative_ratio needs positive_mask"),
        ({"negative_ratio": -1.0, "positive_mask": np.ones(5, bool)},
         r"negative_ratio must be >= 0, got -1.0"),
        ({"boxes": BOXES}, r"boxes was given without nms_iou_threshold, expected both"),
        ({"nms_iou_threshold": 0.5}, r"nms_iou_threshold was given without boxes, expected both"),
        ({"pre_nms_topk": 10}, r"pre_nms_topk was given without nms_iou_threshold"),
        ({"boxes": BOXES[:4], "nms_iou_threshold": 0.5},
         r"boxes has shape \(4, 4\), expected \[num_anchors, 4\] = \(5, 4\)"),
        ({"boxes": BOXES[:, :3], "nms_iou_threshold": 0.5},
         r"boxes has shape \(5, 3\), expected \[num_anchors, 4\]"),
        ({"boxes": BOXES, "nms_iou_threshold": 1.5},
         r"nms_iou_threshold must lie in \[0, 1\], got 1.5"),
        ({"boxes": BOXES, "nms_iou_threshold": 0.5, "pre_nms_topk": 0},
         r"pre_nms_topk must be a positive int or None \(all valid anchors\), got 0"),
        ({"boxes": BOXES, "nms_iou_threshold": 0.5, "pre_nms_topk": 2.5},
         r"pre_nms_topk must be a positive int or None .* got 2.5"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, dict) else None,
)
def test_bad_options_are_refused_with_one_line_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        losses.ohem_mask(jnp.ones(5), num_samples=2, **kwargs)
    assert "\n" not in str(error.value)
