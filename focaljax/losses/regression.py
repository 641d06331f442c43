"""Box-regression losses, elementwise."""

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from focaljax.losses import _validation as v
from focaljax.ops import boxes as box_ops


def smooth_l1_loss(pred: ArrayLike, target: ArrayLike, *, beta: float = 1.0) -> jax.Array:
    r"""Smooth L1 (Huber-like) loss, elementwise, in detectron2's convention.

    .. math::
      \ell(d) = \begin{cases} 0.5\, d^2 / \beta & |d| < \beta \\ |d| - 0.5\, \beta & \text{else}
      \end{cases}, \quad d = \text{pred} - \text{target}.

    `beta=1` is Fast R-CNN's smooth L1 (the RPN regression loss of seed 002); `beta=0` is exactly
    L1, detectron2's RetinaNet default. Note Huber loss with `delta` equals `delta * smooth_l1` with
    `beta = delta`.

    Args:
      pred: float array, e.g. `[anchors, 4]` box deltas.
      target: array of the shape of `pred`.
      beta: >= 0, the point where the quadratic becomes linear.

    Returns:
      The loss, of the shape and dtype of `pred`.

    Examples:
      >>> smooth_l1_loss(jnp.array([0.0, 0.5, 2.0]), jnp.zeros(3), beta=1.0)
      Array([0.   , 0.125, 1.5  ], dtype=float32)
      >>> smooth_l1_loss(jnp.array([0.0, 0.5, 2.0]), jnp.zeros(3), beta=0.0)  # L1
      Array([0. , 0.5, 2. ], dtype=float32)
    """
    v.check_floating("pred", pred)
    v.check_same_shape("target", target, "pred", pred)
    beta = v.check_static_number("beta", beta, minimum=0.0)
    return _smooth_l1_loss(pred, target, beta)


@functools.partial(jax.jit, static_argnums=(2,))
def _smooth_l1_loss(pred, target, beta):
    dtype = v.compute_dtype(pred.dtype)
    d = jnp.abs(pred.astype(dtype) - jnp.asarray(target).astype(dtype))
    if beta == 0:
        return d.astype(pred.dtype)
    loss = jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return loss.astype(pred.dtype)


def giou_loss(boxes1: ArrayLike, boxes2: ArrayLike) -> jax.Array:
    r"""Generalized-IoU loss `1 - GIoU(b1, b2)` for aligned pairs of xyxy boxes.

    .. math:: \mathcal{L} = 1 - \mathrm{IoU} + |C \setminus (B_1 \cup B_2)| / |C|

    with `C` the smallest box enclosing both (Rezatofighi et al., CVPR 2019). Finite, with a finite
    gradient, for degenerate boxes too. Values lie in [0, 2].

    Args:
      boxes1, boxes2: float arrays `[..., 4]` of (x1, y1, x2, y2), of the same shape.

    Returns:
      The loss, shape `[...]`, dtype of `boxes1`.

    Examples:
      >>> box = jnp.array([0.0, 0.0, 2.0, 2.0])
      >>> giou_loss(jnp.stack([box, box]), jnp.array([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]]))
      Array([0.       , 0.6666666], dtype=float32)
      >>> giou_loss(jnp.array([0.0, 0.0, 1.0, 1.0]), jnp.array([2.0, 0.0, 3.0, 1.0]))  # Apart.
      Array(1.3333334, dtype=float32)
    """
    v.check_floating("boxes1", boxes1)
    v.check_same_shape("boxes2", boxes2, "boxes1", boxes1)
    if v.shape_of(boxes1)[-1:] != (4,):
        raise ValueError(f"boxes1 has shape {v.shape_of(boxes1)}, expected (..., 4)")
    dtype = v.compute_dtype(v.dtype_of(boxes1))
    giou = box_ops.elementwise_giou(jnp.asarray(boxes1, dtype), jnp.asarray(boxes2, dtype))
    return (1 - giou).astype(v.dtype_of(boxes1))
