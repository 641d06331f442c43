"""PASCAL VOC detection metric: per-class average precision at one IoU threshold, and its mean.

Follows the VOC devkit (``VOCevaldet.m`` and ``VOCap.m``; Everingham et al., "The PASCAL Visual
Object Classes (VOC) Challenge", IJCV 2010):

* the detections of a class are ranked by score over the whole data set; each is assigned to the
  ground-truth box of its image that it overlaps most. It is a true positive if that IoU is
  ``>= iou_threshold`` and the box was not claimed by a higher-scoring detection, a false positive
  otherwise (also when the best-overlapping box is already claimed, even if another box would do);
* a detection assigned to a "difficult" box is neither a true nor a false positive, and difficult
  boxes are not counted among the positives, so missing them costs nothing;
* AP is the area under the precision-recall curve made monotone (precision at recall r is the best
  precision at any recall >= r), VOC2010 onwards; or, with ``use_07_metric``, the VOC2007 mean of
  that precision at the 11 recalls 0, 0.1, ..., 1.

Boxes are xyxy. By default they are continuous coordinates, as everywhere else in focaljax (and in
COCO, and in tfds' normalized VOC boxes): width = x2 - x1. The devkit instead reads boxes as
inclusive integer pixel indices, width = x2 - x1 + 1; ``inclusive_coordinates=True`` reproduces it
for boxes in VOC's own annotation pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from focaljax.errors import ConfigError


def voc_ap(recall: Any, precision: Any, *, use_07_metric: bool = False) -> float:
    """Average precision of one class from its precision-recall curve.

    With p_interp(r) = max{precision_i : recall_i >= r} (0 if no such i),

    * VOC2010+ ("all points"): AP = sum_i (r_i - r_{i-1}) * p_interp(r_i) over the distinct recalls
      r_0 = 0 < r_1 < ... of the curve;
    * VOC2007 (``use_07_metric``): AP = (1/11) sum_{t in 0, 0.1, ..., 1} p_interp(t).

    Args:
      recall: float ``[N]``, non-decreasing, the recall after each ranked detection.
      precision: float ``[N]``, the precision after each ranked detection.
      use_07_metric: use the 11-point VOC2007 definition.

    Returns:
      AP in [0, 1]; 0 for an empty curve.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(
            f"recall has shape {recall.shape} and precision {precision.shape}, expected equal [N]"
        )
    if use_07_metric:
        total = 0.0
        # t = k / 10 rather than k * 0.1: 3 * 0.1 > 0.3 would drop a recall of exactly 0.3.
        for t in np.arange(11) / 10:
            reached = precision[recall >= t]
            total += reached.max() if reached.size else 0.0
        return float(total / 11)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def _overlaps(box: np.ndarray, boxes: np.ndarray, offset: float) -> np.ndarray:
    """IoU of one xyxy box with ``boxes`` [M, 4]; ``offset`` is 1 for inclusive pixel indices.

    Host-side numpy on a handful of boxes, with the devkit's pixel convention as an option, so
    not `focaljax.ops.boxes`.
    """
    width = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + offset
    height = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + offset
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    area = (box[2] - box[0] + offset) * (box[3] - box[1] + offset)
    areas = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    return intersection / (area + areas - intersection)


def _as_arrays(entry: Mapping[str, Any], keys: dict[str, Any], what: str, index: int) -> dict:
    """Reads ``keys`` (name -> dtype) of one image's mapping as 1-D or [N, 4] arrays."""
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{what}[{index}] lacks the keys {missing}; it has {sorted(entry)}")
    arrays = {k: np.asarray(entry[k], dtype=dtype) for k, dtype in keys.items()}
    boxes = arrays["boxes"].reshape(-1, 4) if arrays["boxes"].size == 0 else arrays["boxes"]
    arrays["boxes"] = boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}[{index}]['boxes'] has shape {boxes.shape}, expected [N, 4]")
    for k, array in arrays.items():
        if k != "boxes" and array.shape != (boxes.shape[0],):
            raise ValueError(
                f"{what}[{index}][{k!r}] has shape {array.shape}, expected ({boxes.shape[0]},) "
                "like its boxes"
            )
    return arrays


