"""The protocol every evaluator of the trainer follows, and its COCO and PASCAL VOC evaluators.

The trainer feeds each evaluation batch to a list of evaluators and merges what their
``evaluate`` returns into one metrics dict, so that data sets (COCO AP, VOC mAP) and detectors
(e.g. a Faster R-CNN's proposal recall, `focaljax.evaluation.proposals`) can each bring their own
metrics without the trainer knowing them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from focaljax.errors import ConfigError
from focaljax.evaluation.coco import Backend, CocoEvaluator, detections_to_coco
from focaljax.evaluation.voc import voc_map


@runtime_checkable
class Evaluator(Protocol):
    """Accumulates a detector's outputs batch by batch and turns them into named metrics.

    ``add`` receives, for a batch of B images, as NumPy:

    * ``predictions``: the detector's post-processed outputs with every box already in pixels of
      the *original* image. At least ``"boxes"`` float [B, K, 4] xyxy, ``"scores"`` float [B, K],
      ``"classes"`` int32 [B, K] (contiguous labels from 0) and ``"num_valid"`` int32 [B] (rows
      ``0..num_valid - 1`` are detections). A Faster R-CNN adds ``"proposals"`` float [B, P, 4],
      ``"proposal_scores"`` float [B, P] and ``"num_proposals"`` int32 [B] (rows
      ``0..num_proposals - 1``, by descending score).
    * ``batch``: the input batch, with at least ``"image_id"`` int32 [B] and ``"valid"`` bool [B]
      (False for the padding examples that fill the last batch; evaluators skip them).
    """

    def reset(self) -> None:
        """Forgets everything added so far."""

    def add(self, predictions: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
        """Adds one batch's outputs (see the class docstring for the keys and shapes)."""

    def evaluate(self) -> dict[str, float]:
        """The metrics of everything added since construction or the last ``reset``."""


def _require_keys(mapping: Mapping[str, Any], keys: Iterable[str], name: str) -> None:
    """Raises a ValueError naming the ``keys`` that ``mapping`` (called ``name``) lacks."""
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ValueError(f"{name} lacks the keys {missing}; it has {sorted(mapping)}")


