"""Evaluators by name (`focaljax.evaluation.registry`): names checked in one line, the evaluators
built in the order named, each scoring as the evaluator it names does when built by hand."""

from __future__ import annotations

import numpy as np
import pytest

from focaljax import evaluation
from focaljax.errors import ConfigError

# One image with one box of class 0 (COCO category 7) and one difficult box of class 1.
COCO = {
    "images": [{"id": 1, "height": 50, "width": 60}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20],
                     "area": 400, "iscrowd": 0}],
    "categories": [{"id": 7}, {"id": 9}],
}
VOC = ([1], [{"boxes": np.array([[10, 10, 30, 30], [0, 0, 5, 5]], np.float32),
              "labels": np.array([0, 1]), "difficult": np.array([False, True])}])
TRUTH = evaluation.GroundTruth(coco=COCO, category_ids=(7, 9), num_classes=2, voc=VOC)


def _score(evaluators, boxes, scores, classes):
    predictions = {"boxes": np.asarray([boxes], np.float32),
                   "scores": np.asarray([scores], np.float32),
                   "classes": np.asarray([classes], np.int32),
                   "num_valid": np.asarray([len(scores)], np.int32)}
    batch = {"image_id": np.array([1]), "valid": np.array([True])}
    metrics = {}
    for evaluator in evaluators:
        evaluator.add(predictions, batch)
        metrics.update(evaluator.evaluate())
    return metrics


def test_names_are_checked_in_one_line():
    assert evaluation.check_names(["coco", "voc07"]) == ("coco", "voc07")
    with pytest.raises(ConfigError, match=r"^config.evaluators names \['mAP'\], expected names "
                                          r"from \('coco', 'voc07', 'voc'\)$"):
        evaluation.check_names(("coco", "mAP"), field="config.evaluators")
    with pytest.raises(ConfigError, match=r"^evaluators names \['voc'\] more than once$"):
        evaluation.check_names(("voc", "coco", "voc"))
    assert evaluation.needs_voc(("coco", "voc")) and not evaluation.needs_voc(("coco",))


def test_each_name_builds_the_evaluator_it_names_in_order():
    built = evaluation.build_evaluators(("voc", "coco", "voc07"), TRUTH, coco_min_scores=(0.05,))
    assert [type(e).__name__ for e in built] == [
        "VocDetectionEvaluator", "CocoDetectionEvaluator", "CocoDetectionEvaluator",
        "VocDetectionEvaluator"]
    # A half-overlapping detection (IoU 1/3 at the box) and one exact at score 0.01.
    boxes = [[10, 10, 30, 30], [20, 20, 40, 40]]
    metrics = _score(built, boxes, [0.01, 0.9], [0, 0])
    by_hand = _score(
        [evaluation.CocoDetectionEvaluator(COCO, category_ids=(7, 9)),
         evaluation.CocoDetectionEvaluator(COCO, category_ids=(7, 9), min_score=0.05,
                                           suffix="@0.05"),
         evaluation.VocDetectionEvaluator(*VOC, num_classes=2, use_07_metric=True),
         evaluation.VocDetectionEvaluator(*VOC, num_classes=2, use_07_metric=False)],
        boxes, [0.01, 0.9], [0, 0])
    assert metrics == by_hand
    # The exact box is found second (precision 1/2 at recall 1): VOC's area is 1/2; at >= 0.05
    # only the wrong box is left, so the COCO AP there is 0.
    assert metrics["VOC_mAP50"] == pytest.approx(0.5)
    assert metrics["AP50@0.05"] == 0.0 and metrics["AP50"] > 0


def test_a_voc_evaluator_without_voc_ground_truth_is_refused():
    truth = evaluation.GroundTruth(coco=COCO, category_ids=(7, 9), num_classes=2)
    with pytest.raises(ValueError, match="evaluator 'voc07' needs GroundTruth.voc"):
        evaluation.build_evaluators(("coco", "voc07"), truth)