def voc_map(
    ground_truths: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    inclusive_coordinates: bool = False,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """PASCAL VOC mean average precision (see the module docstring for the protocol).

    Args:
      ground_truths: one mapping per image with ``boxes`` float [M, 4] xyxy, ``labels`` int [M]
        (rows labelled -1 are padding and skipped, as in focaljax batches) and optionally
        ``difficult`` bool [M] (default all False).
      detections: one mapping per image, aligned with ``ground_truths``, with ``boxes`` float
        [K, 4] xyxy, ``scores`` float [K], ``classes`` int [K] (the names of
        ``Detector.postprocess``) and optionally ``num_valid`` (only the first ``num_valid`` rows
        are detections).
      iou_threshold: the least IoU of a true positive (the devkit's ``minoverlap``, 0.5).
      use_07_metric: the 11-point VOC2007 AP instead of the VOC2010+ area under the curve.
      inclusive_coordinates: boxes are inclusive pixel indices, width = x2 - x1 + 1, as in the
        devkit; default False: continuous coordinates, width = x2 - x1.
      num_classes: report classes ``0..num_classes - 1``; default: every label that occurs in the
        ground truth or the detections.

    Returns:
      ``{"mAP": float, "per_class_AP": {label: float}}``. A class without any non-difficult ground
      truth has AP NaN and is left out of the mean; mAP is NaN if no class has ground truth.
    """
    if len(ground_truths) != len(detections):
        raise ValueError(
            f"ground_truths has {len(ground_truths)} images and detections {len(detections)}, "
            "expected one entry per image in both"
        )
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold is {iou_threshold}, expected a value in (0, 1]")

    gts, dets = [], []
    for i, (gt, det) in enumerate(zip(ground_truths, detections, strict=True)):
        gt_keys = {"boxes": np.float64, "labels": np.int64}
        if "difficult" in gt:
            gt_keys["difficult"] = bool
        gt = _as_arrays(gt, gt_keys, "ground_truths", i)
        gt.setdefault("difficult", np.zeros(gt["labels"].shape, bool))
        real = gt["labels"] >= 0
        gts.append({k: v[real] for k, v in gt.items()})
        det = _as_arrays(
            det, {"boxes": np.float64, "scores": np.float64, "classes": np.int64}, "detections", i
        )
        num_valid = detections[i].get("num_valid")
        if num_valid is not None:
            det = {k: v[: int(num_valid)] for k, v in det.items()}
        dets.append(det)

    labels = np.concatenate(
        [np.zeros(0, np.int64)] + [g["labels"] for g in gts] + [d["classes"] for d in dets]
    )
    if num_classes is None:
        classes = sorted(set(labels.tolist()))
    else:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"labels span [{labels.min()}, {labels.max()}], expected [0, {num_classes - 1}] "
                f"for num_classes={num_classes}"
            )
        classes = list(range(num_classes))

    offset = 1.0 if inclusive_coordinates else 0.0
    per_class = {c: _class_ap(gts, dets, c, iou_threshold, use_07_metric, offset) for c in classes}
    defined = [ap for ap in per_class.values() if not math.isnan(ap)]
    return {
        "mAP": float(np.mean(defined)) if defined else math.nan,
        "per_class_AP": per_class,
    }


def _class_ap(
    gts: list[dict],
    dets: list[dict],
    label: int,
    iou_threshold: float,
    use_07_metric: bool,
    offset: float,
) -> float:
    """The devkit's evaluation of one class."""
    gt_boxes = [g["boxes"][g["labels"] == label] for g in gts]
    gt_difficult = [g["difficult"][g["labels"] == label] for g in gts]
    num_positives = sum(int((~d).sum()) for d in gt_difficult)
    if num_positives == 0:
        return math.nan

    image_index = np.concatenate(
        [np.full(int((d["classes"] == label).sum()), i) for i, d in enumerate(dets)]
    ).astype(np.int64)
    boxes = np.concatenate([d["boxes"][d["classes"] == label] for d in dets])
    scores = np.concatenate([d["scores"][d["classes"] == label] for d in dets])
    # Stable, so that equal scores keep image order as in the devkit's sort.
    order = np.argsort(-scores, kind="stable")

    claimed = [np.zeros(len(b), bool) for b in gt_boxes]
    outcome = []  # True: true positive, False: false positive; difficult matches are skipped
    for d in order:
        i = image_index[d]
        if len(gt_boxes[i]) == 0:
            outcome.append(False)
            continue
        ious = _overlaps(boxes[d], gt_boxes[i], offset)
        best = int(np.argmax(ious))
        if ious[best] < iou_threshold:
            outcome.append(False)
        elif gt_difficult[i][best]:
            continue
        elif claimed[i][best]:
            outcome.append(False)
        else:
            claimed[i][best] = True
            outcome.append(True)

    true_positives = np.cumsum(outcome, dtype=np.float64)
    ranks = np.arange(1, len(outcome) + 1)
    recall, precision = true_positives / num_positives, true_positives / ranks
    return voc_ap(recall, precision, use_07_metric=use_07_metric)
