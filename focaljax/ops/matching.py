"""IoU matching of anchors to ground truth and the per-anchor training targets.

The matcher of Faster R-CNN and RetinaNet: an anchor whose best IoU with a ground-truth box is at
least `fg_iou_threshold` is foreground, below `bg_iou_threshold` background, and in between
ignored (RetinaNet 0.5 / 0.4; RPN 0.7 / 0.3). With low-quality matches on, every ground-truth box
also keeps its best anchors as foreground, so small or odd-shaped objects are not left unmatched.

Ground truth comes padded to a fixed number of rows `M` (padding rows have label -1), so everything
here has fixed shapes and can be jitted and vmapped over a batch.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from focaljax.ops.boxes import (
    BoxCoder,
    box_area,
    check_boxes,
    pairwise_intersection,
    pairwise_iou,
)

__all__ = ["BACKGROUND", "FOREGROUND", "IGNORED", "build_targets", "match"]

FOREGROUND = 1
"""`match`'s label of an anchor trained as an object."""
BACKGROUND = 0
"""`match`'s label of an anchor trained as background."""
IGNORED = -1
"""`match`'s label of an anchor that gets no classification loss."""


def _check_thresholds(fg_iou_threshold: float, bg_iou_threshold: float) -> None:
    if not 0 <= bg_iou_threshold <= fg_iou_threshold <= 1:
        raise ValueError(
            f"bg_iou_threshold={bg_iou_threshold} and fg_iou_threshold={fg_iou_threshold}, "
            "expected 0 <= bg_iou_threshold <= fg_iou_threshold <= 1"
        )


