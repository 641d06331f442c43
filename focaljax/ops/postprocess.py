"""RetinaNet inference for one image: per-anchor scores and deltas -> a fixed-size detection list.

The procedure of the paper (section 5, "Inference") and of detectron2's `RetinaNet.inference`:

1. at each pyramid level, keep the `pre_nms_topk` (anchor, class) pairs with the highest score;
2. drop those whose score `sigmoid(logit)` is not above `score_threshold`;
3. decode the boxes of the survivors from their anchors and clip them to the image;
4. merge the levels and run per-class greedy NMS at `nms_iou_threshold`;
5. return the `max_detections` best, by score.

Everything has a static shape: the result is padded to `max_detections` rows and `num_valid` says
how many are real, so the function jits once and vmaps over a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from focaljax.ops.boxes import BoxCoder, clip_boxes
from focaljax.ops.nms import batched_non_max_suppression

__all__ = ["retinanet_postprocess"]

_RETINANET_BOX_CODER = BoxCoder()


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
    num_anchors = cls_logits.shape[0]
    if box_deltas.shape != (num_anchors, 4):
        raise ValueError(
            f"box_deltas has shape {tuple(box_deltas.shape)}, expected ({num_anchors}, 4)"
        )
    if anchors.shape != (num_anchors, 4):
        raise ValueError(f"anchors has shape {tuple(anchors.shape)}, expected ({num_anchors}, 4)")
    if sum(anchors_per_level) != num_anchors or any(n < 1 for n in anchors_per_level):
        raise ValueError(
            f"anchors_per_level {tuple(anchors_per_level)} must be positive and sum to the "
            f"{num_anchors} anchors"
        )
    for name, value in (("pre_nms_topk", pre_nms_topk), ("max_detections", max_detections)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} is {value!r}, expected a positive int")


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
    kept = keep >= 0
    index = jnp.maximum(keep, 0)
    return {
        "boxes": jnp.where(kept[:, None], boxes[index], 0.0),
        "scores": jnp.where(kept, scores[index], 0.0),
        "classes": jnp.where(kept, classes[index], -1),
        "num_valid": jnp.sum(kept, dtype=jnp.int32),
    }
