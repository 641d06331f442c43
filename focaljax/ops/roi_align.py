"""RoIAlign (He et al., 2017, "Mask R-CNN") on one feature map or on a feature pyramid.

Each box is cut into `output_size` bins; a bin's value is the mean of bilinear samples of the
feature map taken on a regular `grid_h x grid_w` grid inside the bin. With `aligned=True` a box
`(x1, y1, x2, y2)` in image pixels becomes `(x1 * s - 0.5, ..., y2 * s - 0.5)` in feature pixels
(`s = spatial_scale`), so that the continuous coordinate `x` samples the feature cell centred at
`x`; this is `aligned=True` of detectron2's `ROIAlign` and torchvision's `roi_align`, whose
results (and treatment of samples near and beyond the border) these functions reproduce.
`aligned=False` is the original Mask R-CNN convention (no half-pixel shift, boxes at least 1x1).

The sampling grid is `sampling_ratio x sampling_ratio`, or with `sampling_ratio=0` adaptive per
box: `ceil(box_height / output_height) x ceil(box_width / output_width)` (box size in feature
pixels), optionally capped at `max_sampling_ratio`. The loop over samples runs to the largest
number of samples a bin of any box in the call has (`grid_h * grid_w`, each box walking its own
grid row by row), so one huge box makes every box pay for its grid; the cap bounds that.

Everything is pure `jax.numpy`: jittable, vmappable over images, and reverse-mode differentiable
with respect to the features (through a hand-written transpose, because the sample loop has a
data-dependent length; `jax.jvp` is not supported). Boxes get no gradient, as in torchvision.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from focaljax.ops.boxes import box_area, check_boxes

__all__ = ["assign_boxes_to_levels", "multilevel_roi_align", "roi_align"]


def _check_output_size(output_size: Sequence[int]) -> tuple[int, int]:
    if len(output_size) != 2 or any(not isinstance(s, int) or s < 1 for s in output_size):
        raise ValueError(f"output_size is {output_size!r}, expected two positive ints (h, w)")
    return int(output_size[0]), int(output_size[1])


def _check_sampling(sampling_ratio: int, max_sampling_ratio: int | None) -> None:
    if not isinstance(sampling_ratio, int) or sampling_ratio < 0:
        raise ValueError(
            f"sampling_ratio is {sampling_ratio!r}, expected a positive int or 0 (adaptive)"
        )
    if max_sampling_ratio is not None and (
        not isinstance(max_sampling_ratio, int) or max_sampling_ratio < 1
    ):
        raise ValueError(f"max_sampling_ratio is {max_sampling_ratio!r}, expected a positive int")


def _check_features(name: str, features: Array) -> None:
    if features.ndim != 3:
        raise ValueError(
            f"{name} has shape {tuple(features.shape)}, expected [H, W, C] for one image "
            "(vmap for a batch)"
        )


def _axis_weights(coord: Array, size: Array) -> tuple[Array, Array, Array, Array]:
    """Bilinear taps along one axis: `(low, high, weight_low, weight_high)` per coordinate.

    torchvision's border rule: a sample more than one cell outside `[0, size - 1]` reads 0, one
    within a cell of the border is clamped to the border cell.
    """
    inside = (coord >= -1.0) & (coord <= size)
    coord = jnp.maximum(coord, 0.0)
    low = jnp.floor(coord).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    frac = jnp.where(at_end, 0.0, coord - low)
    return low, high, jnp.where(inside, 1.0 - frac, 0.0), jnp.where(inside, frac, 0.0)


class _Geometry(NamedTuple):
    """Where each box samples: its top-left corner and bin size in feature pixels, its sampling
    grid, and the size and first flat row of the map it reads."""

    y1: Array
    x1: Array
    bin_h: Array
    bin_w: Array
    grid_h: Array
    grid_w: Array
    height: Array
    width: Array
    offset: Array


def _taps(
    geometry: _Geometry, output_size: tuple[int, int], sample: Array
) -> list[tuple[Array, Array]]:
    """The four bilinear taps `(flat row [K, out_h, out_w], weight [K, out_h, out_w])` of sample
    number `sample` of every bin of every box, counted row by row over the box's own grid
    (`iy = sample // grid_w`, `ix = sample % grid_w`); weight 0 where the box's grid has fewer
    samples."""
    g = geometry
    bins_y = jnp.arange(output_size[0], dtype=jnp.float32)
    bins_x = jnp.arange(output_size[1], dtype=jnp.float32)
    safe_w = jnp.maximum(g.grid_w, 1)
    iy = (sample // safe_w).astype(jnp.float32)[:, None]
    ix = (sample % safe_w).astype(jnp.float32)[:, None]
    grid_h = jnp.maximum(g.grid_h, 1).astype(jnp.float32)[:, None]
    grid_w = safe_w.astype(jnp.float32)[:, None]
    y = g.y1[:, None] + bins_y * g.bin_h[:, None] + (iy + 0.5) * g.bin_h[:, None] / grid_h
    x = g.x1[:, None] + bins_x * g.bin_w[:, None] + (ix + 0.5) * g.bin_w[:, None] / grid_w
    y_low, y_high, wy_low, wy_high = _axis_weights(y, g.height[:, None])
    x_low, x_high, wx_low, wx_high = _axis_weights(x, g.width[:, None])
    in_grid = (sample < g.grid_h * g.grid_w).astype(jnp.float32)[:, None, None]
    taps = []
    for y_index, wy in ((y_low, wy_low), (y_high, wy_high)):
        rows = g.offset[:, None] + y_index * g.width[:, None]
        for x_index, wx in ((x_low, wx_low), (x_high, wx_high)):
            taps.append(
                (rows[:, :, None] + x_index[:, None, :], in_grid * wy[:, :, None] * wx[:, None, :])
            )
    return taps


def _sample_loop(geometry: _Geometry, body, init):
    """Runs `body(sample, carry)` over the samples of the largest grid actually used, each box
    walking its own `grid_h x grid_w` samples (so an elongated box costs its own grid, not the
    product of the tallest and the widest grid in the call).

    The trip count is data-dependent (so a small box costs little under a large adaptive cap),
    which `lax.fori_loop` can only do as a `while_loop`; reverse-mode differentiation therefore
    goes through the hand-written transpose of `_pool` below.
    """
    return lax.fori_loop(0, _trip_count(geometry.grid_h * geometry.grid_w), body, init)


@jax.custom_batching.custom_vmap
def _trip_count(samples_per_box: Array) -> Array:
    """The sample loop's trip count: the most samples any box has.

    Under `vmap` (over images) the count is the largest over the whole batch and stays unbatched:
    a batched trip count would make the loop carry a per-image "still running" mask and select
    the whole carry (the pooled features, or the features' gradient) through it at every step,
    which costs more than the samples themselves. The extra steps an image then runs add
    weight-0 taps, so every image's result is the same.
    """
    return samples_per_box.max(initial=0)


@_trip_count.def_vmap
def _trip_count_vmap(axis_size: int, in_batched: list[bool], samples_per_box: Array):
    del axis_size, in_batched
    return samples_per_box.max(initial=0), False


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pool(output_size: tuple[int, int], flat_features: Array, geometry: _Geometry) -> Array:
    """Sum over each bin's samples of the bilinearly interpolated features, `[K, oh, ow, C]`."""
    num_boxes, channels = geometry.y1.shape[0], flat_features.shape[1]

    def add(sample, total):
        for rows, weight in _taps(geometry, output_size, sample):
            total = total + weight[..., None] * flat_features[rows]
        return total

    return _sample_loop(
        geometry, add, jnp.zeros([num_boxes, *output_size, channels], flat_features.dtype)
    )


def _pool_forward(output_size, flat_features, geometry):
    return _pool(output_size, flat_features, geometry), (geometry, flat_features.shape[0])


def _pool_backward(output_size, residuals, cotangent):
    # `_pool` is linear in the features: its transpose scatters each tap's cotangent back.
    geometry, num_rows = residuals
    channels = cotangent.shape[-1]

    def add(sample, grad):
        for rows, weight in _taps(geometry, output_size, sample):
            grad = grad.at[rows.reshape(-1)].add(
                (weight[..., None] * cotangent).reshape(-1, channels)
            )
        return grad

    grad = _sample_loop(geometry, add, jnp.zeros([num_rows, channels], cotangent.dtype))
    return grad, None


_pool.defvjp(_pool_forward, _pool_backward)


def _roi_align_flat(
    flat_features: Array,
    boxes: Array,
    *,
    height: Array,
    width: Array,
    offset: Array,
    spatial_scale: Array,
    output_size: tuple[int, int],
    sampling_ratio: int,
    max_sampling_ratio: int | None,
    aligned: bool,
) -> Array:
    """RoIAlign of each box `k` on the `height[k] x width[k]` map stored row-major at rows
    `offset[k]...` of `flat_features` `[sum of H * W, C]`."""
    out_h, out_w = output_size
    num_boxes = boxes.shape[0]
    shift = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = jnp.moveaxis(boxes * spatial_scale[:, None] - shift, -1, 0)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    if sampling_ratio > 0:
        grid_h = grid_w = jnp.full([num_boxes], sampling_ratio, jnp.int32)
    else:
        # Without a cap, a bound no real grid reaches keeps the int32 cast defined.
        cap = max_sampling_ratio or 2**30
        grid_h = jnp.clip(jnp.ceil(bin_h), 0, cap).astype(jnp.int32)
        grid_w = jnp.clip(jnp.ceil(bin_w), 0, cap).astype(jnp.int32)
    geometry = _Geometry(y1, x1, bin_h, bin_w, grid_h, grid_w, height, width, offset)
    total = _pool(output_size, flat_features, lax.stop_gradient(geometry))
    # Where the adaptive grid is empty (a zero-size box) torchvision returns 0; so does this.
    count = jnp.maximum(grid_h * grid_w, 1).astype(jnp.float32)
    return total / count[:, None, None, None]


def roi_align(
    features: ArrayLike,
    boxes: ArrayLike,
    *,
    output_size: Sequence[int] = (7, 7),
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
    max_sampling_ratio: int | None = None,
) -> Array:
    r"""RoIAlign of `boxes` on one feature map (see the module docstring).

    For bin `(i, j)` of box `k`, with `(y1, x1)` the box's top-left corner in feature pixels,
    `(bh, bw)` its bin size and `(gh, gw)` its sampling grid:

    .. math::
        \mathrm{out}[k, i, j] = \frac{1}{g_h g_w} \sum_{a < g_h, \, b < g_w}
        \mathrm{bilinear}(\mathrm{features}, y_{ia}, x_{jb}), \quad
        y_{ia} = y_1 + \left(i + \frac{a + 1/2}{g_h}\right) b_h, \quad
        x_{jb} = x_1 + \left(j + \frac{b + 1/2}{g_w}\right) b_w.

    Args:
      features: `[H, W, C]` feature map of one image.
      boxes: `[K, 4]` xyxy boxes in image pixels.
      output_size: `(out_h, out_w)` bins per box.
      spatial_scale: feature pixels per image pixel, `1 / stride` (e.g. 1/16).
      sampling_ratio: samples per bin along each axis; 0 for the adaptive grid.
      aligned: shift by half a pixel (detectron2's `ROIAlignV2`); False for the original RoIAlign.
      max_sampling_ratio: cap of the adaptive grid along each axis; default no cap (torchvision).

    Returns:
      `[K, out_h, out_w, C]` pooled features, in the dtype of `features`.

    Examples:
      >>> import jax.numpy as jnp
      >>> features = jnp.arange(16.0).reshape(4, 4, 1)  # value 4 y + x at cell (y, x)
      >>> pooled = roi_align(features, jnp.array([[0.0, 0.0, 4.0, 4.0]]), output_size=(2, 2),
      ...                    spatial_scale=1.0)
      >>> pooled[0, :, :, 0].tolist()  # the mean of each 2x2 quarter
      [[2.5, 4.5], [10.5, 12.5]]
    """
    features = jnp.asarray(features)
    _check_features("features", features)
    boxes = check_boxes("boxes", boxes)
    if boxes.ndim != 2:
        raise ValueError(f"boxes has shape {tuple(boxes.shape)}, expected [K, 4]")
    output_size = _check_output_size(output_size)
    _check_sampling(sampling_ratio, max_sampling_ratio)
    height, width, channels = features.shape
    num_boxes = boxes.shape[0]
    if height * width == 0 or num_boxes == 0:
        return jnp.zeros([num_boxes, *output_size, channels], features.dtype)
    pooled = _roi_align_flat(
        features.reshape(height * width, channels).astype(jnp.float32),
        boxes.astype(jnp.float32),
        height=jnp.full([num_boxes], height, jnp.int32),
        width=jnp.full([num_boxes], width, jnp.int32),
        offset=jnp.zeros([num_boxes], jnp.int32),
        spatial_scale=jnp.full([num_boxes], spatial_scale, jnp.float32),
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        max_sampling_ratio=max_sampling_ratio,
        aligned=aligned,
    )
    return pooled.astype(features.dtype)


def assign_boxes_to_levels(
    boxes: ArrayLike,
    *,
    min_level: int,
    max_level: int,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
) -> Array:
    """Pyramid level of each box, eq. 1 of the FPN paper (Lin et al., 2017).

    `level = floor(canonical_level + log2(sqrt(area) / canonical_size))`, clamped to
    `[min_level, max_level]`: a 224x224 box goes to level 4 (stride 16), as an ImageNet-sized
    object did on the single-scale C4 feature map.

    Args:
      boxes: `[..., 4]` xyxy boxes in image pixels.
      min_level: finest level.
      max_level: coarsest level.
      canonical_size: box size that maps to `canonical_level`.
      canonical_level: level of a `canonical_size` box.

    Returns:
      int32 `[...]` level of each box.

    Examples:
      >>> import jax.numpy as jnp
      >>> boxes = jnp.array([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 32.0, 32.0],
      ...                    [0.0, 0.0, 1000.0, 1000.0]])
      >>> assign_boxes_to_levels(boxes, min_level=2, max_level=5).tolist()
      [4, 2, 5]
    """
    boxes = check_boxes("boxes", boxes)
    if not min_level <= max_level:
        raise ValueError(f"min_level={min_level} > max_level={max_level}")
    size = jnp.sqrt(box_area(boxes.astype(jnp.float32)))
    # An empty box has log2(0) = -inf and goes to min_level.
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_size))
    return jnp.clip(level, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(
    features: Mapping[int, ArrayLike] | Sequence[ArrayLike],
    boxes: ArrayLike,
    *,
    min_level: int,
    max_level: int,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    output_size: Sequence[int] = (7, 7),
    sampling_ratio: int = 2,
    aligned: bool = True,
    max_sampling_ratio: int | None = None,
) -> Array:
    """RoIAlign of each box on the pyramid level chosen by `assign_boxes_to_levels`.

    Level `l` has stride `2**l` (spatial scale `2**-l`). All levels are pooled in one pass over a
    flat concatenation of the maps, so the cost is that of one `roi_align`, not one per level.

    Args:
      features: level -> `[H_l, W_l, C]` map, as a mapping with keys `min_level..max_level` or a
        sequence whose entry `i` is level `min_level + i`.
      boxes: `[K, 4]` xyxy boxes in image pixels.
      min_level: finest level.
      max_level: coarsest level.
      canonical_size: see `assign_boxes_to_levels`.
      canonical_level: see `assign_boxes_to_levels`.
      output_size: see `roi_align`.
      sampling_ratio: see `roi_align`.
      aligned: see `roi_align`.
      max_sampling_ratio: see `roi_align`.

    Returns:
      `[K, out_h, out_w, C]` pooled features, in the dtype of the features.

    Examples:
      >>> import jax.numpy as jnp
      >>> features = {2: jnp.ones((8, 8, 1)), 3: jnp.full((4, 4, 1), 2.0)}  # strides 4 and 8
      >>> boxes = jnp.array([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]])
      >>> pooled = multilevel_roi_align(features, boxes, min_level=2, max_level=3,
      ...                               canonical_size=16.0, canonical_level=2, output_size=(1, 1))
      >>> pooled.reshape(-1).tolist()  # the 16 px box is pooled from level 2, the 32 px one from 3
      [1.0, 2.0]
    """
    levels = list(range(min_level, max_level + 1))
    if isinstance(features, Mapping):
        if sorted(features) != levels:
            raise ValueError(
                f"features has levels {sorted(features)}, expected {min_level}..{max_level}"
            )
        maps = [jnp.asarray(features[level]) for level in levels]
    else:
        if len(features) != len(levels):
            raise ValueError(
                f"features has {len(features)} maps, expected one per level "
                f"{min_level}..{max_level} ({len(levels)})"
            )
        maps = [jnp.asarray(f) for f in features]
    for level, feature_map in zip(levels, maps, strict=True):
        _check_features(f"features[{level}]", feature_map)
    if len({(f.shape[-1], f.dtype) for f in maps}) != 1:
        raise ValueError(
            "features have channels/dtypes "
            f"{[(f.shape[-1], str(f.dtype)) for f in maps]}, expected the same at every level"
        )
    boxes = check_boxes("boxes", boxes)
    if boxes.ndim != 2:
        raise ValueError(f"boxes has shape {tuple(boxes.shape)}, expected [K, 4]")
    output_size = _check_output_size(output_size)
    _check_sampling(sampling_ratio, max_sampling_ratio)
    channels, dtype = maps[0].shape[-1], maps[0].dtype
    num_boxes = boxes.shape[0]
    sizes = [f.shape[:2] for f in maps]
    if num_boxes == 0 or any(h * w == 0 for h, w in sizes):
        return jnp.zeros([num_boxes, *output_size, channels], dtype)

    level = assign_boxes_to_levels(
        boxes,
        min_level=min_level,
        max_level=max_level,
        canonical_size=canonical_size,
        canonical_level=canonical_level,
    )
    index = level - min_level
    offsets = [0]
    for h, w in sizes[:-1]:
        offsets.append(offsets[-1] + h * w)
    pooled = _roi_align_flat(
        jnp.concatenate([f.reshape(-1, channels) for f in maps]).astype(jnp.float32),
        boxes.astype(jnp.float32),
        height=jnp.asarray([h for h, _ in sizes], jnp.int32)[index],
        width=jnp.asarray([w for _, w in sizes], jnp.int32)[index],
        offset=jnp.asarray(offsets, jnp.int32)[index],
        spatial_scale=jnp.asarray([2.0**-lvl for lvl in levels], jnp.float32)[index],
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        max_sampling_ratio=max_sampling_ratio,
        aligned=aligned,
    )
    return pooled.astype(dtype)
