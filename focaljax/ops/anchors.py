"""Anchor boxes for a feature pyramid (FPN, Lin et al. 2017; RetinaNet, Lin et al. 2017).

Level `l` has stride `2**l` and a feature map of `ceil(H / 2**l) x ceil(W / 2**l)` cells, which is
what a stack of stride-2 'SAME' convolutions produces. Cell `(y, x)` is centred at
`((x + 0.5) * stride, (y + 0.5) * stride)` in image pixels, the centre of the input pixels it
covers. Each cell carries `len(scales) * len(aspect_ratios)` anchors of base size `s` (default
`4 * stride`): for scale `k` and aspect ratio `r = height / width` the anchor has area
`(s * k)**2`, width `s * k / sqrt(r)` and height `s * k * sqrt(r)`. Coordinates are not rounded.

The anchors are returned flattened in the order (level, y, x, anchor), anchor index
`scale_index * len(aspect_ratios) + ratio_index`, so a head output of shape `[h, w, A * C]`
reshaped to `[h * w * A, C]` lines up with them level by level.

The model zoos place their anchors differently (`convention=`), which converted COCO weights
need (`focaljax.models.zoo`):

* `"focaljax"` (the default): as above.
* `"detectron2"`: cells centred at `(x * stride, y * stride)`, detectron2's
  `ANCHOR_GENERATOR.OFFSET` of 0.0; sizes and coordinates as above.
* `"torchvision"`: torchvision's `AnchorGenerator`: each size `s * k` truncated to an integer (the
  `int(x * 2 ** (1 / 3))` of its RetinaNet; the FPN RPN's sizes are integers already), the anchor
  corners around the cell rounded to integers (half to even, `torch.round`), cells at
  `(x * stride_x, y * stride_y)` with the stride of each axis `image size // cells` (integer
  division: it is `2**l` only where the size divides by `2**l`, so P6 and P7 of an input padded to
  a multiple of 32 are not).

RetinaNet uses the defaults (P3-P7, 9 anchors per cell). The FPN RPN uses one size per level:
`min_level=2, max_level=6, anchor_sizes=(32, 64, 128, 256, 512), scales=(1.0,)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CONVENTIONS",
    "DEFAULT_ASPECT_RATIOS",
    "DEFAULT_SCALES",
    "generate_anchors",
    "level_sizes",
    "num_anchors_per_level",
    "num_anchors_per_location",
]

DEFAULT_SCALES = (2**0, 2 ** (1 / 3), 2 ** (2 / 3))
"""RetinaNet's anchor scales: multipliers of the base size, three per octave."""
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
"""RetinaNet's anchor aspect ratios, `height / width`."""
CONVENTIONS = ("focaljax", "detectron2", "torchvision")
"""Where the anchors of a cell are centred and how they are rounded (see the module docstring)."""


def _check_levels(min_level: int, max_level: int) -> None:
    if not 0 <= min_level <= max_level:
        raise ValueError(
            f"min_level={min_level} and max_level={max_level}, expected 0 <= min_level <= max_level"
        )


def _check_positive(name: str, values: Sequence[float]) -> None:
    if len(values) == 0 or any(v <= 0 for v in values):
        raise ValueError(f"{name} is {tuple(values)!r}, expected a non-empty sequence of positives")


def level_sizes(
    image_size: tuple[int, int], min_level: int = 3, max_level: int = 7
) -> list[tuple[int, int]]:
    """Feature map size `(ceil(H / 2**l), ceil(W / 2**l))` of each level `min_level..max_level`.

    Examples:
      >>> level_sizes((100, 64), min_level=3, max_level=5)
      [(13, 8), (7, 4), (4, 2)]
    """
    if len(image_size) != 2 or any(int(s) != s or s <= 0 for s in image_size):
        raise ValueError(
            f"image_size is {image_size!r}, expected two positive ints (height, width)"
        )
    _check_levels(min_level, max_level)
    height, width = image_size
    return [
        (math.ceil(height / 2**level), math.ceil(width / 2**level))
        for level in range(min_level, max_level + 1)
    ]


def num_anchors_per_location(
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
) -> int:
    """Anchors per feature-map cell, `len(scales) * len(aspect_ratios)` (9 for RetinaNet).

    Examples:
      >>> num_anchors_per_location(), num_anchors_per_location(scales=(1.0,))
      (9, 3)
    """
    return len(scales) * len(aspect_ratios)


def num_anchors_per_level(
    image_size: tuple[int, int],
    *,
    min_level: int = 3,
    max_level: int = 7,
    scales: Sequence[float] = DEFAULT_SCALES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
) -> tuple[int, ...]:
    """Number of anchors of each level, in the order of `generate_anchors`; they sum to `A`.

    Examples:
      >>> num_anchors_per_level((64, 64), min_level=3, max_level=4)  # 8x8 and 4x4 cells, 9 each
      (576, 144)
    """
    per_location = num_anchors_per_location(scales=scales, aspect_ratios=aspect_ratios)
    return tuple(h * w * per_location for h, w in level_sizes(image_size, min_level, max_level))


