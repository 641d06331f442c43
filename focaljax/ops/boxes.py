"""Axis-aligned box ops: format conversions, area, clipping, IoU/GIoU and the R-CNN box coder.

Boxes are arrays whose last axis holds four coordinates. `xyxy` is `(x1, y1, x2, y2)` with
`x1 <= x2` and `y1 <= y2`; `cxcywh` is `(cx, cy, w, h)`. Width is `x2 - x1` (the R-CNN convention
of detectron2 and torchvision, no `+ 1`). Every function is pure, jittable and vmappable; leading
axes are batch axes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "BoxCoder",
    "box_area",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "elementwise_giou",
    "elementwise_iou",
    "pairwise_giou",
    "pairwise_intersection",
    "pairwise_iou",
    "xyxy_to_cxcywh",
]


def check_boxes(name: str, boxes: ArrayLike) -> Array:
    """Returns `boxes` as an array, raising if its last axis does not hold 4 coordinates."""
    boxes = jnp.asarray(boxes)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} has shape {tuple(boxes.shape)}, expected (..., 4)")
    return boxes


def check_image_size(image_size: Sequence[int] | ArrayLike) -> None:
    """Raises unless `image_size` holds two entries `(height, width)`."""
    if len(image_size) != 2:
        raise ValueError(f"image_size is {image_size!r}, expected (height, width)")


def xyxy_to_cxcywh(boxes: ArrayLike) -> Array:
    """Converts `[..., 4]` boxes `(x1, y1, x2, y2)` to `(cx, cy, w, h)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> xyxy_to_cxcywh(jnp.array([[0.0, 0.0, 4.0, 2.0]])).tolist()
      [[2.0, 1.0, 4.0, 2.0]]
    """
    boxes = check_boxes("boxes", boxes)
    x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes: ArrayLike) -> Array:
    """Converts `[..., 4]` boxes `(cx, cy, w, h)` to `(x1, y1, x2, y2)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> cxcywh_to_xyxy(jnp.array([[2.0, 1.0, 4.0, 2.0]])).tolist()
      [[0.0, 0.0, 4.0, 2.0]]
    """
    boxes = check_boxes("boxes", boxes)
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def box_area(boxes: ArrayLike) -> Array:
    """Area `(x2 - x1) * (y2 - y1)` of `[..., 4]` xyxy boxes, shape `[...]`.

    A side with `x2 < x1` (or `y2 < y1`) counts as length 0, so malformed boxes have area 0 instead
    of a negative area that would push IoU outside [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> box_area(jnp.array([[0.0, 0.0, 4.0, 2.0], [3.0, 3.0, 1.0, 5.0]])).tolist()  # 2nd: x2 < x1
      [8.0, 0.0]
    """
    boxes = check_boxes("boxes", boxes)
    width = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0)
    height = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0)
    return width * height


def clip_boxes(boxes: ArrayLike, image_size: Sequence[int] | ArrayLike) -> Array:
    """Clips `[..., 4]` xyxy boxes to the image: x to `[0, width]`, y to `[0, height]`.

    Args:
      boxes: `[..., 4]` xyxy boxes.
      image_size: `(height, width)`; Python numbers or a traced `[2]` array (per-image sizes under
        vmap).

    Returns:
      The clipped boxes, of the shape and dtype of `boxes`.

    Examples:
      >>> import jax.numpy as jnp
      >>> clip_boxes(jnp.array([[-5.0, 2.0, 40.0, 30.0]]), (24, 32)).tolist()
      [[0.0, 2.0, 32.0, 24.0]]
    """
    boxes = check_boxes("boxes", boxes)
    check_image_size(image_size)
    height, width = image_size[0], image_size[1]
    x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack(
        [
            jnp.clip(x1, 0, width),
            jnp.clip(y1, 0, height),
            jnp.clip(x2, 0, width),
            jnp.clip(y2, 0, height),
        ],
        axis=-1,
    ).astype(boxes.dtype)


def _overlap(boxes1: Array, boxes2: Array) -> tuple[Array, Array, Array]:
    """Intersection, union and smallest-enclosing-box areas of broadcastable xyxy boxes."""
    top_left = jnp.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])
    sides = jnp.maximum(bottom_right - top_left, 0)
    intersection = sides[..., 0] * sides[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - intersection
    enclosing_top_left = jnp.minimum(boxes1[..., :2], boxes2[..., :2])
    enclosing_bottom_right = jnp.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enclosing_sides = jnp.maximum(enclosing_bottom_right - enclosing_top_left, 0)
    enclosing = enclosing_sides[..., 0] * enclosing_sides[..., 1]
    return intersection, union, enclosing


def _safe_ratio(numerator: Array, denominator: Array) -> Array:
    """`numerator / denominator`, and 0 where the denominator is 0 (two empty boxes)."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)


def _pairwise(boxes1: ArrayLike, boxes2: ArrayLike) -> tuple[Array, Array, Array]:
    boxes1 = check_boxes("boxes1", boxes1)
    boxes2 = check_boxes("boxes2", boxes2)
    if boxes1.ndim < 2 or boxes2.ndim < 2:
        raise ValueError(
            f"boxes1 has shape {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)}, "
            "expected [..., N, 4] and [..., M, 4]"
        )
    return _overlap(boxes1[..., :, None, :], boxes2[..., None, :, :])


def pairwise_intersection(boxes1: ArrayLike, boxes2: ArrayLike) -> Array:
    """Intersection area `|a ∩ b|` of every box in `boxes1` with every box in `boxes2`.

    Args:
      boxes1: `[..., N, 4]` xyxy boxes.
      boxes2: `[..., M, 4]` xyxy boxes; the leading axes broadcast against those of `boxes1`.

    Returns:
      `[..., N, M]` intersection areas.

    Examples:
      >>> import jax.numpy as jnp
      >>> boxes1 = jnp.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]])
      >>> boxes2 = jnp.array([[0.0, 0.0, 2.0, 2.0], [6.0, 0.0, 8.0, 2.0]])
      >>> pairwise_intersection(boxes1, boxes2).tolist()
      [[4.0, 0.0], [4.0, 0.0]]
    """
    intersection, _, _ = _pairwise(boxes1, boxes2)
    return intersection


def pairwise_iou(boxes1: ArrayLike, boxes2: ArrayLike) -> Array:
    """IoU of every box in `boxes1` with every box in `boxes2`.

    `IoU(a, b) = |a ∩ b| / |a ∪ b|`, exactly (no epsilon), so it can be compared with thresholds
    such as 0.5 without bias; a pair of empty boxes, whose union is 0, has IoU 0.

    Args:
      boxes1: `[..., N, 4]` xyxy boxes.
      boxes2: `[..., M, 4]` xyxy boxes; the leading axes broadcast against those of `boxes1`.

    Returns:
      `[..., N, M]` IoU in [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> boxes1 = jnp.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]])
      >>> boxes2 = jnp.array([[0.0, 0.0, 2.0, 2.0], [6.0, 0.0, 8.0, 2.0]])
      >>> pairwise_iou(boxes1, boxes2).tolist()
      [[1.0, 0.0], [0.5, 0.0]]
    """
    intersection, union, _ = _pairwise(boxes1, boxes2)
    return _safe_ratio(intersection, union)


def pairwise_giou(boxes1: ArrayLike, boxes2: ArrayLike) -> Array:
    """Generalized IoU of every box in `boxes1` with every box in `boxes2`.

    `GIoU(a, b) = IoU(a, b) - |C \\ (a ∪ b)| / |C|` with `C` the smallest box enclosing `a` and `b`
    (Rezatofighi et al., 2019, "Generalized Intersection over Union"). A pair whose enclosing box is
    empty has GIoU 0 (both terms are taken as 0).

    Args:
      boxes1: `[..., N, 4]` xyxy boxes.
      boxes2: `[..., M, 4]` xyxy boxes; the leading axes broadcast against those of `boxes1`.

    Returns:
      `[..., N, M]` GIoU in [-1, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> boxes1 = jnp.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]])
      >>> boxes2 = jnp.array([[0.0, 0.0, 2.0, 2.0], [6.0, 0.0, 8.0, 2.0]])
      >>> pairwise_giou(boxes1, boxes2).tolist()  # disjoint boxes: below 0, the farther the lower
      [[1.0, -0.5], [0.5, -0.25]]
    """
    intersection, union, enclosing = _pairwise(boxes1, boxes2)
    return _safe_ratio(intersection, union) - _safe_ratio(enclosing - union, enclosing)


def _elementwise(boxes1: ArrayLike, boxes2: ArrayLike) -> tuple[Array, Array, Array]:
    boxes1 = check_boxes("boxes1", boxes1)
    boxes2 = check_boxes("boxes2", boxes2)
    try:
        jnp.broadcast_shapes(boxes1.shape, boxes2.shape)
    except ValueError:
        raise ValueError(
            f"boxes1 has shape {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)}, expected "
            "broadcastable shapes"
        ) from None
    return _overlap(boxes1, boxes2)


def elementwise_iou(boxes1: ArrayLike, boxes2: ArrayLike, *, eps: float = 1e-7) -> Array:
    """IoU of aligned pairs of boxes, for losses.

    `IoU = |a ∩ b| / (|a ∪ b| + eps)`. The epsilon keeps the value and its gradient finite for
    degenerate pairs (two empty boxes, whose union is 0).

    Args:
      boxes1: `[..., 4]` xyxy boxes.
      boxes2: `[..., 4]` xyxy boxes, broadcastable against `boxes1`.
      eps: added to the union.

    Returns:
      `[...]` IoU in [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> boxes1 = jnp.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]])
      >>> boxes2 = jnp.array([[0.0, 0.0, 2.0, 2.0], [6.0, 0.0, 8.0, 2.0]])
      >>> elementwise_iou(boxes1, boxes2).tolist()  # row i of boxes1 with row i of boxes2
      [1.0, 0.0]
    """
    intersection, union, _ = _elementwise(boxes1, boxes2)
    return intersection / (union + eps)


def elementwise_giou(boxes1: ArrayLike, boxes2: ArrayLike, *, eps: float = 1e-7) -> Array:
    """Generalized IoU of aligned pairs of boxes, for the GIoU loss `1 - GIoU`.

    `GIoU = |a ∩ b| / (|a ∪ b| + eps) - (|C| - |a ∪ b|) / (|C| + eps)` with `C` the smallest box
    enclosing `a` and `b` (Rezatofighi et al., 2019). The epsilons keep the value and its gradient
    finite for degenerate pairs (empty, identical or far-apart boxes).

    Args:
      boxes1: `[..., 4]` xyxy boxes.
      boxes2: `[..., 4]` xyxy boxes, broadcastable against `boxes1`.
      eps: added to the union and to the enclosing area.

    Returns:
      `[...]` GIoU in [-1, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> boxes1 = jnp.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]])
      >>> boxes2 = jnp.array([[0.0, 0.0, 2.0, 2.0], [6.0, 0.0, 8.0, 2.0]])
      >>> elementwise_giou(boxes1, boxes2).tolist()  # the loss is 1 - GIoU
      [1.0, -0.25]
    """
    intersection, union, enclosing = _elementwise(boxes1, boxes2)
    return intersection / (union + eps) - (enclosing - union) / (enclosing + eps)


@dataclasses.dataclass(frozen=True)
class BoxCoder:
    r"""R-CNN box coding of boxes relative to anchors (Girshick et al., 2014; Ren et al., 2015).

    With anchor centre `(xa, ya)` and size `(wa, ha)` and box centre `(x, y)` and size `(w, h)`:

    .. math::
        d_x = w_x \frac{x - x_a}{w_a}, \quad d_y = w_y \frac{y - y_a}{h_a}, \quad
        d_w = w_w \log \frac{w}{w_a}, \quad d_h = w_h \log \frac{h}{h_a}.

    Decoding inverts this after clamping `dw / ww` and `dh / wh` at `bbox_xform_clip`, so that a
    wild prediction cannot overflow `exp`.

    Attributes:
      weights: `(wx, wy, ww, wh)`; `(1, 1, 1, 1)` for RetinaNet and the RPN, `(10, 10, 5, 5)` for
        the Fast R-CNN box head.
      bbox_xform_clip: upper bound of the log-scale of decoded width and height, `log(1000 / 16)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> coder = BoxCoder()
      >>> anchors = jnp.array([[0.0, 0.0, 10.0, 10.0]])
      >>> deltas = coder.encode(jnp.array([[5.0, 0.0, 15.0, 20.0]]), anchors)
      >>> [round(d, 4) for d in deltas[0].tolist()]  # moved by half a side, twice as tall
      [0.5, 0.5, 0.0, 0.6931]
      >>> coder.decode(deltas, anchors).tolist()
      [[5.0, 0.0, 15.0, 20.0]]
    """

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    bbox_xform_clip: float = math.log(1000.0 / 16)

    def __post_init__(self):
        if len(self.weights) != 4 or any(w <= 0 for w in self.weights):
            raise ValueError(f"weights is {self.weights!r}, expected four positive numbers")

    def encode(self, boxes: ArrayLike, anchors: ArrayLike) -> Array:
        """Deltas `[..., 4]` `(dx, dy, dw, dh)` that turn `anchors` into `boxes`.

        Args:
          boxes: `[..., 4]` xyxy boxes with positive width and height.
          anchors: `[..., 4]` xyxy anchors with positive width and height, broadcastable against
            `boxes`.
        """
        boxes = check_boxes("boxes", boxes)
        anchors = check_boxes("anchors", anchors)
        x, y, w, h = jnp.moveaxis(xyxy_to_cxcywh(boxes), -1, 0)
        xa, ya, wa, ha = jnp.moveaxis(xyxy_to_cxcywh(anchors), -1, 0)
        wx, wy, ww, wh = self.weights
        return jnp.stack(
            [
                wx * (x - xa) / wa,
                wy * (y - ya) / ha,
                ww * jnp.log(w / wa),
                wh * jnp.log(h / ha),
            ],
            axis=-1,
        )

    def decode(self, deltas: ArrayLike, anchors: ArrayLike) -> Array:
        """Boxes `[..., 4]` xyxy obtained by applying `deltas` `(dx, dy, dw, dh)` to `anchors`.

        Args:
          deltas: `[..., 4]` encoded deltas.
          anchors: `[..., 4]` xyxy anchors, broadcastable against `deltas`.
        """
        deltas = check_boxes("deltas", deltas)
        anchors = check_boxes("anchors", anchors)
        xa, ya, wa, ha = jnp.moveaxis(xyxy_to_cxcywh(anchors), -1, 0)
        wx, wy, ww, wh = self.weights
        dx, dy, dw, dh = jnp.moveaxis(deltas, -1, 0)
        x = dx / wx * wa + xa
        y = dy / wy * ha + ya
        w = jnp.exp(jnp.minimum(dw / ww, self.bbox_xform_clip)) * wa
        h = jnp.exp(jnp.minimum(dh / wh, self.bbox_xform_clip)) * ha
        return cxcywh_to_xyxy(jnp.stack([x, y, w, h], axis=-1))
