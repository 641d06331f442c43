"""Class-agnostic average recall of region proposals (e.g. a Faster R-CNN's RPN), COCO style.

AR@k is the recall of the ground-truth boxes by each image's k highest-scoring proposals,
averaged over the IoU thresholds T = {0.50, 0.55, ..., 0.95} (Hosang et al., "What makes for
effective detection proposals?", TPAMI 2016):

    AR@k = (1 / |T|) sum_{t in T} (# boxes matched at IoU >= t) / (# ground-truth boxes)

where, in each image and at each t, the top k proposals are matched in order of score, each to the
still unmatched box it overlaps most (if that IoU is >= t). The numbers are those of
``pycocotools.cocoeval.COCOeval`` with ``iouType="bbox"``, ``params.useCats = 0`` (categories are
ignored) and ``params.maxDets = max_dets``, the "proposal" metric of mmdetection: crowd boxes are
not counted among the ground truth, so missing them costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from focaljax.evaluation.coco import (
    _backend_classes,
    _index,
    _load_ground_truth,
    _undefined_to_nan,
    detections_to_coco,
)
from focaljax.evaluation.evaluator import _require_keys


class ProposalRecallEvaluator:
    """Accumulates proposals batch by batch and returns their AR@k for each k of ``max_dets``.

    ``evaluate`` returns ``{"AR@100": ..., "AR@300": ..., "AR@1000": ...}`` (named after
    ``max_dets``) as floats in [0, 1], over every image of the ground truth (an image without
    proposals contributes only misses); NaN when the ground truth has no non-crowd box.

    Examples:
      >>> ground_truth = {
      ...     "images": [{"id": 1, "width": 100, "height": 100}],
      ...     "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 100, 100]}],
      ...     "categories": [{"id": 7, "name": "cat"}],
      ... }
      >>> evaluator = ProposalRecallEvaluator(ground_truth, max_dets=(1, 2, 3))
      >>> # The top proposal has IoU 0.62 with the box, a hit at 3 of the 10 thresholds.
      >>> evaluator.add(
      ...     {"proposals": np.array([[[0.0, 0.0, 62.0, 100.0], [0.0, 0.0, 100.0, 100.0]]]),
      ...      "proposal_scores": np.array([[0.9, 0.8]]), "num_proposals": np.array([2])},
      ...     {"image_id": np.array([1]), "valid": np.array([True])},
      ... )
      >>> {name: round(value, 3) for name, value in evaluator.evaluate().items()}
      {'AR@1': 0.3, 'AR@2': 1.0, 'AR@3': 1.0}
    """

    def __init__(
        self,
        ground_truth: Mapping[str, Any] | str | os.PathLike,
        *,
        max_dets: Sequence[int] = (100, 300, 1000),
        boxes_key: str = "proposals",
        scores_key: str = "proposal_scores",
        count_key: str = "num_proposals",
    ):
        """Builds an evaluator.

        Args:
          ground_truth: a COCO-format dict (``images``, ``annotations``, ``categories``) or the
            path to a COCO annotation json. It is copied, never modified; annotations without
            ``area`` get their box's and those without ``iscrowd`` are not crowds.
          max_dets: the three numbers k of proposals per image at which AR is reported, increasing
            (COCOeval's summary has three AR slots).
          boxes_key: the predictions' key of the proposals, float [B, P, 4] xyxy in original
            pixels.
          scores_key: the predictions' key of their scores, float [B, P].
          count_key: the predictions' key of how many leading proposals of each image are real,
            int [B].
        """
        max_dets = tuple(int(k) for k in max_dets)
        if len(max_dets) != 3 or min(max_dets) < 1 or sorted(set(max_dets)) != list(max_dets):
            raise ValueError(
                f"max_dets is {max_dets}, expected three increasing positive numbers of proposals"
            )
        self.max_dets = max_dets
        self.keys = (boxes_key, scores_key, count_key)
        self._coco_class, self._eval_class = _backend_classes("pycocotools")
        self._ground_truth = _load_ground_truth(ground_truth)
        self._coco_gt = _index(self._coco_class, self._ground_truth)
        self._image_ids = frozenset(self._coco_gt.getImgIds())
        category_ids = self._coco_gt.getCatIds()
        if not category_ids:
            raise ValueError("ground_truth has no categories, expected at least one")
        # With useCats=0 COCOeval pools the results of every category of the ground truth, so any
        # of them will do; an id outside them would be dropped.
        self._category_id = min(category_ids)
        self._results: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forgets all added proposals (the ground truth stays)."""
        self._results = []

    def add(self, predictions: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
        """Adds the proposals of a batch; padding examples and padding proposals are skipped."""
        _require_keys(predictions, self.keys, "predictions")
        _require_keys(batch, ("image_id", "valid"), "batch")
        boxes_key, scores_key, count_key = self.keys
        valid = np.asarray(batch["valid"], dtype=bool)
        image_ids = np.asarray(batch["image_id"])
        unknown = set(image_ids[valid].tolist()) - self._image_ids
        if unknown:
            raise ValueError(
                f"batch has image_ids {sorted(unknown)[:10]}, which are not images of the ground "
                "truth"
            )
        scores = np.asarray(predictions[scores_key])
        results = detections_to_coco(
            image_ids,
            predictions[boxes_key],
            scores,
            np.zeros(scores.shape, np.int64),
            predictions[count_key],
            [self._category_id],
            valid,
        )
        for result in results:
            # The fields COCOeval reads from an indexed result besides those of a COCO result.
            result["id"] = len(self._results) + 1
            result["area"] = result["bbox"][2] * result["bbox"][3]
            result["iscrowd"] = 0
            self._results.append(result)

    def evaluate(self) -> dict[str, float]:
        """``{f"AR@{k}": value for k in max_dets}``, floats in [0, 1] or NaN."""
        # Indexed directly, as in `CocoEvaluator.evaluate`: `COCO.loadRes` fails on no results.
        proposals = {
            "images": self._ground_truth["images"],
            "categories": self._ground_truth["categories"],
            "annotations": self._results,
        }
        coco_dt = _index(self._coco_class, proposals)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = self._eval_class(self._coco_gt, coco_dt, "bbox")
            coco_eval.params.useCats = 0
            coco_eval.params.maxDets = list(self.max_dets)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        # stats[6:9] are AR over all areas at maxDets[0], maxDets[1] and maxDets[2].
        return {
            f"AR@{k}": _undefined_to_nan(value)
            for k, value in zip(self.max_dets, coco_eval.stats[6:9], strict=True)
        }
