"""The alternatives to focal loss that the paper compares against: OHEM and balanced sampling.

Both return a fixed-shape float mask over anchors (1 for the anchors that get a loss), so they
compose with `weighted_sum` under `jit` and `pmap`. Neither passes a gradient through the choice.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from focaljax.losses import _validation as v
from focaljax.ops.nms import non_max_suppression


def _top_k_mask(scores: jax.Array, eligible: jax.Array, k: int, count: jax.Array) -> jax.Array:
    """Mask of the `count` (<= k) highest `scores` among `eligible` entries, ties to lower index."""
    k = min(k, scores.shape[0])
    masked = jnp.where(eligible, scores, -jnp.inf)
    _, idx = lax.top_k(masked, k)
    take = (jnp.arange(k) < count) & eligible[idx]
    return jnp.zeros(scores.shape, jnp.float32).at[idx].max(take.astype(jnp.float32))


def _check_1d(name: str, x: ArrayLike) -> None:
    if len(v.shape_of(x)) != 1:
        raise ValueError(f"{name} has shape {v.shape_of(x)}, expected [num_anchors] "
                         "(vmap over images)")


def _check_count_and_fraction(num_samples: int, positive_fraction: float | None) -> None:
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples}")
    if positive_fraction is not None:
        v.check_static_number("positive_fraction", positive_fraction)
        if not 0 <= positive_fraction <= 1:
            raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction}")


def _check_ohem_options(
    losses: ArrayLike,
    boxes: ArrayLike | None,
    nms_iou_threshold: float | None,
    pre_nms_topk: int | None,
    negative_ratio: float | None,
    positive_fraction: float | None,
    positive_mask: ArrayLike | None,
) -> None:
    if negative_ratio is not None and positive_fraction is not None:
        raise ValueError("negative_ratio and positive_fraction were both given, expected at most "
                         "one (SSD's 1:3 rule or a cap on the positives)")
    if negative_ratio is not None:
        v.check_static_number("negative_ratio", negative_ratio, minimum=0)
    if (negative_ratio is not None or positive_fraction is not None) and positive_mask is None:
        name = "negative_ratio" if negative_ratio is not None else "positive_fraction"
        raise ValueError(f"{name} needs positive_mask (which anchors are foreground)")
    if (boxes is None) != (nms_iou_threshold is None):
        given, missing = ("boxes", "nms_iou_threshold") if boxes is not None else (
            "nms_iou_threshold", "boxes")
        raise ValueError(f"{given} was given without {missing}, expected both (NMS) or neither")
    if pre_nms_topk is not None and nms_iou_threshold is None:
        raise ValueError("pre_nms_topk was given without nms_iou_threshold, expected it only "
                         "with NMS (it bounds the NMS candidates)")
    if nms_iou_threshold is None:
        return
    if v.shape_of(boxes) != (v.shape_of(losses)[0], 4):
        raise ValueError(f"boxes has shape {v.shape_of(boxes)}, expected [num_anchors, 4] = "
                         f"{(v.shape_of(losses)[0], 4)} (xyxy, one box per anchor)")
    v.check_static_number("nms_iou_threshold", nms_iou_threshold)
    if not 0 <= nms_iou_threshold <= 1:
        raise ValueError(f"nms_iou_threshold must lie in [0, 1], got {nms_iou_threshold}")
    if pre_nms_topk is not None and (
        isinstance(pre_nms_topk, bool) or not isinstance(pre_nms_topk, int) or pre_nms_topk < 1
    ):
        raise ValueError(f"pre_nms_topk must be a positive int or None (all valid anchors), got "
                         f"{pre_nms_topk!r}")


def ohem_mask(
    losses: ArrayLike,
    *,
    num_samples: int,
    valid: ArrayLike | None = None,
    positive_mask: ArrayLike | None = None,
    positive_fraction: float | None = None,
    negative_ratio: float | None = None,
    boxes: ArrayLike | None = None,
    nms_iou_threshold: float | None = None,
    pre_nms_topk: int | None = None,
) -> jax.Array:
    r"""Online hard example mining (Shrivastava et al. 2016): keep the highest-loss anchors.

    The candidates are the valid anchors, ranked by loss (ties: the lower index first). With
    `boxes` and `nms_iou_threshold` (the RetinaNet paper's OHEM, Table 1d: NMS at 0.5 or 0.7), the
    candidates are first thinned by greedy non-maximum suppression in that order: the top
    `pre_nms_topk` of them (all when None) are visited by descending loss, and one is dropped when
    its IoU with a kept, higher-loss candidate exceeds `nms_iou_threshold`
    (`focaljax.ops.non_max_suppression`). From the candidates left, with `B = num_samples`:

    * by default, the `B` of largest loss, whatever their label;
    * with `negative_ratio` `r` (SSD's hard negative mining, Liu et al. 2016; the RetinaNet
      paper's "OHEM 1:3" is `r = 3`): the `P = min(B, #positives)` positives of largest loss and
      the `min(B - P, floor(r * P))` hardest negatives, so no negative at all when `P = 0`;
    * with `positive_fraction` `f`: at most `floor(B * f)` positives by loss, and the rest of the
      `B` filled with the hardest negatives. This caps the positives instead of bounding the
      negatives, so it is not SSD's rule: at `B = 128, f = 0.25` an image with 10 positives gets
      118 negatives (1:12), not 30.

    Positives and negatives go through the same NMS, and the rules above apply to its survivors.
    The NMS costs about `N * S` IoUs for `N` candidates visited and `S` kept, in `O(A)` memory.
    Without a positive rule it stops after `B` survivors; with `negative_ratio` or
    `positive_fraction` it visits every candidate (a positive may rank anywhere): about a second
    an image at 50k anchors on one CPU core, so there a `pre_nms_topk` of a few thousand keeps
    it to milliseconds.

    Args:
      losses: float `[A]`, per-anchor loss (e.g. summed over classes); not differentiated.
      num_samples: the most anchors to keep, `B` (the paper: 128 or 256 per image).
      valid: bool `[A]`, anchors eligible at all (not ignored); default all.
      positive_mask: bool `[A]`, foreground anchors; needed with `negative_ratio` or
        `positive_fraction`.
      positive_fraction: the largest fraction of `B` kept for positives; not with `negative_ratio`.
      negative_ratio: negatives per kept positive, at most (3 for SSD's 1:3); `>= 0`.
      boxes: float `[A, 4]` xyxy box of each anchor (the anchor itself or the box predicted for
        it); needed with `nms_iou_threshold`, not differentiated.
      nms_iou_threshold: the IoU above which a lower-loss candidate is suppressed; in [0, 1].
      pre_nms_topk: how many of the highest-loss valid anchors enter the NMS, a positive int, or
        None for all of them; only with `nms_iou_threshold`.

    Returns:
      float32 `[A]` mask with at most `num_samples` ones.

    Examples:
      >>> scores = jnp.array([0.1, 2.0, 0.5, 3.0, 0.2])
      >>> ohem_mask(scores, num_samples=2)
      Array([0., 1., 0., 1., 0.], dtype=float32)
      >>> # At most one positive (the harder of anchors 0 and 4), then the hardest negatives.
      >>> is_positive = jnp.array([True, False, False, False, True])
      >>> ohem_mask(scores, num_samples=4, positive_fraction=0.25, positive_mask=is_positive)
      Array([0., 1., 1., 1., 1.], dtype=float32)
      >>> # SSD's rule (3.0 is its 1:3), at 1:1: both positives and the two hardest negatives.
      >>> ohem_mask(scores, num_samples=8, negative_ratio=1.0, positive_mask=is_positive)
      Array([1., 1., 0., 1., 1.], dtype=float32)
      >>> # NMS at 0.5: anchor 1 overlaps anchor 3 (IoU 0.82), which has the larger loss.
      >>> boxes = jnp.array([[0, 0, 10, 10], [0, 0, 10, 11], [20, 0, 30, 10],
      ...                    [0, 0, 10, 9], [40, 0, 50, 10]], jnp.float32)
      >>> ohem_mask(scores, num_samples=2, boxes=boxes, nms_iou_threshold=0.5)
      Array([0., 0., 1., 1., 0.], dtype=float32)
    """
    v.check_floating("losses", losses)
    _check_1d("losses", losses)
    _check_count_and_fraction(num_samples, positive_fraction)
    for name, x in (("valid", valid), ("positive_mask", positive_mask)):
        if x is not None:
            v.check_same_shape(name, x, "losses", losses)
    _check_ohem_options(losses, boxes, nms_iou_threshold, pre_nms_topk, negative_ratio,
                        positive_fraction, positive_mask)
    return _ohem_mask(
        losses, valid, positive_mask, boxes, num_samples=num_samples,
        positive_fraction=positive_fraction, negative_ratio=negative_ratio,
        nms_iou_threshold=nms_iou_threshold, pre_nms_topk=pre_nms_topk,
    )


def _nms_survivors(losses, boxes, valid, *, iou_threshold, pre_nms_topk, max_survivors):
    """Mask of the valid anchors that greedy NMS by descending loss keeps, of the `pre_nms_topk`
    highest-loss ones (all when None), at most `max_survivors` (all when None)."""
    num_anchors = losses.shape[0]
    if pre_nms_topk is None or pre_nms_topk >= num_anchors:
        candidates = jnp.arange(num_anchors)
    else:
        # In rank order, ties to the lower index, which the NMS keeps among equal losses.
        _, candidates = lax.top_k(jnp.where(valid, losses, -jnp.inf), pre_nms_topk)
    num_candidates = candidates.shape[0]
    kept = non_max_suppression(
        boxes[candidates],
        losses[candidates],
        iou_threshold=iou_threshold,
        max_output_size=min(max_survivors or num_candidates, num_candidates),
        valid=valid[candidates],
    )
    # -1 pads `kept`; as a scatter index it would wrap around, so it goes out of range instead.
    kept_anchor = jnp.where(kept >= 0, candidates[kept], num_anchors)
    return jnp.zeros(num_anchors, bool).at[kept_anchor].set(True, mode="drop")


@functools.partial(
    jax.jit,
    static_argnames=("num_samples", "positive_fraction", "negative_ratio", "nms_iou_threshold",
                     "pre_nms_topk"),
)
def _ohem_mask(losses, valid, positive_mask, boxes, *, num_samples, positive_fraction,
               negative_ratio, nms_iou_threshold, pre_nms_topk):
    losses = lax.stop_gradient(jnp.asarray(losses, jnp.float32))
    valid = jnp.ones(losses.shape, bool) if valid is None else jnp.asarray(valid, bool)
    by_label = positive_fraction is not None or negative_ratio is not None
    if nms_iou_threshold is not None:
        valid &= _nms_survivors(
            losses,
            lax.stop_gradient(jnp.asarray(boxes, jnp.float32)),
            valid,
            iou_threshold=nms_iou_threshold,
            pre_nms_topk=pre_nms_topk,
            # Without a positive rule only the top `num_samples` survivors can be picked.
            max_survivors=None if by_label else num_samples,
        )
    if not by_label:
        return _top_k_mask(losses, valid, num_samples, jnp.int32(num_samples))
    positive = valid & jnp.asarray(positive_mask, bool)
    negative = valid & ~positive
    if negative_ratio is not None:
        pos = _top_k_mask(losses, positive, num_samples, jnp.int32(num_samples))
        # floor(r * P) in Python's float64 for each possible P, not in float32 on the device.
        num_neg = jnp.array([min(num_samples - p, math.floor(negative_ratio * p))
                             for p in range(min(num_samples, losses.shape[0]) + 1)], jnp.int32)
        neg = _top_k_mask(losses, negative, num_samples, num_neg[jnp.sum(pos).astype(jnp.int32)])
        return pos + neg
    max_pos = int(num_samples * positive_fraction)
    pos = _top_k_mask(losses, positive, max_pos, jnp.int32(max_pos)) if max_pos else 0.0
    num_pos = jnp.sum(pos).astype(jnp.int32)
    neg = _top_k_mask(losses, negative, num_samples, num_samples - num_pos)
    return pos + neg


def balanced_sample_mask(
    key: jax.Array,
    labels: ArrayLike,
    *,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
) -> jax.Array:
    r"""Random foreground/background sampling, as the standard RPN's 256 anchors at 1:1.

    Draws up to `floor(num_samples * positive_fraction)` positives uniformly at random, then fills
    the rest of `num_samples` with random negatives (Ren et al. 2015; detectron2's
    `subsample_labels`). Fewer positives than the quota leave room for more negatives.

    Args:
      key: a PRNG key.
      labels: int `[A]`: 1 foreground, 0 background, -1 ignored (never sampled).
      num_samples: anchors per image.
      positive_fraction: the largest fraction of positives.

    Returns:
      float32 `[A]` mask with at most `num_samples` ones.

    Examples:
      >>> labels = jnp.array([1, 1, 1, 0, 0, 0, 0, -1])
      >>> mask = balanced_sample_mask(jax.random.key(0), labels, num_samples=4,
      ...                             positive_fraction=0.5)
      >>> int(mask[:3].sum()), int(mask[3:7].sum()), int(mask[7])  # 2 of each, never ignored
      (2, 2, 0)
    """
    v.check_integer("labels", labels)
    _check_1d("labels", labels)
    _check_count_and_fraction(num_samples, positive_fraction)
    return _balanced_sample_mask(key, labels, num_samples, positive_fraction)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _balanced_sample_mask(key, labels, num_samples, positive_fraction):
    labels = jnp.asarray(labels)
    priority = jax.random.uniform(key, labels.shape)
    max_pos = int(num_samples * positive_fraction)
    pos = _top_k_mask(priority, labels == 1, max_pos, jnp.int32(max_pos)) if max_pos else 0.0
    num_pos = jnp.sum(pos).astype(jnp.int32)
    neg = _top_k_mask(priority, labels == 0, num_samples, num_samples - num_pos)
    return pos + neg
