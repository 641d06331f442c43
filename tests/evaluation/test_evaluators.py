"""Tests for focaljax.evaluation.evaluator and focaljax.evaluation.proposals: proposal recall
against hand-computed and independently computed numbers, and the COCO/VOC evaluators' wiring."""

import doctest
import math

import numpy as np
import pytest

from focaljax.evaluation import evaluator as evaluator_module
from focaljax.evaluation import proposals as proposals_module
from focaljax.evaluation.coco import STAT_NAMES, CocoEvaluator, detections_to_coco
from focaljax.evaluation.evaluator import (
    CocoDetectionEvaluator,
    Evaluator,
    VocDetectionEvaluator,
)
from focaljax.evaluation.proposals import ProposalRecallEvaluator

# COCO's IoU thresholds 0.50, 0.55, ..., 0.95.
IOU_THRESHOLDS = 0.5 + np.arange(10) / 20


def _ground_truth(boxes_per_image, categories=(1,)):
    """COCO ground truth; boxes_per_image[i] lists (category_id, [x1, y1, x2, y2], iscrowd) of
    image i + 1."""
    images, annotations = [], []
    for image_index, boxes in enumerate(boxes_per_image):
        images.append({"id": image_index + 1, "width": 640, "height": 480})
        for category_id, (x1, y1, x2, y2), iscrowd in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_index + 1,
                    "category_id": category_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": iscrowd,
                }
            )
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in categories],
    }


def _proposal_batch(image_ids, proposals_per_image, *, num_rows=None, valid=None):
    """Padded proposal predictions and the batch; proposals_per_image[b] is (boxes [P_b, 4] xyxy,
    scores [P_b]). Rows past P_b are filled with copies of the first box, so counting them
    would show."""
    num_rows = num_rows or max(len(scores) for _, scores in proposals_per_image)
    batch_size = len(image_ids)
    boxes = np.zeros((batch_size, num_rows, 4))
    scores = np.ones((batch_size, num_rows))
    counts = np.zeros(batch_size, np.int32)
    for b, (image_boxes, image_scores) in enumerate(proposals_per_image):
        n = len(image_scores)
        counts[b] = n
        if n:
            boxes[b] = np.asarray(image_boxes)[0]
            boxes[b, :n] = image_boxes
            scores[b, :n] = image_scores
    valid = np.ones(batch_size, bool) if valid is None else np.asarray(valid)
    predictions = {"proposals": boxes, "proposal_scores": scores, "num_proposals": counts}
    return predictions, {"image_id": np.asarray(image_ids, np.int32), "valid": valid}


def _iou(boxes, others):
    """IoU of xyxy boxes [N, 4] with [M, 4] -> [N, M]."""
    top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
    other_area = np.prod(others[:, 2:] - others[:, :2], axis=-1)
    return intersection / (area[:, None] + other_area[None, :] - intersection)


def _reference_average_recall(gt_per_image, proposals_per_image, k):
    """AR@k from scratch: at each IoU threshold, each image's top-k proposals in score order each
    claim the unclaimed ground-truth box they overlap most, if by at least the threshold; recall
    is the fraction of boxes claimed, averaged over the thresholds."""
    claimed = np.zeros(len(IOU_THRESHOLDS))
    total = 0
    for gt_boxes, (boxes, scores) in zip(gt_per_image, proposals_per_image, strict=True):
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        total += len(gt_boxes)
        if not len(gt_boxes) or not len(scores):
            continue
        top = np.asarray(boxes, np.float64)[np.argsort(-np.asarray(scores), kind="stable")[:k]]
        ious = _iou(top, gt_boxes)
        for t_index, threshold in enumerate(IOU_THRESHOLDS):
            free = np.ones(len(gt_boxes), bool)
            for row in ious:
                best = int(np.argmax(np.where(free, row, -1.0)))
                if free[best] and row[best] >= threshold:
                    free[best] = False
                    claimed[t_index] += 1
    return float(np.mean(claimed / total))


