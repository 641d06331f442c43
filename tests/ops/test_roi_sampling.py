"""Fast R-CNN RoI sampling against float64 NumPy loops written from the docstring.

Boxes have integer corners in [0, 32] (padding and decoys lie outside it): their IoUs and
intersection-over-area ratios compare with the thresholds exactly in float32, as in
test_matching. The sampled rows name no candidate index, so a row is identified by its box.
"""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.ops import roi_sampling, sample_rois
from tests.ops import reference

NUM_PROPOSALS, NUM_GT = 40, 6
WEIGHTS = (10.0, 10.0, 5.0, 5.0)
FOREGROUND, BACKGROUND, NEITHER = 1, 0, -1


def numpy_candidates(proposals, valid, gt_boxes, gt_labels, gt_is_crowd, setting):
    """Candidate boxes and, per candidate, (kind, class id, matched gt row, box target)."""
    fg, bg = setting["fg_iou_threshold"], setting["bg_iou_threshold"]
    real = [m for m in range(len(gt_boxes)) if gt_labels[m] >= 0]
    usable = [m for m in real if not gt_is_crowd[m]]
    boxes = [np.asarray(p, np.float64) for p in proposals]
    is_valid = list(np.asarray(valid, bool))
    if setting["append_gt"]:
        boxes += [np.asarray(g, np.float64) for g in gt_boxes]
        is_valid += [m in usable for m in range(len(gt_boxes))]
    labelled = []
    for box, ok in zip(boxes, is_valid, strict=True):
        best, best_m = 0.0, -1
        for m in usable:
            overlap = reference.iou(gt_boxes[m], box)
            if overlap > best:  # strict: the lowest row wins ties
                best, best_m = overlap, m
        area = (box[2] - box[0]) * (box[3] - box[1])
        crowded = any(
            gt_is_crowd[m] and reference.overlap(gt_boxes[m], box)[0] > bg * area for m in real
        )
        if not ok or crowded:
            labelled.append((NEITHER, -1, -1, np.zeros(4)))
        elif best_m >= 0 and best >= fg:
            target = reference.encode(np.asarray(gt_boxes[best_m], np.float64), box, WEIGHTS)
            labelled.append((FOREGROUND, int(gt_labels[best_m]), best_m, np.array(target)))
        elif best < bg:
            labelled.append((BACKGROUND, -1, -1, np.zeros(4)))
        else:
            labelled.append((NEITHER, -1, -1, np.zeros(4)))
    return np.array(boxes).reshape(-1, 4), labelled


def assert_sample_matches_numpy(out, image, setting):
    """Counts, row order, padding rows and every sampled row's labels against the reference."""
    out = jax.device_get(out)
    boxes, labelled = numpy_candidates(*image, setting)
    num_samples, positive_fraction = setting["num_samples"], setting["positive_fraction"]
    kinds = np.array([kind for kind, *_ in labelled])
    num_fg = min(int(np.sum(kinds == FOREGROUND)), int(num_samples * positive_fraction))
    num_total = num_fg + min(int(np.sum(kinds == BACKGROUND)), num_samples - num_fg)
    row = np.arange(num_samples)
    np.testing.assert_array_equal(out["is_foreground"], row < num_fg)
    np.testing.assert_array_equal(out["valid"], row < num_total)
    padding = ~out["valid"]
    np.testing.assert_array_equal(out["boxes"][padding], 0)
    np.testing.assert_array_equal(out["labels"][padding], -1)
    np.testing.assert_array_equal(out["box_targets"][padding], 0)
    np.testing.assert_array_equal(out["matched_gt"][padding], -1)
    times_sampled = np.zeros(len(boxes), int)
    for r in range(num_total):
        same = np.flatnonzero((boxes == out["boxes"][r]).all(axis=1) & (kinds != NEITHER))
        assert same.size, f"row {r} holds {out['boxes'][r]}, which is no sampleable candidate"
        times_sampled[same[0]] += 1  # candidates with one box share their labels
        kind, label, matched, target = labelled[same[0]]
        assert kind == (FOREGROUND if r < num_fg else BACKGROUND), r
        assert out["labels"][r] == label and out["matched_gt"][r] == matched, r
        np.testing.assert_allclose(out["box_targets"][r], target, rtol=1e-4, atol=1e-4)
    for box in np.unique(boxes, axis=0):
        same = (boxes == box).all(axis=1)
        assert times_sampled[same].sum() <= np.sum(same & (kinds != NEITHER)), box


