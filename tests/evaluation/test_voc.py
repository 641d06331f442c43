"""Tests for focaljax.evaluation.voc against precision-recall curves written out by hand."""

import math

import numpy as np
import pytest

from focaljax.evaluation.voc import voc_ap, voc_map


def _gt(boxes, labels, difficult=None):
    entry = {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels)}
    if difficult is not None:
        entry["difficult"] = np.array(difficult, bool)
    return entry


def _det(boxes, scores, classes):
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "classes": np.array(classes),
    }


# Class 0: three positives (g0, g2, g3) and one difficult box (g1) over two images.
GROUND_TRUTHS = [
    _gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], difficult=[False, True]),
    _gt([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0]),
]
# Ranked by score: hit g0, background, hit difficult g1, hit g2, duplicate of g0, hit g3.
DETECTIONS = [
    _det([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.7, 0.5], [0, 0, 0]),
    _det([[100, 100, 110, 110], [0, 0, 10, 10], [50, 50, 60, 60]], [0.8, 0.6, 0.4], [0, 0, 0]),
]
# The PR curve, skipping the difficult match (npos = 3):
#   rank  outcome  recall  precision
#   1     TP       1/3     1/1
#   2     FP       1/3     1/2
#   4     TP       2/3     2/3
#   5     FP       2/3     2/4
#   6     TP       3/3     3/5
# Monotone precision: 1 on (0, 1/3], max(2/3, 1/2, 3/5) = 2/3 on (1/3, 2/3], 3/5 on (2/3, 1].
ALL_POINT_AP = 1 / 3 * 1 + 1 / 3 * (2 / 3) + 1 / 3 * (3 / 5)  # = 34/45
# 11-point: t = 0, .1, .2, .3 -> 1; t = .4, .5, .6 -> 2/3; t = .7, .8, .9, 1 -> 3/5.
ELEVEN_POINT_AP = (4 * 1 + 3 * (2 / 3) + 4 * (3 / 5)) / 11


@pytest.mark.parametrize(
    "use_07_metric, expected", [(False, ALL_POINT_AP), (True, ELEVEN_POINT_AP)]
)
def test_hand_computed_curve(use_07_metric, expected):
    result = voc_map(GROUND_TRUTHS, DETECTIONS, use_07_metric=use_07_metric)
    assert result["per_class_AP"] == {0: pytest.approx(expected, abs=1e-12)}
    assert result["mAP"] == pytest.approx(expected, abs=1e-12)


def test_voc_ap_of_the_written_out_curve():
    recall = [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1]
    precision = [1, 1 / 2, 2 / 3, 2 / 4, 3 / 5]
    assert voc_ap(recall, precision) == pytest.approx(34 / 45)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(8.4 / 11)
    # Recall 0.3 exactly reaches the 11-point threshold 0.3.
    assert voc_ap([0.3], [1.0], use_07_metric=True) == pytest.approx(4 / 11)
    assert voc_ap([], []) == 0.0
    with pytest.raises(ValueError, match="expected equal"):
        voc_ap([0.5, 1.0], [1.0])


def test_difficult_boxes_are_neither_positives_nor_penalties():
    # Without the difficult box, its detection (rank 3) becomes a false positive:
    # recall/precision 1/3 1, 1/3 1/2, 1/3 1/3, 2/3 1/2, 2/3 2/5, 1 1/2.
    # Monotone precision: 1 on (0, 1/3], 1/2 on (1/3, 1].
    without = [_gt([[0, 0, 10, 10]], [0]), GROUND_TRUTHS[1]]
    assert voc_map(without, DETECTIONS)["mAP"] == pytest.approx(1 / 3 + 2 / 3 * 1 / 2)
    # Counted as an ordinary positive, it is hit at rank 3 and npos = 4:
    # recall/precision 1/4 1, 1/4 1/2, 2/4 2/3, 3/4 3/4, 3/4 3/5, 1 4/6.
    # Monotone precision: 1 on (0, 1/4], 3/4 on (1/4, 3/4], 2/3 on (3/4, 1].
    ordinary = [_gt(GROUND_TRUTHS[0]["boxes"], [0, 0]), GROUND_TRUTHS[1]]
    expected = 1 / 4 + 2 / 4 * 3 / 4 + 1 / 4 * 2 / 3
    assert voc_map(ordinary, DETECTIONS)["mAP"] == pytest.approx(expected)
    # A missed difficult box costs nothing.
    only_positives_hit = [
        _det([[0, 0, 10, 10]], [0.9], [0]),
        _det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.6, 0.4], [0, 0]),
    ]
    assert voc_map(GROUND_TRUTHS, only_positives_hit)["mAP"] == pytest.approx(1.0)


