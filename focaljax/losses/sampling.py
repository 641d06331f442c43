"""The alternatives to focal loss that the paper compares against: OHEM and balanced sampling.

Both return a fixed-shape float mask over anchors (1 for the anchors that get a loss), so they
compose with `weighted_sum` under `jit` and `pmap`. Neither passes a gradient through the choice.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from focaljax.losses import _validation as v


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


def ohem_mask(
    losses: ArrayLike,
    *,
    num_samples: int,
    valid: ArrayLike | None = None,
    positive_mask: ArrayLike | None = None,
    positive_fraction: float | None = None,
) -> jax.Array:
    r"""Online hard example mining (Shrivastava et al. 2016): keep the highest-loss anchors.

    Without `positive_fraction`: the `num_samples` valid anchors of largest loss. With it (the
    paper's "OHEM 1:3" is `positive_fraction=0.25`): at most `floor(num_samples *
    positive_fraction)` positives by loss, and the rest of the `num_samples` filled with the
    highest-loss negatives. The RetinaNet paper's OHEM also runs NMS over the anchors first; that
    needs boxes and belongs to the detector, not to this mask.

    Args:
      losses: float `[A]`, per-anchor loss (e.g. summed over classes); not differentiated.
      num_samples: how many anchors to keep (the paper: 128 or 256 per image).
      valid: bool `[A]`, anchors eligible at all (not ignored); default all.
      positive_mask: bool `[A]`, foreground anchors; needed with `positive_fraction`.
      positive_fraction: optional fraction of `num_samples` reserved at most for positives.

    Returns:
      float32 `[A]` mask with at most `num_samples` ones.

    Examples:
      >>> scores = jnp.array([0.1, 2.0, 0.5, 3.0, 0.2])
      >>> ohem_mask(scores, num_samples=2)
      Array([0., 1., 0., 1., 0.], dtype=float32)
      >>> # 1:3: at most one positive (the harder of anchors 0 and 4), then the hardest negatives.
      >>> ohem_mask(scores, num_samples=4, positive_fraction=0.25,
      ...           positive_mask=jnp.array([True, False, False, False, True]))
      Array([0., 1., 1., 1., 1.], dtype=float32)
    """
    v.check_floating("losses", losses)
    _check_1d("losses", losses)
    _check_count_and_fraction(num_samples, positive_fraction)
    if positive_fraction is not None and positive_mask is None:
        raise ValueError("positive_fraction needs positive_mask (which anchors are foreground)")
    for name, x in (("valid", valid), ("positive_mask", positive_mask)):
        if x is not None:
            v.check_same_shape(name, x, "losses", losses)
    return _ohem_mask(losses, num_samples, valid, positive_mask, positive_fraction)


@functools.partial(jax.jit, static_argnums=(1, 4))
def _ohem_mask(losses, num_samples, valid, positive_mask, positive_fraction):
    losses = lax.stop_gradient(jnp.asarray(losses, jnp.float32))
    valid = jnp.ones(losses.shape, bool) if valid is None else jnp.asarray(valid, bool)
    if positive_fraction is None:
        return _top_k_mask(losses, valid, num_samples, jnp.int32(num_samples))
    positive = valid & jnp.asarray(positive_mask, bool)
    negative = valid & ~positive
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