def integer_boxes(rng, num, *, min_size=2, max_size=16):
    x1, y1 = rng.integers(0, 32 - min_size, size=(2, num))
    w, h = rng.integers(min_size, max_size + 1, size=(2, num))
    return np.stack([x1, y1, np.minimum(x1 + w, 32), np.minimum(y1 + h, 32)], 1).astype(np.float32)


def random_image(seed, *, num_gt=4, num_crowd=1, num_valid=30, padding="zeros"):
    """Padded proposals, half of them jittered ground truth, and padded ground truth.

    Padding proposals are all zeros or distinct decoys outside the image; padding gt rows hold
    leftover boxes. Rows are shuffled, so padding is not only at the end.
    """
    rng = np.random.default_rng(seed)
    gt_boxes = integer_boxes(rng, NUM_GT, min_size=4)
    gt_labels = rng.integers(0, 5, NUM_GT).astype(np.int32)
    gt_labels[num_gt:] = -1
    crowd = np.zeros(NUM_GT, bool)
    crowd[num_gt - num_crowd : num_gt] = True
    crowd[num_gt:] = rng.random(NUM_GT - num_gt) < 0.5
    half = NUM_PROPOSALS // 2
    jittered = gt_boxes[rng.integers(0, NUM_GT, half)] + rng.integers(-2, 3, (half, 4))
    jittered = np.clip(jittered, 0, 32)
    jittered[:, 2:] = np.maximum(jittered[:, 2:], jittered[:, :2] + 1)
    proposals = np.concatenate([jittered, integer_boxes(rng, NUM_PROPOSALS - half)])
    valid = np.arange(NUM_PROPOSALS) < num_valid
    if padding == "zeros":
        proposals[~valid] = 0
    else:
        decoys = 40 + np.arange(NUM_PROPOSALS - num_valid, dtype=np.float32)[:, None]
        proposals[~valid] = decoys + np.array([0, 0, 4, 4], np.float32)
    order = rng.permutation(NUM_PROPOSALS)
    return proposals[order].astype(np.float32), valid[order], gt_boxes, gt_labels, crowd


def pad_image(proposals, gt_boxes, gt_labels, gt_is_crowd, *, proposal_valid=None):
    """A hand-made image padded to the shapes of `random_image`, so it reuses their compilation.

    Padding proposals are decoys outside the image; padding gt rows are crowd decoys there too.
    """
    proposals, gt_boxes = np.asarray(proposals, np.float32), np.asarray(gt_boxes, np.float32)
    num_proposals, num_gt = len(proposals), len(gt_boxes)
    valid = np.ones(num_proposals, bool) if proposal_valid is None else proposal_valid
    decoys = 50 + np.arange(NUM_PROPOSALS, dtype=np.float32)[:, None] + [0, 0, 3, 3]
    return (
        np.concatenate([proposals, decoys[num_proposals:]]).astype(np.float32),
        np.concatenate([valid, np.zeros(NUM_PROPOSALS - num_proposals, bool)]),
        np.concatenate([gt_boxes, decoys[: NUM_GT - num_gt]]).astype(np.float32),
        np.concatenate([gt_labels, np.full(NUM_GT - num_gt, -1)]).astype(np.int32),
        np.concatenate([gt_is_crowd, np.ones(NUM_GT - num_gt, bool)]),
    )


def rows_equal(boxes, box):
    return (np.asarray(boxes) == np.asarray(box, np.float32)).all(axis=-1)


