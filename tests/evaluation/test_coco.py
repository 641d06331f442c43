"""Tests for focaljax.evaluation.coco against hand-computed COCO numbers."""

import importlib.util
import json
import math
import sys

import numpy as np
import pytest

from focaljax.evaluation.coco import STAT_NAMES, CocoEvaluator, detections_to_coco

HAS_FASTER_COCO_EVAL = importlib.util.find_spec("faster_coco_eval") is not None
BACKENDS = [
    "pycocotools",
    pytest.param(
        "faster_coco_eval",
        marks=pytest.mark.skipif(
            not HAS_FASTER_COCO_EVAL,
            reason="faster-coco-eval is not installed (pip install faster-coco-eval)",
        ),
    ),
]


def _ground_truth(boxes_per_image, categories=(1,), crowd=()):
    """COCO ground truth; boxes_per_image[i] is a list of (category_id, [x, y, w, h])."""
    images, annotations = [], []
    for image_index, boxes in enumerate(boxes_per_image):
        images.append({"id": image_index + 1, "width": 640, "height": 480})
        for category_id, bbox in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_index + 1,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": int(len(annotations) + 1 in crowd),
                }
            )
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in categories],
    }


def _result(image_id, bbox, score, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def _interpolated_ap_101(is_true_positive, num_positives):
    """COCO's AP for one class at one IoU threshold, from scratch: the mean over the recall levels
    0, 0.01, ..., 1 of the best precision reached at that recall or beyond (0 if never reached)."""
    tp = np.cumsum(is_true_positive)
    fp = np.cumsum(np.logical_not(is_true_positive))
    recall, precision = tp / num_positives, tp / (tp + fp)
    total = 0.0
    for level in range(101):
        reached = precision[recall >= level / 100]
        total += reached.max() if reached.size else 0.0
    return total / 101


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_score_one(backend):
    boxes = [[(1, [10, 10, 20, 20]), (2, [100, 50, 120, 80])], [(2, [30, 200, 40, 40])]]
    # One small, one large and one medium box, so that every stat is defined.
    gt = _ground_truth(boxes, categories=(1, 2))
    evaluator = CocoEvaluator(gt, backend=backend)
    evaluator.add(
        _result(image_id, bbox, 0.9, category_id)
        for image_id, image_boxes in enumerate(boxes, start=1)
        for category_id, bbox in image_boxes
    )
    metrics = evaluator.evaluate()
    assert set(metrics) == set(STAT_NAMES)
    assert all(isinstance(value, float) for value in metrics.values())
    for name in STAT_NAMES:
        assert metrics[name] == pytest.approx(1.0), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_true_false_true_ranking_gives_hand_computed_ap(backend):
    # Two ground-truth boxes in one image. By score: exact hit, disjoint false positive, exact hit.
    # PR points (recall, precision): (1/2, 1), (1/2, 1/2), (1, 2/3). The interpolated precision is
    # 1 at the 51 recall levels 0..0.50 and 2/3 at the 50 levels 0.51..1.00.
    gt = _ground_truth([[(1, [10, 10, 50, 50]), (1, [100, 100, 50, 50])]])
    evaluator = CocoEvaluator(gt)
    evaluator.add(
        [
            _result(1, [10, 10, 50, 50], 0.9),
            _result(1, [300, 300, 40, 40], 0.8),
            _result(1, [100, 100, 50, 50], 0.7),
        ]
    )
    metrics = evaluator.evaluate()
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert expected == pytest.approx(_interpolated_ap_101([True, False, True], 2))
    # The hits are exact, so every IoU threshold gives the same AP.
    for name in ("AP", "AP50", "AP75", "APm"):
        assert metrics[name] == pytest.approx(expected, abs=1e-12), name
    assert metrics["AR100"] == pytest.approx(1.0)
    assert metrics["AR1"] == pytest.approx(0.5)  # only the top-scoring detection is kept
    assert math.isnan(metrics["APs"]) and math.isnan(metrics["APl"])  # all boxes are medium


def test_ap_averages_over_iou_thresholds():
    # IoU(gt, detection) = (100 * 62) / (100 * 100) = 0.62: a hit at thresholds 0.50, 0.55, 0.60,
    # a miss at the seven thresholds 0.65 ... 0.95.
    gt = _ground_truth([[(1, [0, 0, 100, 100])]])
    evaluator = CocoEvaluator(gt)
    evaluator.add([_result(1, [0, 0, 100, 62], 0.5)])
    metrics = evaluator.evaluate()
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(3 / 10)
    assert metrics["AR100"] == pytest.approx(3 / 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crowd_ground_truth_is_neither_a_miss_nor_a_false_positive_source(backend):
    boxes = [[(1, [10, 10, 50, 50]), (1, [200, 200, 150, 150])]]
    detections = [
        _result(1, [210, 210, 100, 100], 0.95),  # inside the second box, IoU with it < 0.5
        _result(1, [10, 10, 50, 50], 0.9),
    ]
    crowd = CocoEvaluator(_ground_truth(boxes, crowd=(2,)), backend=backend)
    crowd.add(detections)
    assert crowd.evaluate()["AP"] == pytest.approx(1.0)

    # The same boxes without the crowd flag: one false positive ranked first and one miss.
    not_crowd = CocoEvaluator(_ground_truth(boxes), backend=backend)
    not_crowd.add(detections)
    assert not_crowd.evaluate()["AP"] == pytest.approx(
        _interpolated_ap_101([False, True], 2), abs=1e-12
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_give_zero_not_an_error(backend):
    evaluator = CocoEvaluator(_ground_truth([[(1, [10, 10, 50, 50])], []]), backend=backend)
    metrics = evaluator.evaluate()
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0 and metrics["APm"] == 0.0
    assert math.isnan(metrics["APs"])  # no small ground truth: undefined, pycocotools' -1


def test_evaluate_is_silent_and_keeps_the_summary(capsys):
    evaluator = CocoEvaluator(_ground_truth([[(1, [10, 10, 50, 50])]]))
    with pytest.raises(RuntimeError, match="evaluate"):
        evaluator.summary_table()
    evaluator.add([_result(1, [10, 10, 50, 50], 0.9)])
    evaluator.evaluate()
    assert capsys.readouterr().out == ""
    table = evaluator.summary_table()
    assert len(table.splitlines()) == 12
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in table


def test_verbose_prints_the_summary(capsys):
    evaluator = CocoEvaluator(_ground_truth([[(1, [10, 10, 50, 50])]]), verbose=True)
    evaluator.evaluate()
    assert "Average Recall" in capsys.readouterr().out


def test_ground_truth_from_a_json_path_and_left_unmodified(tmp_path):
    gt = _ground_truth([[(1, [10, 10, 50, 50])]])
    del gt["annotations"][0]["area"], gt["annotations"][0]["iscrowd"]  # filled in from the box
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    snapshot = json.dumps(gt)
    for source in (path, str(path), gt):
        evaluator = CocoEvaluator(source)
        result = _result(1, [10, 10, 50, 50], 0.9)
        evaluator.add([result])
        assert evaluator.evaluate()["APm"] == pytest.approx(1.0)
        assert result == _result(1, [10, 10, 50, 50], 0.9)
    assert json.dumps(gt) == snapshot


def test_add_rejects_unknown_images_and_categories():
    evaluator = CocoEvaluator(_ground_truth([[(1, [10, 10, 50, 50])]], categories=(1, 2)))
    with pytest.raises(ValueError, match="image_id 7"):
        evaluator.add([_result(7, [0, 0, 1, 1], 0.5)])
    with pytest.raises(ValueError, match=r"category_id 5, expected one of .*\[1, 2\]"):
        evaluator.add([_result(1, [0, 0, 1, 1], 0.5, category_id=5)])
    with pytest.raises(ValueError, match="lacks the keys"):
        evaluator.add([{"image_id": 1, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match="backend"):
        CocoEvaluator(_ground_truth([[]]), backend="detectron")


def test_reset_and_restricting_to_image_ids():
    gt = _ground_truth([[(1, [10, 10, 50, 50])], [(1, [10, 10, 50, 50])]])
    evaluator = CocoEvaluator(gt)
    evaluator.add([_result(1, [10, 10, 50, 50], 0.9)])
    assert evaluator.num_results == 1
    # Image 2 was never predicted: a miss under the COCO protocol, left out when restricted.
    assert evaluator.evaluate()["AR100"] == pytest.approx(0.5)
    assert evaluator.evaluate(image_ids=[1])["AR100"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.evaluate(image_ids=[3])
    evaluator.reset()
    assert evaluator.num_results == 0
    assert evaluator.evaluate()["AP"] == 0.0


def test_per_category_ap():
    gt = _ground_truth([[(1, [10, 10, 50, 50]), (3, [100, 100, 50, 50])]], categories=(1, 3, 7))
    evaluator = CocoEvaluator(gt)
    evaluator.add([_result(1, [10, 10, 50, 50], 0.9, category_id=1)])
    evaluator.evaluate()
    per_category = evaluator.per_category_ap()
    assert per_category[1] == pytest.approx(1.0)
    assert per_category[3] == 0.0
    assert math.isnan(per_category[7])


def test_detections_to_coco_skips_padding_and_invalid_images():
    boxes = np.zeros((3, 3, 4), np.float32)
    boxes[0, 0] = [10, 20, 40, 60]
    boxes[0, 1] = [0, 0, 5, 5]
    boxes[1, 0] = [1, 2, 3, 4]
    boxes[2, 0] = [7, 7, 9, 9]
    scores = np.array([[0.9, 0.4, 0.0], [0.8, 0.0, 0.0], [0.7, 0.0, 0.0]], np.float32)
    classes = np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]], np.int32)
    results = detections_to_coco(
        image_ids=np.array([11, 12, 13]),
        boxes=boxes,
        scores=scores,
        classes=classes,
        num_valid=np.array([2, 1, 1]),
        category_ids=[1, 3, 7],
        valid=np.array([True, True, False]),
    )
    assert results == [
        {"image_id": 11, "category_id": 7, "bbox": [10, 20, 30, 40], "score": pytest.approx(0.9)},
        {"image_id": 11, "category_id": 1, "bbox": [0, 0, 5, 5], "score": pytest.approx(0.4)},
        {"image_id": 12, "category_id": 3, "bbox": [1, 2, 2, 2], "score": pytest.approx(0.8)},
    ]
    assert all(type(r["image_id"]) is int and type(r["score"]) is float for r in results)
    json.dumps(results)


def test_detections_to_coco_checks_shapes_and_labels():
    args = dict(
        image_ids=np.array([1]),
        boxes=np.zeros((1, 2, 4)),
        scores=np.zeros((1, 2)),
        classes=np.array([[0, 5]]),
        num_valid=np.array([2]),
        category_ids=[1, 2],
    )
    with pytest.raises(ValueError, match=r"classes of kept detections span \[0, 5\]"):
        detections_to_coco(**args)
    assert len(detections_to_coco(**{**args, "num_valid": np.array([1])})) == 1
    with pytest.raises(ValueError, match=r"scores has shape \(1, 3\), expected \(1, 2\)"):
        detections_to_coco(**{**args, "scores": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="boxes has shape"):
        detections_to_coco(**{**args, "boxes": np.zeros((1, 2, 5))})


def test_contiguous_labels_map_to_coco_category_ids():
    category_ids = [1, 3, 7]
    gt = _ground_truth(
        [[(3, [10, 10, 50, 50]), (7, [100, 100, 60, 40])], [(1, [5, 5, 30, 30])]],
        categories=category_ids,
    )
    boxes = np.array(
        [[[10, 10, 60, 60], [100, 100, 160, 140]], [[5, 5, 35, 35], [0, 0, 0, 0]]], np.float32
    )
    classes = np.array([[1, 2], [0, 0]])

    def ap_with(mapping):
        evaluator = CocoEvaluator(gt)
        evaluator.add(
            detections_to_coco(
                np.array([1, 2]), boxes, np.full((2, 2), 0.9), classes, np.array([2, 1]), mapping
            )
        )
        return evaluator.evaluate()["AP"]

    assert ap_with(category_ids) == pytest.approx(1.0)
    assert ap_with([7, 1, 3]) == 0.0


def _random_problem(seed, num_images=50):
    rng = np.random.default_rng(seed)
    categories = (1, 2, 5)
    gt = _ground_truth([[] for _ in range(num_images)], categories=categories)
    results = []
    for image_id in range(1, num_images + 1):
        for _ in range(rng.integers(0, 7)):
            # Sizes from 4 to 250 px cover the small, medium and large area ranges.
            w, h = np.exp(rng.uniform(np.log(4), np.log(250), 2))
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            category_id = int(rng.choice(categories))
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.05),
                }
            )
            for _ in range(rng.integers(1, 3)):
                jitter = rng.normal(0, 0.07, 4) * [w, h, w, h]
                if rng.random() < 0.1:
                    category_id = int(rng.choice(categories))
                bbox = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)]
                results.append(_result(image_id, bbox, float(rng.random()), category_id))
        for _ in range(rng.integers(0, 4)):
            w, h = np.exp(rng.uniform(np.log(4), np.log(250), 2))
            bbox = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
            category_id = int(rng.choice(categories))
            results.append(_result(image_id, bbox, float(rng.random()), category_id))
    return gt, results


@pytest.mark.skipif(
    not HAS_FASTER_COCO_EVAL,
    reason="faster-coco-eval is not installed (pip install faster-coco-eval)",
)
def test_faster_coco_eval_agrees_with_pycocotools_on_random_detections():
    gt, results = _random_problem(seed=0)
    assert 200 <= len(results) <= 600 and len(gt["annotations"]) >= 100
    metrics = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = CocoEvaluator(gt, backend=backend)
        evaluator.add(results)
        metrics[backend] = evaluator.evaluate()
    reference = metrics["pycocotools"]
    assert all(0.05 < reference[name] < 0.95 for name in STAT_NAMES)  # not a degenerate case
    for name in STAT_NAMES:
        assert metrics["faster_coco_eval"][name] == pytest.approx(reference[name], abs=1e-4), name


def test_missing_faster_coco_eval_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        CocoEvaluator(_ground_truth([[]]), backend="faster_coco_eval")
