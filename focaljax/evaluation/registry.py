"""Detection evaluators by name, as a training config lists them (`config.evaluators`):

  "coco"   COCO's detection metrics (AP, AP50, ... AR100; `CocoDetectionEvaluator`), and again
           over only the detections scoring at least each of `coco_min_scores` (AP@0.05 ...)
  "voc07"  PASCAL VOC2007's 11-point mAP at IoU 0.5, logged as "VOC07_mAP50"
  "voc"    PASCAL VOC's all-point mAP at IoU 0.5 (VOC2010+), logged as "VOC_mAP50"

The names are checked once (`check_names`), the evaluation split's ground truth is read once
(`GroundTruth`), and `build_evaluators` makes fresh evaluators from them for each evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from focaljax.errors import ConfigError
from focaljax.evaluation.evaluator import CocoDetectionEvaluator, Evaluator, VocDetectionEvaluator

# The name of each VOC evaluator's metric.
VOC_METRICS = {"voc07": "VOC07_mAP50", "voc": "VOC_mAP50"}
EVALUATORS = ("coco", *VOC_METRICS)


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """What the evaluators of one split are made from, read once.

    Attributes:
      coco: the split's ground truth in COCO format (`{"images", "annotations", "categories"}`).
      category_ids: the COCO category id of each class, in class order.
      num_classes: the number of classes.
      voc: `(image_ids, truths)` with VOC's "difficult" flags (`voc_ground_truth` of a data set
        that has them), or None when no VOC evaluator is named.
    """

    coco: Mapping[str, Any]
    category_ids: Sequence[int]
    num_classes: int
    voc: tuple[Sequence[int], Sequence[Mapping[str, Any]]] | None = None


def check_names(names: Sequence[str], *, field: str = "evaluators") -> tuple[str, ...]:
    """`names` as a tuple; ConfigError, naming `field`, for an unknown or repeated name."""
    names = tuple(names)
    unknown = [name for name in names if name not in EVALUATORS]
    if unknown:
        raise ConfigError(f"{field} names {unknown}, expected names from {EVALUATORS}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{field} names {repeated} more than once")
    return names


def needs_voc(names: Sequence[str]) -> bool:
    """Whether any of the evaluators `names` needs VOC's "difficult" flags (`GroundTruth.voc`)."""
    return any(name in VOC_METRICS for name in names)


def _coco(truth: GroundTruth, backend: str, min_scores: Sequence[float],
          min_score_suffix: Callable[[float], str]) -> list[Evaluator]:
    evaluators: list[Evaluator] = [
        CocoDetectionEvaluator(truth.coco, category_ids=truth.category_ids, backend=backend)
    ]
    evaluators += [
        CocoDetectionEvaluator(truth.coco, category_ids=truth.category_ids, backend=backend,
                               min_score=float(score), suffix=min_score_suffix(score))
        for score in min_scores
    ]
    return evaluators


def _voc(truth: GroundTruth, name: str) -> list[Evaluator]:
    if truth.voc is None:
        raise ValueError(f"evaluator {name!r} needs GroundTruth.voc, which is None")
    image_ids, truths = truth.voc
    return [VocDetectionEvaluator(image_ids, truths, num_classes=truth.num_classes,
                                  use_07_metric=name == "voc07")]


def build_evaluators(
    names: Sequence[str],
    truth: GroundTruth,
    *,
    coco_backend: str = "pycocotools",
    coco_min_scores: Sequence[float] = (),
    min_score_suffix: Callable[[float], str] = lambda score: f"@{float(score):g}",
) -> list[Evaluator]:
    """Fresh evaluators named `names` (checked by `check_names`), in that order, from `truth`.

    Args:
      names: evaluator names, from `EVALUATORS`.
      truth: the split's ground truth; `truth.voc` is needed for the VOC evaluators.
      coco_backend: "pycocotools" or "faster_coco_eval" (the same numbers, faster).
      coco_min_scores: with "coco", also its metrics over the detections scoring at least each
        of these, named with `min_score_suffix(score)` ("AP@0.05").
      min_score_suffix: the metric-name suffix of a minimum score.
    """
    evaluators: list[Evaluator] = []
    for name in check_names(names):
        if name == "coco":
            evaluators += _coco(truth, coco_backend, coco_min_scores, min_score_suffix)
        else:
            evaluators += _voc(truth, name)
    return evaluators