DETECTRON2 = {
    "num_samples": 64,
    "positive_fraction": 0.25,
    "fg_iou_threshold": 0.5,
    "bg_iou_threshold": 0.5,
    "append_gt": True,
}
SETTINGS = {
    "detectron2": DETECTRON2,
    "quota_binds": DETECTRON2 | {"num_samples": 8},
    "ignore_band": DETECTRON2
    | {
        "num_samples": 16,
        "positive_fraction": 0.5,
        "fg_iou_threshold": 0.7,
        "bg_iou_threshold": 0.3,
    },
    "no_append_gt": DETECTRON2 | {"num_samples": 32, "positive_fraction": 1.0, "append_gt": False},
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("seed", range(4))
def test_sample_equals_numpy_reference(seed, setting):
    setting = SETTINGS[setting]
    image = random_image(
        seed, num_gt=seed % 5 + 1, num_crowd=seed % 2, num_valid=24 + seed, padding="decoys"
    )
    out = sample_rois(jax.random.key(seed), *image, **setting)
    assert out["boxes"].dtype == out["box_targets"].dtype == jnp.float32
    assert out["labels"].dtype == out["matched_gt"].dtype == jnp.int32
    assert out["boxes"].shape == (setting["num_samples"], 4)
    assert_sample_matches_numpy(out, image, setting)


def test_low_precision_boxes_give_float32_rois_and_targets():
    image = random_image(0, num_gt=3, num_crowd=1)
    proposals, valid, gt_boxes, gt_labels, crowd = image
    out = sample_rois(
        jax.random.key(0),
        proposals.astype(jnp.bfloat16),  # integer corners up to 32 are exact in bfloat16
        valid,
        gt_boxes.astype(jnp.bfloat16),
        gt_labels,
        crowd,
        **DETECTRON2,
    )
    assert out["boxes"].dtype == out["box_targets"].dtype == jnp.float32
    assert_sample_matches_numpy(out, image, DETECTRON2)


def test_positive_quota_caps_foreground_and_fewer_positives_leave_room_for_negatives():
    near = [[0, 0, 10, 10 - k % 2] for k in range(10)]  # IoU 1 or 0.9 with the gt box
    far = [[20, k, 30, k + 2] for k in range(10)]  # IoU 0
    image = pad_image(near + far, [[0, 0, 10, 10]], [2], [False])
    out = sample_rois(jax.random.key(0), *image, **SETTINGS["quota_binds"])
    # 11 foreground candidates (with the gt box), quota floor(8 * 0.25) = 2, six negatives.
    np.testing.assert_array_equal(out["labels"], [2, 2, -1, -1, -1, -1, -1, -1])
    assert out["valid"].all()
    # Only the gt box is foreground: it comes, and negatives take the other seven rows.
    valid = np.arange(20) >= 10
    image = pad_image(near + far, [[0, 0, 10, 10]], [2], [False], proposal_valid=valid)
    out = sample_rois(jax.random.key(0), *image, **SETTINGS["quota_binds"])
    np.testing.assert_array_equal(out["labels"], [2, -1, -1, -1, -1, -1, -1, -1])
    assert out["valid"].all()
    # num_samples * positive_fraction below 1 leaves no room for foreground at all.
    out = sample_rois(jax.random.key(0), *image, num_samples=3)
    assert not out["is_foreground"].any() and out["valid"].all()


def test_every_gt_box_is_sampled_as_foreground_with_zero_targets():
    gt_boxes = [[2, 2, 12, 12], [14, 3, 30, 9], [5, 20, 9, 30], [20, 20, 32, 32], [1, 1, 5, 5]]
    gt_labels, crowd = [4, 0, 1, 3, -1], [False, False, False, True, False]
    # Proposals away from every gt box, so only the appended gt boxes can be foreground.
    proposals = integer_boxes(np.random.default_rng(0), 30) + 34
    image = pad_image(proposals, gt_boxes, gt_labels, crowd)
    out = jax.device_get(sample_rois(jax.random.key(1), *image, **DETECTRON2))
    assert out["is_foreground"].sum() == 3 and out["valid"].sum() == 33
    for m in range(3):
        (rows,) = np.nonzero(rows_equal(out["boxes"], gt_boxes[m]))
        assert rows.size == 1 and out["is_foreground"][rows[0]], m
        assert out["labels"][rows[0]] == gt_labels[m] and out["matched_gt"][rows[0]] == m
        np.testing.assert_allclose(out["box_targets"][rows[0]], 0, atol=1e-6)
    # Neither the crowd box nor the padding row is a candidate.
    for m in (3, 4):
        assert not rows_equal(out["boxes"], gt_boxes[m]).any(), m
    # Without append_gt nothing overlaps an object: all samples are background proposals.
    out = sample_rois(jax.random.key(1), *image, **SETTINGS["no_append_gt"])
    assert not out["is_foreground"].any() and out["valid"].sum() == 30


@pytest.mark.parametrize("padding", ["zeros", "decoys"])
def test_padding_proposals_are_never_sampled_even_when_negatives_are_scarce(padding):
    image = random_image(3, num_gt=2, num_crowd=0, num_valid=5, padding=padding)
    proposals, valid, gt_boxes, gt_labels, crowd = image
    out = jax.device_get(sample_rois(jax.random.key(0), *image, **DETECTRON2))
    sampled = out["boxes"][out["valid"]]
    for box in proposals[~valid]:
        assert not rows_equal(sampled, box).any(), box
    # Exactly the 5 valid proposals and the 2 gt boxes: nothing is ignored when bg = fg.
    assert out["valid"].sum() == 7
    assert_sample_matches_numpy(out, image, DETECTRON2)
    # All proposals padding and no real gt: nothing at all to sample.
    no_labels = np.full(NUM_GT, -1, np.int32)
    out = sample_rois(
        jax.random.key(0), proposals, ~valid & valid, gt_boxes, no_labels, crowd, **DETECTRON2
    )
    assert not out["valid"].any()
    np.testing.assert_array_equal(out["boxes"], 0)


def test_padding_gt_rows_are_never_candidates_nor_matched():
    proposals = [[0, 0, 10, 10], [20, 20, 30, 30], [1, 1, 11, 11], [8, 24, 12, 28]]
    # Row 1, padding, lies on proposal 1 and would make it foreground with IoU 1; row 2, padding
    # flagged crowd, covers proposal 3 and would make it ignored.
    gt_boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [5, 22, 15, 30]]
    image = pad_image(proposals, gt_boxes, [1, -1, -1], [False, False, True])
    out = jax.device_get(sample_rois(jax.random.key(0), *image, **DETECTRON2))
    # Candidates: the four proposals and gt row 0; proposals 1 and 3 are background, once each.
    assert out["valid"].sum() == 5 and out["is_foreground"].sum() == 3
    assert set(out["matched_gt"].tolist()) == {-1, 0}
    for box in (gt_boxes[1], proposals[3]):
        (rows,) = np.nonzero(rows_equal(out["boxes"], box) & out["valid"])
        assert rows.size == 1 and out["labels"][rows[0]] == -1, box
    assert not rows_equal(out["boxes"], gt_boxes[2]).any()


