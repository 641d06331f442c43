"""Faster R-CNN RoI sampling for training the box head: proposals -> a fixed-size labelled batch.

The procedure of Fast R-CNN (Girshick, 2015, section 2.3 "Mini-batch sampling") as detectron2's
`ROIHeads.label_and_sample_proposals` runs it: the ground-truth boxes join the proposals as extra
candidates, every candidate is matched to the ground truth by IoU, and a random `num_samples` of
them, at most `positive_fraction` foreground, become the RoIs the box head is trained on.

Everything has a static shape: proposals and ground truth come padded with validity masks, and the
result is padded to `num_samples` rows with a `valid` mask, so the function jits once and vmaps
over a batch. Padding proposals are never candidates; with a plain IoU they would be all-zero
boxes of IoU 0 with everything, and so silently be sampled as background.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from focaljax.ops.boxes import BoxCoder
from focaljax.ops.matching import _check_thresholds, build_targets

__all__ = ["sample_rois"]

_FAST_RCNN_BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def _check_inputs(
    proposals: Array,
    proposal_valid: Array,
    gt_boxes: Array,
    gt_labels: Array,
    gt_is_crowd: Array,
    num_samples: int,
    positive_fraction: float,
) -> None:
    if proposals.ndim != 2 or proposals.shape[1] != 4:
        raise ValueError(
            f"proposals has shape {tuple(proposals.shape)}, expected [P, 4] for one image (vmap "
            "for a batch)"
        )
    if proposal_valid.shape != proposals.shape[:1]:
        raise ValueError(
            f"proposal_valid has shape {tuple(proposal_valid.shape)}, expected "
            f"({proposals.shape[0]},) like proposals"
        )
    if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes has shape {tuple(gt_boxes.shape)}, expected [M, 4]")
    for name, array in (("gt_labels", gt_labels), ("gt_is_crowd", gt_is_crowd)):
        if array.shape != gt_boxes.shape[:1]:
            raise ValueError(
                f"{name} has shape {tuple(array.shape)}, expected ({gt_boxes.shape[0]},) like "
                "gt_boxes"
            )
    if not jnp.issubdtype(gt_labels.dtype, jnp.integer):
        raise ValueError(f"gt_labels has dtype {gt_labels.dtype}, expected an integer dtype")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples is {num_samples!r}, expected a positive int")
    if (
        isinstance(positive_fraction, bool)
        or not isinstance(positive_fraction, numbers.Real)
        or not 0 < positive_fraction <= 1
    ):
        raise ValueError(f"positive_fraction is {positive_fraction!r}, expected a number in (0, 1]")


def _random_prefix(priority: Array, eligible: Array, k: int) -> tuple[Array, Array]:
    """The `k` (at most) eligible indices of highest `priority`, and how many are eligible.

    `priority` lies in [0, 1), so the eligible entries, moved to -1 otherwise, come first in the
    descending order of `top_k`, and the first `count` indices are a uniformly random subset.
    """
    k = min(k, priority.shape[0])
    _, index = lax.top_k(jnp.where(eligible, priority, -1.0), k)
    count = jnp.minimum(jnp.sum(eligible, dtype=jnp.int32), k)
    return index, count


def sample_rois(
    key: Array,
    proposals: ArrayLike,
    proposal_valid: ArrayLike,
    gt_boxes: ArrayLike,
    gt_labels: ArrayLike,
    gt_is_crowd: ArrayLike,
    *,
    num_samples: int = 512,
    positive_fraction: float = 0.25,
    fg_iou_threshold: float = 0.5,
    bg_iou_threshold: float = 0.5,
    append_gt: bool = True,
    box_coder: BoxCoder = _FAST_RCNN_BOX_CODER,
) -> dict[str, Array]:
    """Samples and labels the RoIs of one image for the Fast R-CNN box head.

    Candidates are the valid proposals and, with `append_gt`, the real non-crowd ground-truth
    boxes. Each is matched with `build_targets` (no low-quality matches) to the non-crowd box of
    highest IoU: foreground if `IoU >= fg_iou_threshold`, background if `IoU < bg_iou_threshold`,
    and neither (never sampled) in between or if more than `bg_iou_threshold` of its area lies
    inside a crowd box (an appended gt box matches itself with IoU 1, so it is foreground unless
    it lies that much inside a crowd box). Then, as detectron2's `subsample_labels`, up to
    `floor(num_samples * positive_fraction)` foreground candidates are drawn uniformly at random
    without replacement, and background candidates drawn the same way fill the rest of the
    `num_samples` rows; fewer foreground candidates leave room for more background ones.

    Rows: the sampled foreground RoIs first, then the sampled background ones, each group in random
    order, then padding rows (box 0, label -1, targets 0, `valid` False) when there are fewer
    candidates than `num_samples`. The same `key` gives the same sample.

    The RoIs are constants for the loss, as in the approximate joint training of Faster R-CNN
    (Ren et al., 2015): no gradient flows from the outputs to `proposals` or `gt_boxes`.

    Args:
      key: a PRNG key.
      proposals: `[P, 4]` xyxy proposals with positive width and height, padded.
      proposal_valid: bool `[P]`, False for padding rows, which are never sampled.
      gt_boxes: `[M, 4]` xyxy ground-truth boxes, padded.
      gt_labels: int `[M]` class ids `0..C-1`; -1 marks a padding row.
      gt_is_crowd: bool `[M]`, COCO `iscrowd`; crowd boxes are ignore regions, not candidates.
      num_samples: RoIs per image (512 in detectron2, 128 in Fast R-CNN with 2 images per batch).
      positive_fraction: the largest fraction of foreground RoIs (0.25 in both).
      fg_iou_threshold: lowest IoU of a foreground RoI.
      bg_iou_threshold: IoU below which a RoI is background, `[0, 0.5)` as in detectron2 (Fast
        R-CNN's lower bound of 0.1 is not offered); also the crowd threshold of `build_targets`.
      append_gt: add the ground-truth boxes to the candidates, so that every object has at least
        one perfect foreground RoI, early in training when proposals are poor.
      box_coder: encodes the matched boxes relative to the RoIs; the Fast R-CNN head's weights
        `(10, 10, 5, 5)` by default.

    Returns:
      A dict of these arrays.

      - `boxes`: float32 `[num_samples, 4]`, the sampled RoIs.
      - `labels`: int32 `[num_samples]`, the class id of foreground RoIs, -1 for background and
        padding rows.
      - `box_targets`: float32 `[num_samples, 4]`, encoded deltas of the matched box, 0 unless
        foreground.
      - `valid`: bool `[num_samples]`, True for sampled rows, a prefix.
      - `is_foreground`: bool `[num_samples]`, True for foreground rows, a prefix.
      - `matched_gt`: int32 `[num_samples]`, the matched row of `gt_boxes`, -1 unless foreground.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> out = sample_rois(
      ...     jax.random.key(0),
      ...     proposals=jnp.array([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 0, 0]], jnp.float32),
      ...     proposal_valid=jnp.array([True, True, False]),
      ...     gt_boxes=jnp.array([[0, 0, 10, 9]], jnp.float32),
      ...     gt_labels=jnp.array([3]),
      ...     gt_is_crowd=jnp.array([False]),
      ...     num_samples=4,
      ...     positive_fraction=0.5,
      ... )
      >>> out["labels"].tolist(), out["valid"].tolist()
      ([3, 3, -1, -1], [True, True, True, False])
      >>> out["boxes"][2].tolist()
      [20.0, 20.0, 40.0, 40.0]
    """
    proposals = jnp.asarray(proposals)
    proposal_valid = jnp.asarray(proposal_valid)
    gt_boxes = jnp.asarray(gt_boxes)
    gt_labels = jnp.asarray(gt_labels)
    gt_is_crowd = jnp.asarray(gt_is_crowd)
    _check_inputs(
        proposals,
        proposal_valid,
        gt_boxes,
        gt_labels,
        gt_is_crowd,
        num_samples,
        positive_fraction,
    )
    _check_thresholds(fg_iou_threshold, bg_iou_threshold)
    # Casting before the jitted part spares a compilation per input dtype.
    return _sample_rois(
        key,
        proposals.astype(jnp.float32),
        proposal_valid.astype(bool),
        gt_boxes.astype(jnp.float32),
        gt_labels.astype(jnp.int32),
        gt_is_crowd.astype(bool),
        num_samples=num_samples,
        positive_fraction=positive_fraction,
        fg_iou_threshold=fg_iou_threshold,
        bg_iou_threshold=bg_iou_threshold,
        append_gt=append_gt,
        box_coder=box_coder,
    )


# Jitted so that an eager call compiles once instead of once per primitive.
@functools.partial(
    jax.jit,
    static_argnames=(
        "num_samples",
        "positive_fraction",
        "fg_iou_threshold",
        "bg_iou_threshold",
        "append_gt",
        "box_coder",
    ),
)
def _sample_rois(
    key,
    proposals,
    proposal_valid,
    gt_boxes,
    gt_labels,
    gt_is_crowd,
    *,
    num_samples,
    positive_fraction,
    fg_iou_threshold,
    bg_iou_threshold,
    append_gt,
    box_coder,
):
    proposals = lax.stop_gradient(proposals)
    gt_boxes = lax.stop_gradient(gt_boxes)
    candidates = proposals
    candidate_valid = proposal_valid
    if append_gt:
        candidates = jnp.concatenate([proposals, gt_boxes])
        candidate_valid = jnp.concatenate([candidate_valid, (gt_labels >= 0) & ~gt_is_crowd])
    if candidates.shape[0] == 0:
        # One invalid row keeps top_k and the gathers below well-defined; it is never sampled.
        candidates = jnp.zeros([1, 4], jnp.float32)
        candidate_valid = jnp.zeros([1], bool)

    targets = build_targets(
        candidates,
        gt_boxes,
        gt_labels,
        gt_is_crowd,
        fg_iou_threshold=fg_iou_threshold,
        bg_iou_threshold=bg_iou_threshold,
        allow_low_quality_matches=False,
        box_coder=box_coder,
    )
    foreground = candidate_valid & (targets["matched_gt"] >= 0)
    background = candidate_valid & (targets["cls_weights"] > 0) & ~foreground

    # One priority per candidate serves both draws: the two groups are disjoint.
    priority = jax.random.uniform(key, candidate_valid.shape)
    max_foreground = int(num_samples * positive_fraction)
    background_index, num_background = _random_prefix(priority, background, num_samples)
    row = jnp.arange(num_samples)
    if max_foreground > 0:
        foreground_index, num_foreground = _random_prefix(priority, foreground, max_foreground)
        is_foreground = row < num_foreground
        from_foreground = foreground_index[jnp.minimum(row, foreground_index.shape[0] - 1)]
    else:
        num_foreground = jnp.int32(0)
        is_foreground = jnp.zeros([num_samples], bool)
        from_foreground = jnp.zeros([num_samples], jnp.int32)
    background_row = jnp.clip(row - num_foreground, 0, background_index.shape[0] - 1)
    num_background = jnp.minimum(num_background, num_samples - num_foreground)
    valid = row < num_foreground + num_background
    index = jnp.where(is_foreground, from_foreground, background_index[background_row])

    matched = targets["matched_gt"][index]
    return {
        "boxes": jnp.where(valid[:, None], candidates[index], 0.0),
        "labels": jnp.where(is_foreground, targets["labels"][index], -1),
        "box_targets": jnp.where(is_foreground[:, None], targets["box_targets"][index], 0.0),
        "valid": valid,
        "is_foreground": is_foreground,
        "matched_gt": jnp.where(is_foreground, matched, -1),
    }
