"""Detector inference for one image: head outputs -> a fixed-size, per-class detection list.

`retinanet_postprocess` follows the RetinaNet paper (section 5, "Inference") and detectron2's
`RetinaNet.inference`:

1. at each pyramid level, keep the `pre_nms_topk` (anchor, class) pairs with the highest score;
2. drop those whose score `sigmoid(logit)` is not above `score_threshold`;
3. decode the boxes of the survivors from their anchors and clip them to the image;
4. merge the levels and run per-class greedy NMS at `nms_iou_threshold`;
5. return the `max_detections` best, by score.

`fast_rcnn_postprocess` is the second stage of Faster R-CNN (Girshick, 2015, "Fast R-CNN";
detectron2's `fast_rcnn_inference_single_image`):

1. softmax over the `C + 1` logits of each RoI, background last;
2. for every (RoI, foreground class) pair, decode that class's box from the RoI and clip it;
3. drop pairs whose score is not above `score_threshold` and RoIs that are padding or not finite;
4. run per-class greedy NMS at `nms_iou_threshold` and return the `max_detections` best.

Everything has a static shape: the result is padded to `max_detections` rows and `num_valid` says
how many are real, so the functions jit once and vmap over a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from focaljax.ops.anchors import check_per_anchor_outputs
from focaljax.ops.boxes import BoxCoder, check_image_size, clip_boxes
from focaljax.ops.nms import batched_non_max_suppression

__all__ = ["fast_rcnn_postprocess", "retinanet_postprocess"]

_RETINANET_BOX_CODER = BoxCoder()
_FAST_RCNN_BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def _check_inputs(
    cls_logits: Array,
    box_deltas: Array,
    anchors: Array,
    anchors_per_level: Sequence[int],
    pre_nms_topk: int,
    max_detections: int,
) -> None:
    if cls_logits.ndim != 2:
        raise ValueError(
            f"cls_logits has shape {tuple(cls_logits.shape)}, expected [A, num_classes] for one "
            "image (vmap for a batch)"
        )
    check_per_anchor_outputs(cls_logits.shape[0], box_deltas, anchors, anchors_per_level)
    for name, value in (("pre_nms_topk", pre_nms_topk), ("max_detections", max_detections)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} is {value!r}, expected a positive int")


def _gather_detections(
    keep: Array, boxes: Array, scores: Array, classes: Array
) -> dict[str, Array]:
    """The detection dict of the candidates `keep` selects (-1 for padding rows)."""
    kept = keep >= 0
    index = jnp.maximum(keep, 0)
    return {
        "boxes": jnp.where(kept[:, None], boxes[index], 0.0),
        "scores": jnp.where(kept, scores[index], 0.0),
        "classes": jnp.where(kept, classes[index], -1),
        "num_valid": jnp.sum(kept, dtype=jnp.int32),
    }


def retinanet_postprocess(
    cls_logits: ArrayLike,
    box_deltas: ArrayLike,
    *,
    anchors: ArrayLike,
    anchors_per_level: Sequence[int],
    image_size: Sequence[int],
    pre_nms_topk: int = 1000,
    score_threshold: float = 0.05,
    nms_iou_threshold: float = 0.5,
    max_detections: int = 100,
    box_coder: BoxCoder = _RETINANET_BOX_CODER,
) -> dict[str, Array]:
    """Detections of one image from RetinaNet's per-anchor outputs (see the module docstring).

    Args:
      cls_logits: `[A, C]` classification logits, anchors ordered by level as `anchors`.
      box_deltas: `[A, 4]` predicted `(dx, dy, dw, dh)`.
      anchors: `[A, 4]` xyxy anchors (`focaljax.ops.anchors.generate_anchors`).
      anchors_per_level: how many of the `A` anchors belong to each level, in order.
      image_size: `(height, width)` to clip the boxes to.
      pre_nms_topk: candidates kept per level before NMS (1000 in the paper).
      score_threshold: candidates must score above this (0.05 in the paper).
      nms_iou_threshold: per-class NMS threshold (0.5 in the paper).
      max_detections: detections returned (100 for COCO).
      box_coder: the coder the box targets were encoded with.

    Returns:
      A dict with `"boxes"` float32 `[max_detections, 4]` xyxy, `"scores"` float32
      `[max_detections]` (sigmoid probabilities), `"classes"` int32 `[max_detections]` (0-based)
      and `"num_valid"` int32 `[]`. Rows are sorted by descending score; rows from `num_valid` on
      are padding with box 0, score 0 and class -1.

    Examples:
      >>> import numpy as np
      >>> anchors = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 40, 40]], np.float32)
      >>> logits = np.array([[3.0, -9.0], [2.0, -9.0], [-9.0, 0.0]], np.float32)  # 2 classes
      >>> out = retinanet_postprocess(
      ...     logits, np.zeros((3, 4), np.float32), anchors=anchors, anchors_per_level=(2, 1),
      ...     image_size=(32, 32), max_detections=3)
      >>> out["classes"].tolist(), int(out["num_valid"])  # anchor 1 is suppressed by anchor 0
      ([0, 1, -1], 2)
      >>> out["boxes"][1].tolist()  # clipped to the image
      [20.0, 20.0, 32.0, 32.0]
      >>> [round(score, 3) for score in out["scores"].tolist()]
      [0.953, 0.5, 0.0]
    """
    cls_logits = jnp.asarray(cls_logits)
    box_deltas = jnp.asarray(box_deltas)
    anchors = jnp.asarray(anchors)
    anchors_per_level = tuple(int(n) for n in anchors_per_level)
    _check_inputs(
        cls_logits, box_deltas, anchors, anchors_per_level, pre_nms_topk, max_detections
    )
    num_classes = cls_logits.shape[1]

    candidate_scores, candidate_anchor, candidate_class = [], [], []
    start = 0
    for count in anchors_per_level:
        # Ranking logits ranks scores (sigmoid is monotonic) and saves a sigmoid per element.
        level_logits = lax.dynamic_slice_in_dim(cls_logits, start, count).reshape(-1)
        top_logits, flat_index = lax.top_k(level_logits, min(pre_nms_topk, level_logits.size))
        candidate_scores.append(jax.nn.sigmoid(top_logits.astype(jnp.float32)))
        candidate_anchor.append(start + flat_index // num_classes)
        candidate_class.append(flat_index % num_classes)
        start += count
    scores = jnp.concatenate(candidate_scores)
    anchor_index = jnp.concatenate(candidate_anchor)
    classes = jnp.concatenate(candidate_class).astype(jnp.int32)

    boxes = box_coder.decode(box_deltas[anchor_index].astype(jnp.float32), anchors[anchor_index])
    boxes = clip_boxes(boxes, image_size)
    keep = batched_non_max_suppression(
        boxes,
        scores,
        classes,
        iou_threshold=nms_iou_threshold,
        max_output_size=max_detections,
        valid=scores > score_threshold,
    )
    return _gather_detections(keep, boxes, scores, classes)


def _check_fast_rcnn_inputs(
    cls_logits: Array,
    box_deltas: Array,
    rois: Array,
    roi_valid: Array | None,
    image_size: Sequence[int],
    max_detections: int,
) -> None:
    if cls_logits.ndim != 2 or cls_logits.shape[1] < 2:
        raise ValueError(
            f"cls_logits has shape {tuple(cls_logits.shape)}, expected [R, num_classes + 1] with "
            "background last, for one image (vmap for a batch)"
        )
    num_rois, num_classes = cls_logits.shape[0], cls_logits.shape[1] - 1
    if box_deltas.shape != (num_rois, num_classes, 4):
        raise ValueError(
            f"box_deltas has shape {tuple(box_deltas.shape)}, expected ({num_rois}, "
            f"{num_classes}, 4): class-specific deltas of each RoI"
        )
    if rois.shape != (num_rois, 4):
        raise ValueError(f"rois has shape {tuple(rois.shape)}, expected ({num_rois}, 4)")
    if roi_valid is not None and (roi_valid.shape != (num_rois,) or roi_valid.dtype != bool):
        raise ValueError(
            f"roi_valid has shape {tuple(roi_valid.shape)} and dtype {roi_valid.dtype}, expected "
            f"bool ({num_rois},)"
        )
    check_image_size(image_size)
    if not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"max_detections is {max_detections!r}, expected a positive int")


def fast_rcnn_postprocess(
    cls_logits: ArrayLike,
    box_deltas: ArrayLike,
    rois: ArrayLike,
    *,
    image_size: Sequence[int],
    roi_valid: ArrayLike | None = None,
    score_threshold: float = 0.05,
    nms_iou_threshold: float = 0.5,
    max_detections: int = 100,
    box_coder: BoxCoder = _FAST_RCNN_BOX_CODER,
) -> dict[str, Array]:
    """Detections of one image from the Fast R-CNN box head's outputs (see the module docstring).

    With `p = softmax(cls_logits[r])` over the `C + 1` columns, the pair (RoI `r`, class `c`) for
    `c < C` is a candidate with score `p[c]` and box `clip(decode(box_deltas[r, c], rois[r]))`
    when `p[c] > score_threshold` and `roi_valid[r]`. As in detectron2, an RoI whose logits or
    decoded boxes (of any class) are not finite gives no candidate at all. The result is the
    per-class greedy NMS of the candidates at `nms_iou_threshold`, ranked over all classes (ties:
    lower `r * C + c` first), truncated to `max_detections`.

    Args:
      cls_logits: `[R, C + 1]` classification logits; the last column is background
        (detectron2's convention).
      box_deltas: `[R, C, 4]` class-specific `(dx, dy, dw, dh)` relative to each RoI.
      rois: `[R, 4]` xyxy RoIs, e.g. the `"boxes"` of `focaljax.ops.rpn_proposals`.
      image_size: `(height, width)` to clip the boxes to.
      roi_valid: optional bool `[R]`; False rows (padded proposals, such as `rpn_proposals`'s
        `"valid"` False) never produce detections.
      score_threshold: candidates must score above this (0.05 in detectron2).
      nms_iou_threshold: per-class NMS threshold (0.5 in detectron2).
      max_detections: detections returned (100 for COCO).
      box_coder: the coder the box targets were encoded with; `(10, 10, 5, 5)` weights by default,
        as in detectron2 and the Fast R-CNN paper's normalised targets.

    Returns:
      A dict with `"boxes"` float32 `[max_detections, 4]` xyxy, `"scores"` float32
      `[max_detections]` (softmax probabilities), `"classes"` int32 `[max_detections]` (0-based
      foreground classes) and `"num_valid"` int32 `[]`. Rows are sorted by descending score; rows
      from `num_valid` on are padding with box 0, score 0 and class -1.

    Examples:
      >>> import numpy as np
      >>> logits = np.array([[2.0, 1.0, 0.0], [-9.0, -9.0, 9.0]], np.float32)  # 2 classes + bg
      >>> rois = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32)
      >>> out = fast_rcnn_postprocess(
      ...     logits, np.zeros((2, 2, 4), np.float32), rois, image_size=(32, 32), max_detections=3)
      >>> out["classes"].tolist(), int(out["num_valid"])  # the second RoI is background
      ([0, 1, -1], 2)
      >>> [round(score, 3) for score in out["scores"].tolist()]
      [0.665, 0.245, 0.0]
    """
    cls_logits = jnp.asarray(cls_logits)
    box_deltas = jnp.asarray(box_deltas)
    rois = jnp.asarray(rois)
    roi_valid = None if roi_valid is None else jnp.asarray(roi_valid)
    _check_fast_rcnn_inputs(cls_logits, box_deltas, rois, roi_valid, image_size, max_detections)
    num_rois, num_classes = cls_logits.shape[0], cls_logits.shape[1] - 1
    if roi_valid is None:
        roi_valid = jnp.ones([num_rois], bool)

    cls_logits = cls_logits.astype(jnp.float32)
    scores = jax.nn.softmax(cls_logits, axis=-1)[:, :num_classes]
    decoded = box_coder.decode(box_deltas.astype(jnp.float32), rois[:, None, :])
    roi_valid &= jnp.isfinite(cls_logits).all(axis=-1) & jnp.isfinite(decoded).all(axis=(1, 2))
    valid = roi_valid[:, None] & (scores > score_threshold)

    # Candidates are the R * C pairs flattened RoI-major, the order of detectron2's
    # `filter_mask.nonzero()`, so equal scores are ranked as it ranks them.
    boxes = clip_boxes(decoded, image_size).reshape(-1, 4)
    scores = scores.reshape(-1)
    classes = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), num_rois)
    keep = batched_non_max_suppression(
        boxes,
        scores,
        classes,
        iou_threshold=nms_iou_threshold,
        max_output_size=max_detections,
        valid=valid.reshape(-1),
    )
    return _gather_detections(keep, boxes, scores, classes)