def test_crowd_overlapping_proposals_are_never_sampled():
    gt_boxes, gt_labels, crowd = [[0, 0, 20, 20], [24, 24, 32, 32]], [0, 1], [True, False]
    inside = [[2, 2, 6, 6], [10, 0, 20, 8], [15, 15, 23, 19]]  # area 100%, 100%, 62.5% in crowd
    outside = [[16, 16, 24, 24], [22, 0, 30, 8], [24, 24, 32, 31]]  # 25%, 0%, 0% in crowd
    image = pad_image(inside + outside, gt_boxes, gt_labels, crowd)
    out = jax.device_get(sample_rois(jax.random.key(0), *image, **DETECTRON2))
    sampled = out["boxes"][out["valid"]]
    for box in [*inside, gt_boxes[0]]:
        assert not rows_equal(sampled, box).any(), box
    # gt 1 and the proposal on it are foreground, the other two outside proposals background.
    np.testing.assert_array_equal(out["labels"], [1, 1, -1, -1] + [-1] * 60)
    assert out["valid"].sum() == 4


def test_a_gt_box_without_a_good_proposal_gets_no_low_quality_match():
    # Best IoUs 0.4 and 0.6 with the first gt box, 0.45 with the second: only the 0.6 proposal is
    # foreground; the RPN's low-quality rule would also make the 0.45 one foreground.
    proposals = [[0, 0, 10, 4], [0, 0, 10, 6], [20, 20, 29, 25]]
    image = pad_image(proposals, [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [False, False])
    out = jax.device_get(sample_rois(jax.random.key(0), *image, **SETTINGS["no_append_gt"]))
    np.testing.assert_array_equal(out["labels"][:4], [1, -1, -1, -1])
    np.testing.assert_array_equal(out["boxes"][0], proposals[1])
    assert out["valid"].sum() == 3


def test_same_key_gives_the_same_sample_and_another_key_another():
    image = random_image(5, num_gt=3, num_crowd=0)
    setting = SETTINGS["quota_binds"]
    first = jax.device_get(sample_rois(jax.random.key(7), *image, **setting))
    again = jax.device_get(sample_rois(jax.random.key(7), *image, **setting))
    other = jax.device_get(sample_rois(jax.random.key(8), *image, **setting))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    # Both draw 2 of more foreground and 6 of more background candidates, in another order.
    assert first["is_foreground"].sum() == other["is_foreground"].sum() == 2
    assert first["valid"].sum() == other["valid"].sum() == 8
    assert not np.array_equal(first["boxes"], other["boxes"])


def test_image_without_gt_gives_only_background_samples():
    proposals, valid, gt_boxes, _, crowd = random_image(2, num_valid=20)
    for boxes, labels, is_crowd in [
        (gt_boxes, np.full(NUM_GT, -1, np.int32), crowd),  # leftovers in padding rows
        (np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, bool)),
    ]:
        out = sample_rois(
            jax.random.key(0), proposals, valid, boxes, labels, is_crowd, **DETECTRON2
        )
        assert out["valid"].sum() == 20 and not out["is_foreground"].any()
        np.testing.assert_array_equal(out["labels"], -1)
        np.testing.assert_array_equal(out["matched_gt"], -1)
        np.testing.assert_array_equal(out["box_targets"], 0)
        sampled = np.asarray(out["boxes"][:20])
        np.testing.assert_array_equal(
            np.unique(sampled, axis=0), np.unique(proposals[valid], axis=0)
        )