def check_per_anchor_outputs(
    num_anchors: int, box_deltas: Any, anchors: Any, anchors_per_level: Sequence[int]
) -> None:
    """Raises ValueError unless a head's `box_deltas [A, 4]` and the `anchors [A, 4]` match its
    `A = num_anchors` scores, and `anchors_per_level` splits them into levels (the inputs of
    the per-level inference of `retinanet_postprocess` and `rpn_proposals`)."""
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


def _cell_anchors(
    size: float, scales: Sequence[float], aspect_ratios: Sequence[float], convention: str
) -> np.ndarray:
    """`[len(scales) * len(aspect_ratios), 4]` anchors centred at the origin, scale-major."""
    scaled = size * np.asarray(scales, np.float64)[:, None]
    sqrt_ratios = np.sqrt(np.asarray(aspect_ratios, np.float64))[None, :]
    if convention == "torchvision":
        # In float32, as torchvision computes them, so that the rounding below matches its.
        scaled = np.trunc(scaled).astype(np.float32)
        sqrt_ratios = np.sqrt(np.asarray(aspect_ratios, np.float32))[None, :]
        half_w = (np.float32(1) / sqrt_ratios * scaled).reshape(-1) / np.float32(2)
        half_h = (sqrt_ratios * scaled).reshape(-1) / np.float32(2)
        cell = np.stack([-half_w, -half_h, half_w, half_h], axis=-1)
        return np.round(cell).astype(np.float64)
    half_w = (scaled / sqrt_ratios / 2).reshape(-1)
    half_h = (scaled * sqrt_ratios / 2).reshape(-1)
    return np.stack([-half_w, -half_h, half_w, half_h], axis=-1)


def generate_anchors(
    image_size: tuple[int, int],
    *,
    min_level: int = 3,
    max_level: int = 7,
    anchor_sizes: Sequence[float] | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    convention: str = "focaljax",
) -> np.ndarray:
    """All anchors of a feature pyramid, as a constant NumPy array.

    Args:
      image_size: `(height, width)` of the (padded) input image in pixels.
      min_level: finest pyramid level; stride `2**min_level`.
      max_level: coarsest pyramid level.
      anchor_sizes: base size of each level, one per level; default `4 * 2**level`.
      scales: multipliers of the base size, the same at every level.
      aspect_ratios: `height / width` of the anchors.
      convention: one of `CONVENTIONS`, where the cells' anchors are centred and how they are
        rounded (the module docstring).

    Returns:
      float32 `[A, 4]` xyxy anchors in image pixels, ordered (level, y, x, anchor) with
      `A = sum(num_anchors_per_level(...))`.

    Examples:
      >>> anchors = generate_anchors((16, 16), min_level=3, max_level=3, scales=(1.0,),
      ...                            aspect_ratios=(1.0,))
      >>> anchors.shape  # 2x2 cells of stride 8, one anchor each
      (4, 4)
      >>> anchors[0].tolist(), anchors[3].tolist()  # size 4 * 8, centred at 4 and at 12
      ([-12.0, -12.0, 20.0, 20.0], [-4.0, -4.0, 28.0, 28.0])
      >>> generate_anchors((64, 64)).shape  # RetinaNet's P3-P7, 9 anchors per cell
      (774, 4)
    """
    sizes = level_sizes(image_size, min_level, max_level)
    levels = range(min_level, max_level + 1)
    if anchor_sizes is None:
        anchor_sizes = [4 * 2**level for level in levels]
    if len(anchor_sizes) != len(levels):
        raise ValueError(
            f"anchor_sizes has {len(anchor_sizes)} entries, expected one per level "
            f"{min_level}..{max_level} ({len(levels)})"
        )
    _check_positive("anchor_sizes", anchor_sizes)
    _check_positive("scales", scales)
    _check_positive("aspect_ratios", aspect_ratios)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention is {convention!r}, expected one of {CONVENTIONS}")

    per_level = []
    for level, (height, width), size in zip(levels, sizes, anchor_sizes, strict=True):
        stride_y = stride_x = 2**level
        offset = 0.5 if convention == "focaljax" else 0.0
        if convention == "torchvision":
            stride_y, stride_x = image_size[0] // height, image_size[1] // width
        centre_x = (np.arange(width, dtype=np.float64) + offset) * stride_x
        centre_y = (np.arange(height, dtype=np.float64) + offset) * stride_y
        cx, cy = np.meshgrid(centre_x, centre_y)
        centres = np.stack([cx, cy, cx, cy], axis=-1)
        anchors = centres[:, :, None, :] + _cell_anchors(size, scales, aspect_ratios, convention)
        per_level.append(anchors.reshape(-1, 4))
    return np.concatenate(per_level).astype(np.float32)