# ----------------------------------------------------------------------------------------------
# ProposalRecallEvaluator


def test_proposal_recall_matches_hand_computed_values_and_respects_the_top_k():
    # Image 1: box A = [0, 0, 100, 100]. Its proposals, by score: IoU 0.52 with A (a hit at the one
    # threshold 0.50 only), then IoU 0.97 (a hit at all ten), then a far-away box.
    # Image 2: boxes B = [200, 200, 300, 300] and C = [0, 0, 100, 100]. By score: IoU 0.77 with B
    # (a hit at the six thresholds 0.50 ... 0.75), then exactly C, then a far-away box.
    # Top 1: A at 1 threshold, B at 6, C at none -> AR = (1 + 6) / (3 * 10) = 7/30.
    # Top 2: A at 10 (the 0.97 one; at 0.50 the 0.52 one got there first), B at 6, C at 10
    # -> AR = (10 + 6 + 10) / 30 = 13/15. Top 3 adds nothing.
    gt = _ground_truth(
        [
            [(1, [0, 0, 100, 100], 0)],
            [(1, [200, 200, 300, 300], 0), (1, [0, 0, 100, 100], 0)],
        ]
    )
    far = [500, 400, 520, 420]
    proposals = [
        ([[0, 0, 52, 100], [0, 0, 97, 100], far], [0.9, 0.8, 0.7]),
        ([[200, 200, 277, 300], [0, 0, 100, 100], far], [0.95, 0.5, 0.4]),
    ]
    evaluator = ProposalRecallEvaluator(gt, max_dets=(1, 2, 3))
    evaluator.add(*_proposal_batch([1, 2], proposals))
    metrics = evaluator.evaluate()
    assert set(metrics) == {"AR@1", "AR@2", "AR@3"}
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["AR@1"] == pytest.approx(7 / 30, abs=1e-12)
    assert metrics["AR@2"] == pytest.approx(13 / 15, abs=1e-12)
    assert metrics["AR@3"] == pytest.approx(13 / 15, abs=1e-12)
    gt_boxes = [[[0, 0, 100, 100]], [[200, 200, 300, 300], [0, 0, 100, 100]]]
    for k, expected in ((1, 7 / 30), (2, 13 / 15), (3, 13 / 15)):
        assert _reference_average_recall(gt_boxes, proposals, k) == pytest.approx(expected)