def test_jit_and_vmap_over_a_batch_equal_per_image_samples():
    images = [random_image(seed, num_gt=seed + 1, num_crowd=seed % 2) for seed in range(3)]
    batch = [np.stack(parts) for parts in zip(*images, strict=True)]
    keys = jax.random.split(jax.random.key(0), 3)
    sample = functools.partial(sample_rois, **DETECTRON2)
    batched = jax.device_get(jax.jit(jax.vmap(sample))(keys, *batch))
    assert batched["boxes"].shape == (3, 64, 4)
    for i, image in enumerate(images):
        single = jax.device_get(sample(keys[i], *image))
        for name in single:
            np.testing.assert_array_equal(batched[name][i], single[name], err_msg=name)
        assert_sample_matches_numpy(single, image, DETECTRON2)


def test_outputs_carry_no_gradient():
    proposals, valid, gt_boxes, gt_labels, crowd = random_image(1, num_crowd=0)

    def total(proposals, gt_boxes):
        out = sample_rois(
            jax.random.key(0), proposals, valid, gt_boxes, gt_labels, crowd, **DETECTRON2
        )
        return out["boxes"].sum() + out["box_targets"].sum()

    grads = jax.grad(total, argnums=(0, 1))(proposals, gt_boxes)
    for grad in grads:
        np.testing.assert_array_equal(grad, 0)


def test_selection_is_uniform_within_each_group():
    # Six foreground candidates (five proposals and the gt box), two drawn, and eighteen
    # background ones, six drawn: each candidate is sampled with probability 1/3.
    near = [[0, 0, 10, 10 - k] for k in range(1, 6)]  # IoU 0.9 to 0.5
    far = [[20 + k % 2 * 6, k, 26 + k % 2 * 6, k + 3] for k in range(18)]
    image = pad_image(near + far, [[0, 0, 10, 10]], [0], [False])
    candidates = np.array(near + far + [[0, 0, 10, 10]], np.float32)
    keys = jax.random.split(jax.random.key(0), 2000)
    draw = jax.vmap(lambda key: sample_rois(key, *image, **SETTINGS["quota_binds"])["boxes"])
    sampled = rows_equal(np.asarray(draw(keys))[:, :, None], candidates).any(axis=1)
    # The standard deviation of each frequency is sqrt(2 / 9 / 2000) < 0.011.
    np.testing.assert_allclose(sampled.mean(axis=0), 1 / 3, atol=0.045)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"proposals": np.zeros((2, 5, 4))}, r"proposals has shape \(2, 5, 4\), expected \[P, 4\]"),
        ({"proposal_valid": np.ones(4, bool)}, r"proposal_valid has shape \(4,\), expected \(5,\)"),
        ({"gt_boxes": np.zeros((3, 5))}, r"gt_boxes has shape \(3, 5\), expected \[M, 4\]"),
        ({"gt_labels": np.zeros(2, np.int32)}, r"gt_labels has shape \(2,\), expected \(3,\)"),
        ({"gt_labels": np.zeros(3)}, r"gt_labels has dtype float\d+, expected an integer"),
        ({"gt_is_crowd": np.zeros(4, bool)}, r"gt_is_crowd has shape \(4,\), expected \(3,\)"),
        ({"num_samples": 0}, r"num_samples is 0, expected a positive int"),
        ({"num_samples": 8.0}, r"num_samples is 8.0, expected a positive int"),
        ({"positive_fraction": 0.0}, r"positive_fraction is 0.0, expected a number in \(0, 1\]"),
        ({"positive_fraction": 1.5}, r"positive_fraction is 1.5, expected a number in \(0, 1\]"),
        ({"bg_iou_threshold": 0.6}, r"bg_iou_threshold=0.6 and fg_iou_threshold=0.5, expected"),
        ({"fg_iou_threshold": 1.2}, r"fg_iou_threshold=1.2, expected 0 <= bg_iou_threshold"),
    ],
)
def test_bad_input_is_rejected(change, message):
    kwargs = {
        "proposals": np.zeros((5, 4), np.float32),
        "proposal_valid": np.ones(5, bool),
        "gt_boxes": np.zeros((3, 4), np.float32),
        "gt_labels": np.zeros(3, np.int32),
        "gt_is_crowd": np.zeros(3, bool),
    } | change
    with pytest.raises(ValueError, match=message):
        sample_rois(jax.random.key(0), **kwargs)


def test_docstring_example_runs():
    results = doctest.testmod(roi_sampling, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0 and results.failed == 0