def match(
    iou: ArrayLike,
    *,
    fg_iou_threshold: float = 0.5,
    bg_iou_threshold: float = 0.4,
    allow_low_quality_matches: bool = True,
    valid: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Assigns each anchor to at most one ground-truth box.

    With `best = max_m iou[m, a]`, anchor `a` is `FOREGROUND` if `best >= fg_iou_threshold`,
    `BACKGROUND` if `best < bg_iou_threshold` and `IGNORED` otherwise, and is matched to
    `argmax_m iou[m, a]` (the lowest `m` on ties).

    Low-quality matches: every valid box `m` whose best IoU `q_m = max_a iou[m, a]` is positive
    also makes foreground all anchors tied at `q_m` (detectron2 keeps all ties too), and such an
    anchor is matched to the box it is a best anchor of (the one with the highest IoU with it if
    it is a best anchor of several). detectron2 instead keeps it matched to its argmax box, which
    can leave a box with no anchor at all; here a box loses its best anchors only to another box
    for which the same anchor is also best and overlaps at least as much (e.g. a duplicate box).

    Args:
      iou: `[M, A]` IoU of ground-truth boxes (rows) with anchors (columns).
      fg_iou_threshold: lowest IoU of a foreground anchor.
      bg_iou_threshold: IoU below which an anchor is background.
      allow_low_quality_matches: keep each box's best anchors as foreground.
      valid: `[M]` bool, False for padding rows, which are never matched; default all True.

    Returns:
      `(matched, labels)`, both int32 `[A]`; `matched` is the index of each anchor's box (-1
      unless foreground), `labels` is `FOREGROUND` (1), `BACKGROUND` (0) or `IGNORED` (-1).

    Examples:
      >>> import jax.numpy as jnp
      >>> iou = jnp.array([[0.9, 0.45, 0.1, 0.0],
      ...                  [0.0, 0.2, 0.3, 0.0]])  # 2 boxes x 4 anchors
      >>> matched, labels = match(iou)  # RetinaNet's 0.5 / 0.4
      >>> labels.tolist()  # anchor 1 is in the ignore band; anchor 2 is box 1's best anchor
      [1, -1, 1, 0]
      >>> matched.tolist()
      [0, -1, 1, -1]
      >>> match(iou, allow_low_quality_matches=False)[1].tolist()
      [1, -1, 0, 0]
    """
    iou = jnp.asarray(iou)
    if iou.ndim != 2:
        raise ValueError(f"iou has shape {tuple(iou.shape)}, expected [M, A]")
    num_boxes, num_anchors = iou.shape
    if valid is None:
        valid = jnp.ones([num_boxes], bool)
    valid = jnp.asarray(valid)
    if valid.shape != (num_boxes,):
        raise ValueError(f"valid has shape {tuple(valid.shape)}, expected ({num_boxes},)")
    _check_thresholds(fg_iou_threshold, bg_iou_threshold)
    if num_boxes == 0:
        unmatched = jnp.full([num_anchors], -1, jnp.int32)
        return unmatched, jnp.full([num_anchors], BACKGROUND, jnp.int32)

    # -1 is below any real IoU, so padding rows never win a max and leave anchors background.
    iou = jnp.where(valid[:, None], iou, -1)
    best_iou = iou.max(axis=0)
    matched = iou.argmax(axis=0).astype(jnp.int32)
    labels = jnp.where(
        best_iou >= fg_iou_threshold,
        FOREGROUND,
        jnp.where(best_iou < bg_iou_threshold, BACKGROUND, IGNORED),
    ).astype(jnp.int32)

    if allow_low_quality_matches:
        best_per_box = iou.max(axis=1, keepdims=True)
        is_best = (iou == best_per_box) & (best_per_box > 0)
        is_low_quality = is_best.any(axis=0)
        best_for_box = jnp.where(is_best, iou, -1).argmax(axis=0).astype(jnp.int32)
        matched = jnp.where(is_low_quality, best_for_box, matched)
        labels = jnp.where(is_low_quality, FOREGROUND, labels)

    matched = jnp.where(labels == FOREGROUND, matched, -1)
    return matched, labels


def build_targets(
    anchors: ArrayLike,
    gt_boxes: ArrayLike,
    gt_labels: ArrayLike,
    gt_is_crowd: ArrayLike,
    *,
    fg_iou_threshold: float = 0.5,
    bg_iou_threshold: float = 0.4,
    allow_low_quality_matches: bool = True,
    box_coder: BoxCoder = BoxCoder(),  # noqa: B008 (frozen dataclass, safe to share)
) -> dict[str, Array]:
    """Per-anchor classification and box-regression targets for one image.

    Non-crowd boxes are matched with `match`. Crowd boxes (COCO `iscrowd`) are never matched;
    instead an anchor is ignored if more than `bg_iou_threshold` of its own area lies inside a
    crowd box. Intersection over the anchor's area, not IoU, is used because a crowd region is
    typically much larger than an anchor, so even an anchor fully inside it has a small IoU and
    would otherwise be trained as background on what are objects. Crowd overlap takes precedence:
    such anchors are neither background nor foreground. An image whose rows are all padding
    has every anchor background.

    Args:
      anchors: `[A, 4]` xyxy anchors.
      gt_boxes: `[M, 4]` xyxy ground-truth boxes, padded.
      gt_labels: int `[M]` class ids `0..C-1`; -1 marks a padding row.
      gt_is_crowd: bool `[M]`.
      fg_iou_threshold: see `match`.
      bg_iou_threshold: see `match`; also the crowd intersection-over-anchor threshold.
      allow_low_quality_matches: see `match`.
      box_coder: encodes matched boxes relative to their anchors.

    Returns:
      A dict of these arrays.

      - `labels`: int32 `[A]`, the class id of foreground anchors, -1 for background and ignored.
      - `cls_weights`: float32 `[A]`, 1 for foreground and background, 0 for ignored.
      - `box_targets`: float32 `[A, 4]`, encoded deltas of the matched box, 0 unless foreground.
      - `box_weights`: float32 `[A]`, 1 for foreground, else 0.
      - `matched_gt`: int32 `[A]`, index of the matched row of `gt_boxes`, -1 unless foreground.

    Examples:
      >>> import jax.numpy as jnp
      >>> anchors = jnp.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
      >>> gt_boxes = jnp.array([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 0.0, 0.0]])  # 2nd: padding
      >>> targets = build_targets(anchors, gt_boxes, jnp.array([2, -1]), jnp.array([False, False]))
      >>> targets["labels"].tolist(), targets["cls_weights"].tolist()
      ([2, -1], [1.0, 1.0])
      >>> [round(d, 4) for d in targets["box_targets"][0].tolist()]  # 1.2 times as tall
      [0.0, 0.1, 0.0, 0.1823]
    """
    anchors = check_boxes("anchors", anchors)
    gt_boxes = check_boxes("gt_boxes", gt_boxes)
    gt_labels = jnp.asarray(gt_labels)
    gt_is_crowd = jnp.asarray(gt_is_crowd)
    if anchors.ndim != 2 or gt_boxes.ndim != 2:
        raise ValueError(
            f"anchors has shape {tuple(anchors.shape)} and gt_boxes {tuple(gt_boxes.shape)}, "
            "expected [A, 4] and [M, 4] (vmap for a batch)"
        )
    num_boxes = gt_boxes.shape[0]
    for name, array in (("gt_labels", gt_labels), ("gt_is_crowd", gt_is_crowd)):
        if array.shape != (num_boxes,):
            raise ValueError(
                f"{name} has shape {tuple(array.shape)}, expected ({num_boxes},) like gt_boxes"
            )
    _check_thresholds(fg_iou_threshold, bg_iou_threshold)
    if num_boxes == 0:
        # One padding row keeps the gathers below well-defined; it is never matched.
        gt_boxes = jnp.zeros([1, 4], gt_boxes.dtype)
        gt_labels = jnp.full([1], -1, gt_labels.dtype)
        gt_is_crowd = jnp.zeros([1], bool)

    real = gt_labels >= 0
    crowd = real & gt_is_crowd.astype(bool)
    iou = pairwise_iou(gt_boxes, anchors)
    matched, match_labels = match(
        iou,
        fg_iou_threshold=fg_iou_threshold,
        bg_iou_threshold=bg_iou_threshold,
        allow_low_quality_matches=allow_low_quality_matches,
        valid=real & ~crowd,
    )

    intersection = pairwise_intersection(gt_boxes, anchors)
    crowd_overlap = jnp.where(crowd[:, None], intersection, 0).max(axis=0, initial=0)
    in_crowd = crowd_overlap > bg_iou_threshold * box_area(anchors)
    match_labels = jnp.where(in_crowd, IGNORED, match_labels)
    foreground = match_labels == FOREGROUND
    matched = jnp.where(foreground, matched, -1)

    safe_matched = jnp.maximum(matched, 0)
    box_targets = box_coder.encode(gt_boxes[safe_matched].astype(jnp.float32), anchors)
    return {
        "labels": jnp.where(foreground, gt_labels[safe_matched], -1).astype(jnp.int32),
        "cls_weights": (match_labels != IGNORED).astype(jnp.float32),
        "box_targets": jnp.where(foreground[:, None], box_targets, 0).astype(jnp.float32),
        "box_weights": foreground.astype(jnp.float32),
        "matched_gt": matched,
    }