def test_default_max_dets_count_a_proposal_ranked_past_100_only_from_ar300():
    # 150 far-away proposals outscore the one exact proposal of the only box.
    gt = _ground_truth([[(1, [10, 10, 60, 60], 0)]])
    boxes = [[500, 400, 520, 420]] * 150 + [[10, 10, 60, 60]]
    scores = np.linspace(1.0, 0.5, 151)
    evaluator = ProposalRecallEvaluator(gt)
    evaluator.add(*_proposal_batch([1], [(boxes, scores)]))
    assert evaluator.evaluate() == {"AR@100": 0.0, "AR@300": 1.0, "AR@1000": 1.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proposal_recall_matches_an_independent_computation_on_random_boxes(seed):
    rng = np.random.default_rng(seed)
    gt_boxes, proposals = [], []
    for _ in range(3):
        corners = rng.uniform(0, 150, (int(rng.integers(1, 5)), 2))
        image_gt = np.concatenate([corners, corners + rng.uniform(20, 80, corners.shape)], axis=1)
        # Jittered copies of the boxes (IoUs spread over the thresholds) and random boxes.
        jittered = np.repeat(image_gt, 3, axis=0) + rng.normal(0, 6, (3 * len(image_gt), 4))
        jittered[:, 2:] = np.maximum(jittered[:, 2:], jittered[:, :2] + 1)
        corners = rng.uniform(0, 200, (5, 2))
        random = np.concatenate([corners, corners + rng.uniform(10, 60, corners.shape)], axis=1)
        image_proposals = np.concatenate([jittered, random])
        gt_boxes.append(image_gt)
        proposals.append((image_proposals, rng.uniform(0, 1, len(image_proposals))))
    gt = _ground_truth([[(1, box.tolist(), 0) for box in image_gt] for image_gt in gt_boxes])
    evaluator = ProposalRecallEvaluator(gt, max_dets=(2, 5, 30))
    evaluator.add(*_proposal_batch([1, 2, 3], proposals, num_rows=24))
    metrics = evaluator.evaluate()
    for k in (2, 5, 30):
        expected = _reference_average_recall(gt_boxes, proposals, k)
        assert metrics[f"AR@{k}"] == pytest.approx(expected, abs=1e-12), k
    assert 0 < metrics["AR@2"] < metrics["AR@30"] < 1


def test_proposal_recall_counts_boxes_of_every_category():
    gt = _ground_truth(
        [[(1, [0, 0, 50, 50], 0), (2, [100, 100, 150, 150], 0)], [(3, [20, 20, 90, 90], 0)]],
        categories=(1, 2, 3),
    )
    proposals = [
        ([[0, 0, 50, 50], [100, 100, 150, 150]], [0.9, 0.8]),
        ([[20, 20, 90, 90]], [0.9]),
    ]
    evaluator = ProposalRecallEvaluator(gt, max_dets=(1, 2, 10))
    evaluator.add(*_proposal_batch([1, 2], proposals))
    # Top 1 finds two of the three boxes; with categories counted it would find one at most.
    assert evaluator.evaluate() == pytest.approx({"AR@1": 2 / 3, "AR@2": 1.0, "AR@10": 1.0})


def test_missed_crowd_boxes_do_not_lower_proposal_recall():
    boxes = [[(1, [0, 0, 50, 50], 0), (1, [200, 200, 400, 400], 1)]]
    proposals = [([[0, 0, 50, 50]], [0.9])]
    crowd = ProposalRecallEvaluator(_ground_truth(boxes), max_dets=(1, 2, 3))
    crowd.add(*_proposal_batch([1], proposals))
    assert crowd.evaluate()["AR@3"] == pytest.approx(1.0)
    # Without the crowd flag the second box is a miss.
    not_crowd = ProposalRecallEvaluator(
        _ground_truth([[(1, [0, 0, 50, 50], 0), (1, [200, 200, 400, 400], 0)]]), max_dets=(1, 2, 3)
    )
    not_crowd.add(*_proposal_batch([1], proposals))
    assert not_crowd.evaluate()["AR@3"] == pytest.approx(0.5)


def test_padding_examples_and_proposals_past_num_proposals_are_not_counted():
    gt = _ground_truth([[(1, [0, 0, 50, 50], 0)], [(1, [10, 10, 90, 90], 0)]])
    # Image 1's exact proposal is row 1 with num_proposals 1; image 2's comes in a padding example.
    predictions, batch = _proposal_batch(
        [1, 2, -1], [([[300, 300, 310, 310]], [0.9]), ([], []), ([[10, 10, 90, 90]], [0.9])],
        num_rows=2,
        valid=[True, True, False],
    )
    predictions["proposals"][0, 1] = [0, 0, 50, 50]
    batch["image_id"][2] = 2
    evaluator = ProposalRecallEvaluator(gt)
    evaluator.add(predictions, batch)
    assert evaluator.evaluate() == {"AR@100": 0.0, "AR@300": 0.0, "AR@1000": 0.0}


@pytest.mark.parametrize("crowd", [False, True])
def test_proposal_recall_is_nan_without_countable_ground_truth(crowd):
    boxes = [[(1, [0, 0, 50, 50], 1)]] if crowd else [[]]
    evaluator = ProposalRecallEvaluator(_ground_truth(boxes))
    evaluator.add(*_proposal_batch([1], [([[0, 0, 50, 50]], [0.9])]))
    metrics = evaluator.evaluate()
    assert set(metrics) == {"AR@100", "AR@300", "AR@1000"}
    assert all(math.isnan(value) for value in metrics.values())


def test_proposal_keys_are_configurable():
    gt = _ground_truth([[(1, [0, 0, 50, 50], 0)]])
    evaluator = ProposalRecallEvaluator(
        gt, boxes_key="rois", scores_key="roi_scores", count_key="num_rois"
    )
    predictions, batch = _proposal_batch([1], [([[0, 0, 50, 50]], [0.9])])
    predictions = {
        "rois": predictions["proposals"],
        "roi_scores": predictions["proposal_scores"],
        "num_rois": predictions["num_proposals"],
    }
    evaluator.add(predictions, batch)
    assert evaluator.evaluate()["AR@100"] == pytest.approx(1.0)


@pytest.mark.parametrize("max_dets", [(100, 300), (300, 100, 1000), (0, 10, 100), (1, 1, 2)])
def test_bad_max_dets_are_rejected(max_dets):
    with pytest.raises(ValueError, match="max_dets"):
        ProposalRecallEvaluator(_ground_truth([[]]), max_dets=max_dets)


def test_proposals_of_unknown_images_and_missing_keys_are_rejected():
    evaluator = ProposalRecallEvaluator(_ground_truth([[(1, [0, 0, 50, 50], 0)]]))
    predictions, batch = _proposal_batch([5], [([[0, 0, 50, 50]], [0.9])])
    with pytest.raises(ValueError, match=r"image_ids \[5\]"):
        evaluator.add(predictions, batch)
    del predictions["num_proposals"]
    with pytest.raises(ValueError, match="num_proposals"):
        evaluator.add(predictions, {"image_id": np.array([1]), "valid": np.array([True])})


# ----------------------------------------------------------------------------------------------
# CocoDetectionEvaluator and VocDetectionEvaluator


def _detection_batch(image_ids, boxes, scores, classes, num_valid, valid):
    predictions = {
        "boxes": np.asarray(boxes, np.float64),
        "scores": np.asarray(scores, np.float64),
        "classes": np.asarray(classes, np.int32),
        "num_valid": np.asarray(num_valid, np.int32),
    }
    batch = {"image_id": np.asarray(image_ids, np.int32), "valid": np.asarray(valid, bool)}
    return predictions, batch


def test_coco_detection_evaluator_equals_coco_evaluator_on_the_real_examples():
    rng = np.random.default_rng(0)
    category_ids = [3, 7]
    gt = _ground_truth(
        [
            [(3, [10, 10, 60, 60], 0), (7, [100, 100, 200, 180], 0)],
            [(7, [20, 30, 120, 90], 0)],
            [(3, [300, 200, 340, 260], 0)],
        ],
        categories=category_ids,
    )
    gt_xyxy = np.array([[10, 10, 60, 60], [100, 100, 200, 180], [20, 30, 120, 90], [0, 0, 40, 60]])
    boxes = gt_xyxy[None] + rng.normal(0, 5, (3, 4, 4))
    scores = rng.uniform(0, 1, (3, 4))
    classes = rng.integers(0, 2, (3, 4))
    # The third example pads the batch: it repeats image 2 with detections that would count.
    predictions, batch = _detection_batch(
        [1, 2, 2], boxes, scores, classes, [4, 3, 4], [True, True, False]
    )
    evaluator = CocoDetectionEvaluator(gt, category_ids=category_ids)
    evaluator.add(predictions, batch)
    metrics = evaluator.evaluate()

    direct = CocoEvaluator(gt)
    direct.add(detections_to_coco([1, 2], boxes[:2], scores[:2], classes[:2], [4, 3], category_ids))
    expected = direct.evaluate()
    per_category = {f"AP/class{c}" for c in category_ids}
    assert set(metrics) == set(STAT_NAMES) | per_category
    for name in STAT_NAMES:
        assert metrics[name] == pytest.approx(expected[name], nan_ok=True), name
    assert 0 < metrics["AP"] < 1
    # Each category's AP is the AP of an evaluation of that category alone.
    results = detections_to_coco([1, 2], boxes[:2], scores[:2], classes[:2], [4, 3], category_ids)
    for category_id in category_ids:
        alone = CocoEvaluator({**gt, "categories": [{"id": category_id, "name": "x"}],
                               "annotations": [a for a in gt["annotations"]
                                               if a["category_id"] == category_id]})
        alone.add([r for r in results if r["category_id"] == category_id])
        expected_ap = alone.evaluate()["AP"]
        assert metrics[f"AP/class{category_id}"] == pytest.approx(expected_ap), category_id
    assert len({metrics[name] for name in per_category}) == 2  # Not one number twice.


@pytest.mark.parametrize("min_score", [0.3, 0.6])
def test_coco_detection_evaluator_at_a_min_score_equals_evaluating_only_those_detections(min_score):
    rng = np.random.default_rng(1)
    category_ids = [3, 7]
    gt = _ground_truth(
        [[(3, [10, 10, 60, 60], 0), (7, [100, 100, 200, 180], 0)], [(7, [20, 30, 120, 90], 0)]],
        categories=category_ids,
    )
    gt_xyxy = np.array([[10, 10, 60, 60], [100, 100, 200, 180], [20, 30, 120, 90], [0, 0, 40, 60]])
    boxes = gt_xyxy[None] + rng.normal(0, 5, (2, 4, 4))
    scores = rng.uniform(0, 1, (2, 4))
    classes = rng.integers(0, 2, (2, 4))
    num_valid = [4, 3]
    predictions, batch = _detection_batch([1, 2], boxes, scores, classes, num_valid, [True, True])
    evaluator = CocoDetectionEvaluator(gt, category_ids=category_ids, min_score=min_score,
                                       suffix="@x")
    evaluator.add(predictions, batch)
    metrics = evaluator.evaluate()

    # The kept detections, picked one by one.
    direct = CocoEvaluator(gt)
    for b, image_id in enumerate([1, 2]):
        rows = [k for k in range(num_valid[b]) if scores[b, k] >= min_score]
        direct.add(detections_to_coco([image_id], boxes[b, rows][None], scores[b, rows][None],
                                      classes[b, rows][None], [len(rows)], category_ids))
    expected = direct.evaluate()
    assert set(metrics) == ({f"{name}@x" for name in STAT_NAMES}
                            | {f"AP@x/class{c}" for c in category_ids})
    assert metrics["AP@x/class3"] == pytest.approx(direct.per_category_ap()[3])
    for name in STAT_NAMES:
        assert metrics[f"{name}@x"] == pytest.approx(expected[name], nan_ok=True), name
    valid_scores = np.concatenate([scores[b, :n] for b, n in enumerate(num_valid)])
    assert 0 < np.sum(valid_scores < min_score) < len(valid_scores)  # Some kept, some dropped.


def test_coco_detection_evaluator_rejects_a_min_score_outside_0_1():
    with pytest.raises(ValueError, match=r"min_score is 1.5, expected a score in \[0, 1\]"):
        CocoDetectionEvaluator(_ground_truth([[]]), category_ids=[1], min_score=1.5)


def _voc_truth():
    # One class; one box in each of two images.
    image_ids = [1, 2]
    truth = [
        {"boxes": np.array([[0.0, 0.0, 50.0, 50.0]]), "labels": np.array([0])},
        {"boxes": np.array([[10.0, 10.0, 90.0, 90.0]]), "labels": np.array([0])},
    ]
    return image_ids, truth


@pytest.mark.parametrize(
    "use_07_metric, name, expected",
    [
        # Ranked detections: a hit of image 1's box, then a false positive; image 2's box is never
        # found. Recall 1/2 at precision 1, then 1/2 at 1/2. All points: 1/2 * 1. Eleven points:
        # precision 1 at recalls 0, 0.1, ..., 0.5 and 0 at the five above: 6/11.
        (False, "VOC_mAP50", 0.5),
        (True, "VOC07_mAP50", 6 / 11),
    ],
)
def test_voc_detection_evaluator_gives_hand_computed_map(use_07_metric, name, expected):
    image_ids, truth = _voc_truth()
    evaluator = VocDetectionEvaluator(
        image_ids, truth, num_classes=1, use_07_metric=use_07_metric
    )
    # Image 2 comes only as a padding example, whose exact detection must not count.
    boxes = [[[0, 0, 50, 50], [200, 200, 250, 250]], [[10, 10, 90, 90], [10, 10, 90, 90]]]
    predictions, batch = _detection_batch(
        [1, 2], boxes, [[0.9, 0.8], [0.95, 0.95]], [[0, 0], [0, 0]], [2, 2], [True, False]
    )
    evaluator.add(predictions, batch)
    metrics = evaluator.evaluate()
    assert list(metrics) == [name]
    assert metrics[name] == pytest.approx(expected, abs=1e-12)


def test_voc_detection_evaluator_reads_only_the_first_num_valid_detections():
    image_ids, truth = _voc_truth()
    evaluator = VocDetectionEvaluator(image_ids, truth, num_classes=1, use_07_metric=False)
    # Image 2's exact detection is past its num_valid.
    boxes = [[[0, 0, 50, 50], [0, 0, 1, 1]], [[300, 300, 310, 310], [10, 10, 90, 90]]]
    predictions, batch = _detection_batch(
        [1, 2], boxes, [[0.9, 0.0], [0.8, 0.7]], [[0, 0], [0, 0]], [1, 1], [True, True]
    )
    evaluator.add(predictions, batch)
    assert evaluator.evaluate() == {"VOC_mAP50": pytest.approx(0.5)}


def test_voc_detection_evaluator_rejects_mismatched_ground_truth_and_unknown_images():
    image_ids, truth = _voc_truth()
    with pytest.raises(ValueError, match="one ground-truth entry per image id"):
        VocDetectionEvaluator(image_ids[:1], truth, num_classes=1, use_07_metric=False)
    evaluator = VocDetectionEvaluator(image_ids, truth, num_classes=1, use_07_metric=False)
    predictions, batch = _detection_batch([9], [[[0, 0, 5, 5]]], [[0.5]], [[0]], [1], [True])
    with pytest.raises(ValueError, match="image_id 9"):
        evaluator.add(predictions, batch)


# ----------------------------------------------------------------------------------------------
# All evaluators


def _perfect_evaluators():
    """(evaluator, batch that finds every box, the metric to read): one image, one box."""
    box = [10.0, 10.0, 60.0, 60.0]
    gt = _ground_truth([[(1, box, 0)]])
    predictions, batch = _detection_batch([1], [[box]], [[0.9]], [[0]], [1], [True])
    predictions.update(_proposal_batch([1], [([box], [0.9])])[0])
    voc_truth = [{"boxes": np.array([box]), "labels": np.array([0])}]
    return [
        (CocoDetectionEvaluator(gt, category_ids=[1]), (predictions, batch), "AP"),
        (
            VocDetectionEvaluator([1], voc_truth, num_classes=1, use_07_metric=True),
            (predictions, batch),
            "VOC07_mAP50",
        ),
        (ProposalRecallEvaluator(gt), (predictions, batch), "AR@100"),
    ]


@pytest.mark.parametrize("index", range(3), ids=["coco", "voc", "proposals"])
def test_reset_forgets_added_results(index):
    evaluator, (predictions, batch), name = _perfect_evaluators()[index]
    assert isinstance(evaluator, Evaluator)
    evaluator.add(predictions, batch)
    assert evaluator.evaluate()[name] == pytest.approx(1.0)
    evaluator.reset()
    assert evaluator.evaluate()[name] == 0.0


@pytest.mark.parametrize("module", [evaluator_module, proposals_module])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