class CocoDetectionEvaluator:
    """COCO box AP of the detections (``CocoEvaluator`` fed by ``detections_to_coco``).

    ``evaluate`` returns the twelve numbers of ``CocoEvaluator.evaluate`` under the names of
    ``STAT_NAMES`` (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl), NaN where
    undefined, over every image of the ground truth, and the AP of each category under
    ``AP/<category name>`` (``per_category_name``; detectron2 logs the same as
    ``bbox/AP-<name>``). With ``min_score``, only the detections
    scoring at least that much count, and each name gets ``suffix``: the AP a detector
    post-processed at a lower score threshold would have had at ``min_score`` (the RetinaNet
    paper's inference keeps scores >= 0.05; a model still learning to be confident can rank
    well below it).

    Examples:
      >>> ground_truth = {
      ...     "images": [{"id": 1, "width": 100, "height": 100}],
      ...     "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40]}],
      ...     "categories": [{"id": 7, "name": "cat"}],
      ... }
      >>> evaluator = CocoDetectionEvaluator(ground_truth, category_ids=[7])
      >>> evaluator.add(
      ...     {"boxes": np.array([[[10.0, 10.0, 50.0, 50.0]]]), "scores": np.array([[0.9]]),
      ...      "classes": np.array([[0]]), "num_valid": np.array([1])},
      ...     {"image_id": np.array([1]), "valid": np.array([True])},
      ... )
      >>> metrics = evaluator.evaluate()
      >>> round(metrics["AP"], 3), round(metrics["AP/cat"], 3)
      (1.0, 1.0)
    """

    def __init__(
        self,
        ground_truth: Mapping[str, Any] | str | os.PathLike,
        *,
        category_ids: Sequence[int],
        backend: Backend = "pycocotools",
        min_score: float = 0.0,
        suffix: str = "",
    ):
        """Builds an evaluator.

        Args:
          ground_truth: a COCO-format dict or the path to a COCO annotation json (see
            ``CocoEvaluator``).
          category_ids: the COCO category id of each contiguous class ``0..len - 1``.
          backend: ``"pycocotools"`` or ``"faster_coco_eval"`` (see ``CocoEvaluator``).
          min_score: detections scoring below it are left out.
          suffix: appended to every metric name (e.g. ``"@0.05"``).
        """
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"min_score is {min_score}, expected a score in [0, 1]")
        self.category_ids = tuple(int(c) for c in category_ids)
        self.min_score = float(min_score)
        self.suffix = suffix
        # Public, so that the trainer can log `summary_table()` or `per_category_ap()`.
        self.coco_evaluator = CocoEvaluator(ground_truth, backend=backend)

    def reset(self) -> None:
        """Forgets all added detections (the ground truth stays)."""
        self.coco_evaluator.reset()

    def add(self, predictions: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
        """Adds the detections of a batch; padding examples and detections are skipped."""
        _require_keys(predictions, ("boxes", "scores", "classes", "num_valid"), "predictions")
        _require_keys(batch, ("image_id", "valid"), "batch")
        scores = predictions["scores"]
        num_valid = predictions["num_valid"]
        boxes, classes = predictions["boxes"], predictions["classes"]
        if self.min_score > 0:
            # Valid rows first, each image's kept rows in their order: detections_to_coco reads
            # rows 0..num_valid - 1.
            kept = (np.arange(scores.shape[1]) < num_valid[:, None]) & (scores >= self.min_score)
            order = np.argsort(~kept, axis=1, kind="stable")
            boxes = np.take_along_axis(boxes, order[..., None], axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
            classes = np.take_along_axis(classes, order, axis=1)
            num_valid = kept.sum(axis=1)
        self.coco_evaluator.add(
            detections_to_coco(
                batch["image_id"], boxes, scores, classes, num_valid, self.category_ids,
                batch["valid"],
            )
        )

    def evaluate(self) -> dict[str, float]:
        """``{name + suffix: value for name in STAT_NAMES}`` and ``{per_category_name(name,
        suffix): AP}`` for each category of the ground truth, floats in [0, 1] or NaN."""
        metrics = {f"{name}{self.suffix}": value
                   for name, value in self.coco_evaluator.evaluate().items()}
        names = self.coco_evaluator.category_names
        for category_id, value in self.coco_evaluator.per_category_ap().items():
            metrics[per_category_name(names[category_id], self.suffix)] = value
        return metrics


def per_category_name(category: str, suffix: str = "") -> str:
    """The metric name of a category's AP: ``AP<suffix>/<category>``, spaces as underscores
    (TensorBoard's tags keep them badly).

    Examples:
      >>> per_category_name("traffic light", "@0.05")
      'AP@0.05/traffic_light'
    """
    return f"AP{suffix}/{category.replace(' ', '_')}"


def split_per_category(metrics: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """``metrics`` as (the per-category APs over all detections, by category name; the metrics
    that are not per category). The per-category APs at a minimum score are in neither.

    Examples:
      >>> split_per_category({"AP": 0.5, "AP/cat": 0.7, "AP@0.05/cat": 0.6})
      ({'cat': 0.7}, {'AP': 0.5})
    """
    per_category = {name[len("AP/"):]: value for name, value in metrics.items()
                    if name.startswith("AP/")}
    rest = {name: value for name, value in metrics.items()
            if not (name.startswith("AP") and "/" in name)}
    return per_category, rest


class VocDetectionEvaluator:
    """PASCAL VOC mAP at IoU 0.5 of the detections (``voc_map``).

    An image of ``image_ids`` that no batch brought is scored as having no detections. If an image
    comes twice, its last detections count.

    Examples:
      >>> evaluator = VocDetectionEvaluator(
      ...     [1], [{"boxes": np.array([[10.0, 10.0, 50.0, 50.0]]), "labels": np.array([0])}],
      ...     num_classes=1, use_07_metric=False,
      ... )
      >>> evaluator.add(
      ...     {"boxes": np.array([[[10.0, 10.0, 50.0, 50.0]]]), "scores": np.array([[0.9]]),
      ...      "classes": np.array([[0]]), "num_valid": np.array([1])},
      ...     {"image_id": np.array([1]), "valid": np.array([True])},
      ... )
      >>> evaluator.evaluate()
      {'VOC_mAP50': 1.0}
    """

    def __init__(
        self,
        image_ids: Sequence[int],
        ground_truth: Sequence[Mapping[str, Any]],
        *,
        num_classes: int,
        use_07_metric: bool,
    ):
        """Builds an evaluator.

        Args:
          image_ids: the id of each image of the evaluation split.
          ground_truth: aligned with ``image_ids``, one ``{"boxes": float [M, 4] xyxy original
            pixels, "labels": int [M], "difficult": bool [M] (optional)}`` per image, as
            ``DetectionDataset.voc_ground_truth`` returns them.
          num_classes: the number of contiguous classes; each counts in the mean (a class
            without ground truth has AP NaN and is left out, see ``voc_map``).
          use_07_metric: the 11-point VOC2007 AP (metric ``"VOC07_mAP50"``) instead of the
            VOC2010+ area under the curve (``"VOC_mAP50"``).
        """
        if len(image_ids) != len(ground_truth):
            raise ValueError(
                f"image_ids has {len(image_ids)} images and ground_truth {len(ground_truth)}, "
                "expected one ground-truth entry per image id"
            )
        self.image_ids = tuple(int(i) for i in image_ids)
        self._known_ids = frozenset(self.image_ids)
        self.ground_truth = list(ground_truth)
        self.num_classes = num_classes
        self.use_07_metric = use_07_metric
        self.metric_name = "VOC07_mAP50" if use_07_metric else "VOC_mAP50"
        self._detections: dict[int, dict[str, np.ndarray]] = {}

    def reset(self) -> None:
        """Forgets all added detections (the ground truth stays)."""
        self._detections = {}

    def add(self, predictions: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
        """Keeps the valid detections of each real image of the batch."""
        _require_keys(predictions, ("boxes", "scores", "classes", "num_valid"), "predictions")
        _require_keys(batch, ("image_id", "valid"), "batch")
        for i in np.flatnonzero(batch["valid"]):
            image_id = int(batch["image_id"][i])
            if image_id not in self._known_ids:
                raise ValueError(
                    f"batch has image_id {image_id}, which is not one of the ground truth's "
                    f"{len(self._known_ids)} image ids"
                )
            n = int(predictions["num_valid"][i])
            # Copies of the valid rows, so that the whole batch's arrays are not kept alive.
            self._detections[image_id] = {
                key: np.array(predictions[key][i, :n]) for key in ("boxes", "scores", "classes")
            }

    def evaluate(self) -> dict[str, float]:
        """``{"VOC07_mAP50" or "VOC_mAP50": mAP}``, in [0, 1] or NaN if no class has ground
        truth."""
        nothing = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int)}
        result = voc_map(
            self.ground_truth,
            [self._detections.get(i, nothing) for i in self.image_ids],
            use_07_metric=self.use_07_metric,
            num_classes=self.num_classes,
        )
        return {self.metric_name: result["mAP"]}
