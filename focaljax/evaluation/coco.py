"""COCO box evaluation: detector outputs to COCO results, and a COCOeval wrapper.

The numbers are those of the reference implementation, ``pycocotools.cocoeval.COCOeval`` with
``iouType="bbox"`` (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014): AP is the
mean over IoU thresholds 0.50:0.05:0.95 and categories of the 101-point interpolated precision,
at most 100 detections per image. ``faster-coco-eval`` (a C++ port that gives the same numbers) can
be used instead for speed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from focaljax.errors import ConfigError

# The order of pycocotools' `COCOeval.stats` for bbox evaluation.
STAT_NAMES = (
    *("AP", "AP50", "AP75", "APs", "APm", "APl"),
    *("AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
)

Backend = Literal["pycocotools", "faster_coco_eval"]
_BACKENDS = ("pycocotools", "faster_coco_eval")


def detections_to_coco(
    image_ids: Any,
    boxes: Any,
    scores: Any,
    classes: Any,
    num_valid: Any,
    category_ids: Sequence[int],
    valid: Any = None,
) -> list[dict[str, Any]]:
    """Converts a batch of fixed-shape detector outputs to COCO results.

    Detection ``k`` of image ``b`` becomes
    ``{"image_id", "category_id": category_ids[classes[b, k]], "bbox": [x1, y1, x2 - x1, y2 - y1],
    "score"}`` if ``k < num_valid[b]`` and ``valid[b]``; padding detections and padding images are
    skipped.

    Args:
      image_ids: int ``[B]``, the COCO image id of each image.
      boxes: float ``[B, K, 4]``, xyxy in pixels of the *original* image (divide the detector's
        boxes by the batch's ``scale`` first).
      scores: float ``[B, K]``.
      classes: int ``[B, K]``, contiguous labels ``0..len(category_ids) - 1``.
      num_valid: int ``[B]``, how many leading detections of each image are real.
      category_ids: the COCO category id of each contiguous label.
      valid: bool ``[B]``; False marks padding images. Default: all images are real.

    Returns:
      A list of COCO result dicts with plain Python numbers, ready for ``json.dump`` or
      ``CocoEvaluator.add``.
    """
    image_ids = np.asarray(image_ids)
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64)
    num_valid = np.asarray(num_valid)
    valid = np.ones(image_ids.shape, bool) if valid is None else np.asarray(valid, dtype=bool)
    if image_ids.ndim != 1:
        raise ValueError(f"image_ids has shape {image_ids.shape}, expected [B]")
    batch = image_ids.shape[0]
    if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
        raise ValueError(f"boxes has shape {boxes.shape}, expected [B={batch}, K, 4]")
    num_dets = boxes.shape[1]
    for name, array, shape in (
        ("scores", scores, (batch, num_dets)),
        ("classes", classes, (batch, num_dets)),
        ("num_valid", num_valid, (batch,)),
        ("valid", valid, (batch,)),
    ):
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, expected {shape}")

    keep = (np.arange(num_dets)[None, :] < num_valid[:, None]) & valid[:, None]
    kept_classes = classes[keep]
    if kept_classes.size and (kept_classes.min() < 0 or kept_classes.max() >= len(category_ids)):
        raise ValueError(
            f"classes of kept detections span [{kept_classes.min()}, {kept_classes.max()}], "
            f"expected labels in [0, {len(category_ids) - 1}] to index category_ids"
        )
    xyxy = boxes[keep]
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    rows, _ = np.nonzero(keep)
    category_lookup = np.asarray(category_ids)
    return [
        {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}
        for image_id, category_id, bbox, score in zip(
            image_ids[rows].tolist(),
            category_lookup[kept_classes].tolist(),
            xywh.tolist(),
            scores[keep].tolist(),
            strict=True,
        )
    ]


def _load_ground_truth(ground_truth: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Returns a copy of a COCO-format ground truth with ``area`` and ``iscrowd`` filled in."""
    if isinstance(ground_truth, (str, os.PathLike)):
        with open(ground_truth) as f:
            ground_truth = json.load(f)
    if not isinstance(ground_truth, Mapping):
        raise TypeError(
            f"ground_truth is a {type(ground_truth).__name__}, expected a COCO-format dict or "
            "the path to a COCO annotation json"
        )
    missing = {"images", "annotations", "categories"} - set(ground_truth)
    if missing:
        raise ValueError(f"ground_truth lacks the COCO keys {sorted(missing)}")
    annotations = []
    for ann in ground_truth["annotations"]:
        # Copies, because COCOeval writes an "ignore" flag into every ground-truth annotation.
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        annotations.append(ann)
    return {**ground_truth, "annotations": annotations}


def _backend_classes(backend: str) -> tuple[type, type]:
    """Returns the (COCO, COCOeval) classes of a backend, importing it only when asked for."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ImportError(
            'backend="faster_coco_eval" needs the faster-coco-eval package: '
            "pip install faster-coco-eval"
        ) from e
    return COCO, COCOeval_faster


def _index(coco_class: type, dataset: dict[str, Any]) -> Any:
    """A COCO API object over an in-memory dataset, built without the API's prints."""
    coco = coco_class()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoEvaluator:
    """Accumulates COCO box results and evaluates them with COCOeval.

    Usage::

      evaluator = CocoEvaluator("instances_val2017.json")
      for batch, outputs in ...:
        evaluator.add(detections_to_coco(...))
      metrics = evaluator.evaluate()   # {"AP": 0.36, "AP50": 0.55, ...}
      logging.info("\\n%s", evaluator.summary_table())

    ``evaluate`` returns the twelve numbers of pycocotools' ``COCOeval.stats`` under the names in
    ``STAT_NAMES`` (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl) as Python floats
    in [0, 1]. A number that is undefined, because no ground truth falls in its area range (or no
    category has any ground truth), is NaN where pycocotools prints -1.

    Ground-truth annotations without ``area`` get the area of their box and those without
    ``iscrowd`` are not crowds. Crowd boxes are never counted as misses, and detections matched to
    them count neither as true nor as false positives.
    """

    def __init__(
        self,
        ground_truth: Mapping[str, Any] | str | os.PathLike,
        *,
        backend: Backend = "pycocotools",
        verbose: bool = False,
    ):
        """Builds an evaluator.

        Args:
          ground_truth: a COCO-format dict (``images``, ``annotations``, ``categories``) or the
            path to a COCO annotation json. It is copied, never modified.
          backend: ``"pycocotools"`` (the reference) or ``"faster_coco_eval"`` (same numbers,
            faster; ``pip install faster-coco-eval``).
          verbose: print the backend's progress messages and summary as it runs.
        """
        if backend not in _BACKENDS:
            raise ConfigError(f"backend is {backend!r}, expected one of {_BACKENDS}")
        self._coco_class, self._eval_class = _backend_classes(backend)
        self.backend = backend
        self.verbose = verbose
        self._ground_truth = _load_ground_truth(ground_truth)
        self._coco_gt = _index(self._coco_class, self._ground_truth)
        self._image_ids = frozenset(self._coco_gt.getImgIds())
        self._category_ids = frozenset(self._coco_gt.getCatIds())
        self._results: list[dict[str, Any]] = []
        self._coco_eval: Any = None
        self._summary: str | None = None

    @property
    def num_results(self) -> int:
        """How many results have been added since construction or the last ``reset``."""
        return len(self._results)

    def reset(self) -> None:
        """Forgets all added results (the ground truth stays)."""
        self._results = []
        self._coco_eval = None
        self._summary = None

    def add(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Adds COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``)."""
        for result in results:
            missing = {"image_id", "category_id", "bbox", "score"} - set(result)
            if missing:
                raise ValueError(f"result {dict(result)} lacks the keys {sorted(missing)}")
            if result["image_id"] not in self._image_ids:
                raise ValueError(
                    f"result has image_id {result['image_id']}, which is not an image of the "
                    "ground truth"
                )
            if result["category_id"] not in self._category_ids:
                raise ValueError(
                    f"result has category_id {result['category_id']}, expected one of the ground "
                    f"truth's categories {sorted(self._category_ids)}"
                )
            x, y, w, h = (float(v) for v in result["bbox"])
            self._results.append(
                {
                    "id": len(self._results) + 1,
                    "image_id": int(result["image_id"]),
                    "category_id": int(result["category_id"]),
                    "bbox": [x, y, w, h],
                    "score": float(result["score"]),
                    "area": w * h,
                    "iscrowd": 0,
                }
            )

    def evaluate(self, *, image_ids: Iterable[int] | None = None) -> dict[str, float]:
        """Runs COCOeval on the results added so far.

        Args:
          image_ids: evaluate on these images only. Default: every image of the ground truth, as
            the COCO protocol does; an image without results then contributes only misses.

        Returns:
          ``{name: value for name in STAT_NAMES}``, floats in [0, 1] or NaN where undefined.
        """
        # Results are indexed directly rather than through `COCO.loadRes`, which writes into the
        # result dicts and fails on an empty list.
        detections = {
            "images": self._ground_truth["images"],
            "categories": self._ground_truth["categories"],
            "annotations": self._results,
        }
        coco_dt = _index(self._coco_class, detections)
        logs = io.StringIO()
        with contextlib.redirect_stdout(logs):
            if self.backend == "pycocotools":
                coco_eval = self._eval_class(self._coco_gt, coco_dt, "bbox")
            else:
                coco_eval = self._eval_class(self._coco_gt, coco_dt, "bbox", print_function=print)
            if image_ids is not None:
                image_ids = sorted(int(i) for i in image_ids)
                unknown = set(image_ids) - self._image_ids
                if unknown:
                    raise ValueError(
                        f"image_ids {sorted(unknown)[:10]} are not in the ground truth"
                    )
                coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
        if self.verbose:
            print(logs.getvalue() + summary.getvalue(), end="")
        self._coco_eval = coco_eval
        self._summary = summary.getvalue().rstrip("\n")
        return {
            name: _undefined_to_nan(value)
            for name, value in zip(STAT_NAMES, coco_eval.stats[: len(STAT_NAMES)], strict=True)
        }

    def summary_table(self) -> str:
        """The backend's printed summary ("Average Precision (AP) @[ IoU=0.50:0.95 ..."), for
        logs; faster-coco-eval adds AR at IoU 0.50 and 0.75 to pycocotools' twelve lines."""
        if self._summary is None:
            raise RuntimeError("summary_table() needs evaluate() to have run first")
        return self._summary

    @property
    def category_names(self) -> dict[int, str]:
        """The ground truth's category names by COCO category id."""
        return {int(c["id"]): str(c.get("name", c["id"])) for c in self._ground_truth["categories"]}

    def per_category_ap(self) -> dict[int, float]:
        """AP@[0.50:0.95] (all areas, 100 detections) of each COCO category id, from the last
        ``evaluate``; NaN for a category without ground truth."""
        if self._coco_eval is None:
            raise RuntimeError("per_category_ap() needs evaluate() to have run first")
        # precision: [IoU thresholds, recall thresholds, categories, area ranges, max detections]
        precision = np.asarray(self._coco_eval.eval["precision"])[:, :, :, 0, -1]
        per_category = {}
        for k, category_id in enumerate(self._coco_eval.params.catIds):
            defined = precision[:, :, k][precision[:, :, k] > -1]
            per_category[int(category_id)] = float(defined.mean()) if defined.size else math.nan
        return per_category


def _undefined_to_nan(value: float) -> float:
    return math.nan if value == -1 else float(value)
