"""Region proposals for one image from an FPN region proposal network, as detectron2 makes them.

The RPN is that of Faster R-CNN (Ren et al., 2015, "Faster R-CNN: Towards Real-Time Object
Detection with Region Proposal Networks") on a feature pyramid (Lin et al., 2017, "Feature Pyramid
Networks for Object Detection"). The steps are those of detectron2's `find_top_rpn_proposals`:

1. at each pyramid level, keep the `min(pre_nms_topk, n_l)` anchors with the highest objectness
   logit (ties: lower index first);
2. decode their boxes from the anchors and clip them to the image;
3. drop candidates whose logit or decoded box is not finite, or whose clipped width or height is
   not above `min_size`;
4. run greedy NMS at `nms_iou_threshold` within each level (boxes of different levels never
   suppress each other), ranked over all levels at once, and keep the `post_nms_topk` best.

Everything has a static shape: the result is padded to `post_nms_topk` rows with a `valid` mask,
so the function jits once and vmaps over a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from focaljax.ops.anchors import check_per_anchor_outputs
from focaljax.ops.boxes import BoxCoder, check_image_size, clip_boxes
from focaljax.ops.nms import batched_non_max_suppression

__all__ = ["rpn_proposals"]

_RPN_BOX_CODER = BoxCoder()


def _check_inputs(
    objectness: Array,
    box_deltas: Array,
    anchors: Array,
    anchors_per_level: tuple[int, ...],
    image_size: Sequence[int],
    pre_nms_topk: int,
    post_nms_topk: int,
    min_size: float,
) -> None:
    if objectness.ndim != 1:
        raise ValueError(
            f"objectness has shape {tuple(objectness.shape)}, expected [A] for one image (vmap "
            "for a batch)"
        )
    check_per_anchor_outputs(objectness.shape[0], box_deltas, anchors, anchors_per_level)
    check_image_size(image_size)
    for name, value in (("pre_nms_topk", pre_nms_topk), ("post_nms_topk", post_nms_topk)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} is {value!r}, expected a positive int")
    num_candidates = sum(min(pre_nms_topk, n) for n in anchors_per_level)
    if post_nms_topk > num_candidates:
        raise ValueError(
            f"post_nms_topk is {post_nms_topk}, expected at most the {num_candidates} candidates "
            f"that pre_nms_topk={pre_nms_topk} leaves from the levels {anchors_per_level}"
        )
    if isinstance(min_size, int | float) and not min_size >= 0:
        raise ValueError(f"min_size is {min_size}, expected a number >= 0")


def rpn_proposals(
    objectness: ArrayLike,
    box_deltas: ArrayLike,
    *,
    anchors: ArrayLike,
    anchors_per_level: Sequence[int],
    image_size: Sequence[int],
    pre_nms_topk: int = 2000,
    post_nms_topk: int = 1000,
    nms_iou_threshold: float = 0.7,
    min_size: float = 0.0,
    box_coder: BoxCoder = _RPN_BOX_CODER,
) -> dict[str, Array]:
    """Proposals of one image from the RPN's per-anchor outputs (see the module docstring).

    A candidate from level `l` with logit `s` and box `b = clip(decode(deltas, anchor))` is valid
    when `s` and `decode(deltas, anchor)` are finite and `width(b) > min_size` and
    `height(b) > min_size`. The result is the greedy NMS of the valid candidates, where a box is
    dropped if `IoU > nms_iou_threshold` with a kept box of its own level, visited by descending
    `s` over all levels, truncated to `post_nms_topk`. The defaults are detectron2's FPN training
    values (2000 per level, 1000 per image, IoU 0.7); at test time it keeps 1000 per level.

    The inputs go through `lax.stop_gradient`: proposals are treated as constants by the second
    stage (the approximate joint training of Faster R-CNN), so no gradient flows back to the RPN
    through them, whatever is computed from the outputs.

    Args:
      objectness: `[A]` objectness logits (higher means more likely an object), anchors ordered by
        level as `anchors`.
      box_deltas: `[A, 4]` predicted `(dx, dy, dw, dh)`.
      anchors: `[A, 4]` xyxy anchors (`focaljax.ops.anchors.generate_anchors`).
      anchors_per_level: how many of the `A` anchors belong to each level, in order.
      image_size: `(height, width)` to clip the boxes to; a traced `[2]` array under vmap works.
      pre_nms_topk: candidates kept per level before NMS.
      post_nms_topk: proposals returned for the image, over all levels; at most the number of
        candidates, `sum(min(pre_nms_topk, n_l))`.
      nms_iou_threshold: per-level NMS threshold, in [0, 1].
      min_size: clipped boxes must be wider and taller than this, in pixels.
      box_coder: the coder the RPN's box targets were encoded with.

    Returns:
      A dict with `"boxes"` float32 `[post_nms_topk, 4]` xyxy, `"scores"` float32
      `[post_nms_topk]` (the objectness logits of the kept boxes) and `"valid"` bool
      `[post_nms_topk]`. Rows are sorted by descending score, valid rows first; padding rows have
      box 0, score `-inf` (the logit of probability 0, so the scores stay sorted and padding ranks
      last anywhere they are ranked again; mask it before doing arithmetic on it) and valid False.

    Examples:
      >>> import numpy as np
      >>> anchors = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 40, 40]], np.float32)
      >>> out = rpn_proposals(
      ...     np.array([2.0, 1.0, 0.5], np.float32), np.zeros((3, 4), np.float32),
      ...     anchors=anchors, anchors_per_level=(2, 1), image_size=(32, 32), post_nms_topk=3)
      >>> out["boxes"].tolist()  # the second anchor overlaps the first (IoU 0.82): suppressed
      [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 32.0, 32.0], [0.0, 0.0, 0.0, 0.0]]
      >>> out["scores"].tolist(), out["valid"].tolist()
      ([2.0, 0.5, -inf], [True, True, False])
    """
    objectness = lax.stop_gradient(jnp.asarray(objectness))
    box_deltas = lax.stop_gradient(jnp.asarray(box_deltas))
    anchors = lax.stop_gradient(jnp.asarray(anchors))
    anchors_per_level = tuple(int(n) for n in anchors_per_level)
    _check_inputs(
        objectness,
        box_deltas,
        anchors,
        anchors_per_level,
        image_size,
        pre_nms_topk,
        post_nms_topk,
        min_size,
    )

    candidate_scores, candidate_anchor, candidate_level = [], [], []
    start = 0
    for level, count in enumerate(anchors_per_level):
        # lax.top_k ranks NaN above everything, as torch.topk does, so a NaN logit takes a slot
        # here like in detectron2; the validity mask below keeps it out of the result.
        level_logits = objectness[start : start + count].astype(jnp.float32)
        top_logits, index = lax.top_k(level_logits, min(pre_nms_topk, count))
        candidate_scores.append(top_logits)
        candidate_anchor.append(start + index)
        candidate_level.append(jnp.full(index.shape, level, jnp.int32))
        start += count
    scores = jnp.concatenate(candidate_scores)
    anchor_index = jnp.concatenate(candidate_anchor)
    levels = jnp.concatenate(candidate_level)

    decoded = box_coder.decode(box_deltas[anchor_index].astype(jnp.float32), anchors[anchor_index])
    boxes = clip_boxes(decoded, image_size)
    # Finiteness is checked before clipping, as detectron2 does: clipping would turn an infinite
    # coordinate into the image border and hide a diverged prediction.
    valid = jnp.isfinite(scores) & jnp.isfinite(decoded).all(axis=-1)
    valid &= (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)
    keep = batched_non_max_suppression(
        boxes,
        scores,
        levels,
        iou_threshold=nms_iou_threshold,
        max_output_size=post_nms_topk,
        valid=valid,
    )
    kept = keep >= 0
    index = jnp.maximum(keep, 0)
    return {
        "boxes": jnp.where(kept[:, None], boxes[index], 0.0),
        "scores": jnp.where(kept, scores[index], -jnp.inf),
        "valid": kept,
    }
