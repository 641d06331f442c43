"""Turning per-anchor losses into a detection loss: ignore weights and normalizers."""

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from focaljax.losses import _validation as v

EMA_NORMALIZER_INIT = 100.0
"""detectron2's initial value of the EMA loss normalizer (`loss_normalizer` in RetinaNet)."""


def weighted_sum(losses: ArrayLike, weights: ArrayLike) -> jax.Array:
    r"""`sum(weights * losses)` where entries of weight 0 add exactly 0 loss and 0 gradient.

    An ignored anchor (weight 0) contributes nothing even when its loss is inf or NaN: the loss is
    selected away with `where`, not multiplied by 0, so neither `0 * inf` in the forward pass nor
    in the backward pass can leak a NaN.

    Args:
      losses: float array, e.g. `[anchors, classes]`.
      weights: array broadcastable to `losses` (e.g. `[anchors, 1]`), >= 0.

    Returns:
      A scalar in the dtype of `losses`.

    Examples:
      >>> weighted_sum(jnp.array([1.0, jnp.inf, 2.0]), jnp.array([1.0, 0.0, 0.5]))
      Array(2., dtype=float32)
    """
    v.check_floating("losses", losses)
    losses = jnp.asarray(losses)
    weights = jnp.broadcast_to(jnp.asarray(weights, losses.dtype), losses.shape)
    keep = weights > 0
    return jnp.sum(jnp.where(keep, losses, 0) * weights)


def positive_normalizer(num_positives: ArrayLike, *, axis_name: str | None = None) -> jax.Array:
    r"""The paper's normalizer `max(1, n)`, `n` the number of positive anchors, per device.

    Outside `pmap` this is `max(1, n)`. Under `pmap` with `axis_name`, `n` is summed over all
    devices and the result is `max(1, n_total) / num_devices`: each device divides its own loss
    sum by it, so that the `lax.pmean` of the per-device losses (and of their gradients) equals the
    loss of the whole global batch normalized by its positives, `sum / max(1, n_total)`. A
    pmapped step therefore matches the same step on one device over the same global batch.

    Examples:
      >>> positive_normalizer(0), positive_normalizer(7)
      (Array(1., dtype=float32), Array(7., dtype=float32))
    """
    n = jnp.asarray(num_positives, jnp.float32)
    if axis_name is None:
        return jnp.maximum(n, 1.0)
    total = lax.psum(n, axis_name)
    num_devices = lax.psum(1, axis_name)
    return jnp.maximum(total, 1.0) / num_devices


def ema_normalizer(
    state: ArrayLike,
    num_positives: ArrayLike,
    *,
    momentum: float = 0.9,
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""detectron2's moving-average normalizer: a pure function of (state, count).

    .. math:: s' = \mu\, s + (1 - \mu) \max(1, n)

    starting from `s = EMA_NORMALIZER_INIT` (100). Smooths the per-batch count of positives, which
    varies a lot with few images per device. Under `pmap`, `n` is the mean count per device (the
    `positive_normalizer` convention), so every device holds the same state.

    Returns:
      `(normalizer, new_state)`, both equal to `s'`; divide the loss sum by the first and carry
      the second to the next step.

    Examples:
      >>> normalizer, state = ema_normalizer(EMA_NORMALIZER_INIT, 10, momentum=0.9)
      >>> normalizer  # 0.9 * 100 + 0.1 * 10
      Array(91., dtype=float32)
    """
    momentum = v.check_static_number("momentum", momentum, minimum=0.0)
    if momentum > 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    n = jnp.asarray(num_positives, jnp.float32)
    if axis_name is not None:
        n = lax.pmean(n, axis_name)
    new_state = momentum * jnp.asarray(state, jnp.float32) + (1 - momentum) * jnp.maximum(n, 1.0)
    return new_state, new_state