def test_mean_over_classes_leaves_out_classes_without_ground_truth():
    ground_truths = [
        {
            "boxes": np.concatenate([GROUND_TRUTHS[0]["boxes"], [[0, 0, 100, 100], [0, 0, 0, 0]]]),
            "labels": np.array([0, 0, 1, -1]),  # -1: a padding row
            "difficult": np.array([False, True, False, False]),
        },
        GROUND_TRUTHS[1],
    ]
    detections = [
        _det(
            np.concatenate([DETECTIONS[0]["boxes"], [[0, 0, 100, 60]]]),
            [0.9, 0.7, 0.5, 0.3],
            [0, 0, 0, 1],  # class 1: IoU 0.6, a hit
        ),
        DETECTIONS[1],
    ]
    result = voc_map(ground_truths, detections, num_classes=3)
    assert result["per_class_AP"][0] == pytest.approx(ALL_POINT_AP)
    assert result["per_class_AP"][1] == pytest.approx(1.0)
    assert math.isnan(result["per_class_AP"][2])
    assert result["mAP"] == pytest.approx((ALL_POINT_AP + 1.0) / 2)
    assert voc_map(ground_truths, detections, iou_threshold=0.7)["per_class_AP"][1] == 0.0


def test_inclusive_pixel_convention_of_the_devkit():
    # Inclusive indices: the boxes cover 10 x 10 and 10 x 5 pixels, IoU 50/100 = 0.5 >= 0.5: a hit.
    # Continuous coordinates: 9 x 9 and 9 x 4, IoU 36/81 < 0.5: a miss.
    ground_truths = [_gt([[0, 0, 9, 9]], [0])]
    detections = [_det([[0, 0, 9, 4]], [0.9], [0])]
    assert voc_map(ground_truths, detections, inclusive_coordinates=True)["mAP"] == 1.0
    assert voc_map(ground_truths, detections)["mAP"] == 0.0


def test_detection_goes_to_its_best_overlap_even_when_already_claimed():
    # Both detections overlap box A most; the second is a duplicate (false positive) although it
    # also overlaps box B with IoU 70/130 > 0.5. PR: (1/2, 1), (1/2, 1/2) -> AP = 1/2.
    ground_truths = [_gt([[0, 0, 10, 10], [4, 0, 14, 10]], [0, 0])]
    detections = [_det([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.8], [0, 0])]
    assert voc_map(ground_truths, detections)["mAP"] == pytest.approx(0.5)


def test_padding_detections_and_empty_images():
    ground_truths = [_gt([[0, 0, 10, 10]], [0]), _gt([], [])]
    detections = [
        {**_det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.95], [0, 0]), "num_valid": 1},
        _det([], [], []),
    ]
    assert voc_map(ground_truths, detections)["mAP"] == pytest.approx(1.0)
    no_detections = voc_map(ground_truths, [_det([], [], []), _det([], [], [])])
    assert no_detections == {"mAP": 0.0, "per_class_AP": {0: 0.0}}
    assert math.isnan(voc_map([], [])["mAP"])


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="1 images and detections 0"):
        voc_map(GROUND_TRUTHS[:1], [])
    with pytest.raises(ValueError, match=r"lacks the keys \['classes'\]"):
        voc_map(GROUND_TRUTHS[:1], [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}])
    with pytest.raises(ValueError, match=r"\['scores'\] has shape \(2,\), expected \(1,\)"):
        voc_map(GROUND_TRUTHS[:1], [_det([[0, 0, 1, 1]], [0.5, 0.4], [0])])
    with pytest.raises(ValueError, match="num_classes=1"):
        voc_map(GROUND_TRUTHS[:1], [_det([[0, 0, 1, 1]], [0.5], [3])], num_classes=1)
    with pytest.raises(ValueError, match="iou_threshold"):
        voc_map(GROUND_TRUTHS, DETECTIONS, iou_threshold=0.0)
