"""Training augmentations of the tf.data pipeline beyond its flip, scale jitter and crop.

Geometric ones act on the decoded image (uint8 `[h, w, 3]`) and its boxes (float32 `[N, 4]`,
normalized `ymin, xmin, ymax, xmax`, TFDS's layout), before the pipeline resizes it: `mosaic`
(4 images made one, on a canvas of the batch's image size), then `box_safe_crop`, `flip_up_down`,
`rotate90`. Photometric ones act on the resized image (float32
pixels in [0, 255]) and leave the boxes alone: `color_jitter`, `jpeg_recompress`. Every draw is
stateless, from a key that `random_augment` derives from the pipeline's per-position key, so that
a resumed pipeline yields the same batches. Everything works on images of any size; the pipeline
resizes and pads afterwards, so that batch shapes stay fixed (a mosaic's canvas is the batch's
image size).

`Augmentations()` is every one of them off: the pipeline then runs exactly as without this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

from focaljax.errors import ConfigError

# Candidate windows of `box_safe_crop`, drawn at once; the first acceptable one is taken.
NUM_CROP_CANDIDATES = 16
# ITU-R BT.601 luma, torchvision's and tf.image's grayscale.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# The range of a mosaic's centre, as a fraction of each side of the canvas: YOLOv4's (darknet's
# load_data_mosaic cuts at 20-80%), so that each of the 4 images keeps at least a fifth of a side.
MOSAIC_CENTER_RANGE = (0.2, 0.8)
# Keys folded from the pipeline's per-position key; the flip, scale jitter and crop of the
# pipeline split that key into three and are unchanged by these.
_KEY_TAGS = {"crop": 101, "vertical_flip": 102, "rotate90": 103, "color": 104, "jpeg": 105,
             "mosaic": 106}


@dataclasses.dataclass(frozen=True)
class Augmentations:
    """The settings of the augmentations of this module; the defaults are all off.

    Attributes:
      vertical_flip: flip up-down with probability 1/2.
      rotate90: rotate by k * 90 degrees counter-clockwise, k uniform in {0, 1, 2, 3}.
      brightness, contrast, saturation: strength s of a factor f uniform in [1 - s, 1 + s]
        (torchvision's ColorJitter): pixels x -> f x; x -> m + f (x - m) with m the mean gray of
        the image; x -> g + f (x - g) with g the pixel's gray. 0 is off.
      hue: a hue shift uniform in [-hue, hue] turns (in HSV, hue in [0, 1)); 0 is off, at most 0.5.
      jpeg_quality: (low, high), JPEG re-compression at a quality uniform in [low, high]
        (integers in 1..100), or None for none.
      safe_crop: (low, high), a box-safe random crop whose height and width are each a fraction
        of the image's, uniform in [low, high] (in (0, 1]), or None for none.
      safe_crop_min_visible: the smallest fraction of an object's box area that a crop may keep
        (`box_safe_crop`), and that a mosaic keeps (`mosaic`: objects cut below it are dropped).
      mosaic: the probability that a training image is a mosaic (`mosaic`) of itself and the next
        3 images of the pipeline's stream; 0 is off.
    """

    vertical_flip: bool = False
    rotate90: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    jpeg_quality: tuple[int, int] | None = None
    safe_crop: tuple[float, float] | None = None
    safe_crop_min_visible: float = 0.5
    mosaic: float = 0.0

    def __post_init__(self):
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}, expected a strength in [0, 1)")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"hue is {self.hue}, expected a shift in [0, 0.5] turns")
        if self.jpeg_quality is not None and not (
            len(self.jpeg_quality) == 2 and 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100
        ):
            raise ConfigError(
                f"jpeg_quality is {self.jpeg_quality}, expected (low, high) with "
                "1 <= low <= high <= 100"
            )
        if self.safe_crop is not None and not (
            len(self.safe_crop) == 2 and 0 < self.safe_crop[0] <= self.safe_crop[1] <= 1
        ):
            raise ConfigError(
                f"safe_crop is {self.safe_crop}, expected (low, high) with 0 < low <= high <= 1"
            )
        if not 0 < self.safe_crop_min_visible <= 1:
            raise ConfigError(
                f"safe_crop_min_visible is {self.safe_crop_min_visible}, expected a fraction "
                "in (0, 1]"
            )
        if not 0 <= self.mosaic <= 1:
            raise ConfigError(f"mosaic is {self.mosaic}, expected a probability in [0, 1]")

    @property
    def geometric(self) -> bool:
        """Whether `random_geometric` changes anything (the mosaic is the pipeline's)."""
        return self.vertical_flip or self.rotate90 or self.safe_crop is not None

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation or self.hue
                    or self.jpeg_quality is not None)


def _key(key: tf.Tensor, name: str) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(key, _KEY_TAGS[name])


def flip_up_down(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`image` upside down, and its normalized yxyx `boxes`: y -> 1 - y."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    return tf.reverse(image, axis=[0]), tf.stack([1.0 - ymax, xmin, 1.0 - ymin, xmax], axis=1)


def rotate90(image: tf.Tensor, boxes: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`image` rotated by `k` (int32 scalar) quarter turns counter-clockwise (`tf.image.rot90`),
    and its normalized yxyx `boxes`: each quarter turn maps (y, x) to (1 - x, y)."""

    def quarter_turn(boxes):
        ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
        return tf.stack([1.0 - xmax, ymin, 1.0 - xmin, ymax], axis=1)

    turned = [boxes]
    for _ in range(3):
        turned.append(quarter_turn(turned[-1]))
    return tf.image.rot90(image, k), tf.gather(tf.stack(turned), tf.math.floormod(k, 4))


def visible_fractions(boxes: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
    """float32 `[K, N]`: the fraction of the area of each box (`[N, 4]`) inside each window
    (`[K, 4]`), both yxyx in the same units; 0 for boxes with no area."""
    ymin = tf.maximum(windows[:, None, 0], boxes[None, :, 0])
    xmin = tf.maximum(windows[:, None, 1], boxes[None, :, 1])
    ymax = tf.minimum(windows[:, None, 2], boxes[None, :, 2])
    xmax = tf.minimum(windows[:, None, 3], boxes[None, :, 3])
    inside = tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return tf.math.divide_no_nan(inside, area[None, :])


def box_safe_crop(
    image: tf.Tensor,
    boxes: tf.Tensor,
    key: tf.Tensor,
    *,
    crop_size: tuple[float, float],
    min_visible: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """A random crop of `image` that cuts no object below `min_visible` of its box area.

    `NUM_CROP_CANDIDATES` windows are drawn, each of height `round(fh * h)` and width
    `round(fw * w)` pixels (fh, fw uniform in `crop_size`) at a uniform integer offset. A window
    is acceptable when every box has inside it either nothing or at least `min_visible` of its
    area, and, if the image has boxes, at least one box does. The first acceptable window is
    taken; when none is, the whole image is kept. Boxes inside the window are clipped to it, those
    outside it dropped.

    Args:
      image: uint8 `[h, w, 3]`.
      boxes: float32 `[N, 4]`, normalized yxyx of `image`.
      key: the stateless key of the draws.
      crop_size: (low, high) fractions of the image's sides, 0 < low <= high <= 1.
      min_visible: in (0, 1].

    Returns:
      The cropped image, its normalized yxyx boxes of the kept objects, `keep` (bool `[N]`, which
      of `boxes` were kept, in order) and `clipped` (bool `[N]`, the kept ones cut by the window).
    """
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    size_key, offset_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    low, high = crop_size
    fractions = tf.random.stateless_uniform(
        [NUM_CROP_CANDIDATES, 2], size_key, minval=low, maxval=high
    )
    crop = tf.clip_by_value(tf.round(fractions * size), 1.0, size)
    room = size - crop + 1.0
    offset = tf.floor(tf.random.stateless_uniform([NUM_CROP_CANDIDATES, 2], offset_key) * room)
    windows = tf.concat([offset, offset + crop], axis=1)  # yxyx pixels
    pixel_boxes = boxes * tf.tile(size, [2])
    visible = visible_fractions(pixel_boxes, windows)
    kept = visible >= min_visible
    acceptable = tf.reduce_all(kept | (visible <= 0.0), axis=1)
    acceptable &= tf.reduce_any(kept, axis=1) | (tf.shape(boxes)[0] == 0)
    whole = tf.concat([tf.zeros([1, 2]), size[None]], axis=1)
    windows = tf.concat([windows, whole], axis=0)
    choice = tf.argmax(tf.cast(tf.concat([acceptable, [True]], axis=0), tf.int32))  # The first.
    window = windows[choice]

    start = tf.cast(window[:2], tf.int32)
    extent = tf.cast(window[2:] - window[:2], tf.int32)
    image = tf.slice(image, tf.concat([start, [0]], 0), tf.concat([extent, [3]], 0))
    visible = visible_fractions(pixel_boxes, window[None])[0]
    keep = visible > 0.0
    clipped = keep & (visible < 1.0)
    corner = tf.tile(window[:2], [2])
    window_size = tf.tile(window[2:] - window[:2], [2])
    cropped = tf.clip_by_value((pixel_boxes - corner) / window_size, 0.0, 1.0)
    return image, tf.boolean_mask(cropped, keep), keep, clipped


def mosaic(
    images: Sequence[tf.Tensor],
    boxes: Sequence[tf.Tensor],
    center: tf.Tensor,
    *,
    output_size: tuple[int, int],
    min_visible: float,
    fill: Sequence[float],
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """4 images made one (Bochkovskiy et al., "YOLOv4", 2020: mosaic), on a canvas of
    `output_size` split into 4 quarters at `center`.

    Image i goes into quarter i, top-left, top-right, bottom-left, bottom-right, with the corner
    that faces `center` on it (ultralytics' placement): the top-left image's bottom-right corner
    is at `center`, the top-right image's bottom-left corner, and so on. What lies outside its
    quarter is cut off; what of the quarter it leaves uncovered is `fill`. An object keeps its box,
    clipped to the quarter, when at least `min_visible` of its box area is inside it (as
    `box_safe_crop` counts it, `visible_fractions`); otherwise it is dropped.

    Args:
      images: 4 images `[h_i, w_i, 3]` of pixels in [0, 255] (rounded to uint8 here), e.g. each
        resized to fit `output_size`, as the pipeline gives them.
      boxes: 4 float32 `[N_i, 4]`, normalized yxyx of their images.
      center: int32 `[2]`, (y, x) pixels of the canvas where the 4 quarters meet, each in
        [0, size].
      output_size: (height, width) of the canvas.
      min_visible: in (0, 1].
      fill: the pixel (3 values in [0, 255]) of what no image covers.

    Returns:
      The canvas (uint8 `[height, width, 3]`), the normalized yxyx boxes of the kept objects, in
      the order of `boxes`' concatenation, `keep` and `clipped` (bool `[sum N_i]`, as
      `box_safe_crop`'s: which objects were kept, and which of those were cut).
    """
    height, width = output_size
    center = tf.cast(center, tf.int32)[None]
    sizes = tf.stack([tf.shape(image)[:2] for image in images])  # [4, 2]
    # 1 where a quarter (and the image in it) lies before the centre: top, left.
    before = tf.constant([[1, 1], [1, 0], [0, 1], [0, 0]], tf.int32)
    window_start = (1 - before) * center
    window_end = window_start + before * center + (1 - before) * ([[height, width]] - center)
    offset = center - before * sizes  # Each image's top-left pixel on the canvas.
    start = tf.maximum(window_start, offset)
    extent = tf.maximum(tf.minimum(window_end, offset + sizes) - start, 0)
    pad_before = tf.minimum(start - window_start, window_end - window_start)
    pad_after = window_end - window_start - pad_before - extent
    fill = tf.constant(fill, tf.float32)
    quarters = []
    for i, image in enumerate(images):
        part = tf.slice(image, tf.concat([start[i] - offset[i], [0]], 0),
                        tf.concat([extent[i], [3]], 0))
        part = tf.round(tf.clip_by_value(tf.cast(part, tf.float32), 0.0, 255.0))
        padding = tf.concat([tf.stack([pad_before[i], pad_after[i]], axis=1), [[0, 0]]], 0)
        quarters.append(tf.pad(part - fill, padding) + fill)
    canvas = tf.concat([tf.concat(quarters[:2], axis=1), tf.concat(quarters[2:], axis=1)], axis=0)
    canvas = tf.ensure_shape(tf.cast(canvas, tf.uint8), [height, width, 3])

    image_index = tf.repeat(tf.range(4), [tf.shape(b)[0] for b in boxes])
    windows = tf.cast(tf.concat([window_start, window_end], axis=1), tf.float32)  # [4, 4] yxyx
    scale = tf.cast(tf.tile(tf.gather(sizes, image_index), [1, 2]), tf.float32)
    shift = tf.cast(tf.tile(tf.gather(offset, image_index), [1, 2]), tf.float32)
    pixel_boxes = tf.concat(boxes, 0) * scale + shift
    visible = tf.gather(tf.transpose(visible_fractions(pixel_boxes, windows)), image_index,
                        batch_dims=1)
    keep = visible >= min_visible
    window = tf.gather(windows, image_index)
    inside = tf.clip_by_value(pixel_boxes, tf.tile(window[:, :2], [1, 2]),
                              tf.tile(window[:, 2:], [1, 2]))
    normalized = tf.boolean_mask(inside, keep) / [height, width, height, width]
    return canvas, normalized, keep, keep & (visible < 1.0)


def draw_mosaic(
    key: tf.Tensor, *, probability: float, output_size: tuple[int, int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """`(on, center)` of the example of `key`: whether it is a mosaic (bool, with
    `probability`), and the centre (int32 `[2]`, (y, x) pixels) of its canvas of `output_size`,
    each coordinate uniform in `MOSAIC_CENTER_RANGE` of its side, rounded."""
    on_key, center_key = tf.unstack(tf.random.experimental.stateless_split(_key(key, "mosaic"), 2))
    low, high = MOSAIC_CENTER_RANGE
    fractions = tf.random.stateless_uniform([2], center_key, minval=low, maxval=high)
    center = tf.cast(tf.round(fractions * tf.constant(output_size, tf.float32)), tf.int32)
    return tf.random.stateless_uniform([], on_key) < probability, center


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """float32 pixels `[h, w, 3]` in [0, 255] -> `clip(factor * x, 0, 255)`."""
    return tf.clip_by_value(factor * image, 0.0, 255.0)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """float32 pixels `[h, w, 3]` in [0, 255] -> `clip(m + factor * (x - m), 0, 255)`, m the mean
    gray (`GRAY_WEIGHTS`) of the image."""
    mean = tf.reduce_mean(_gray(image))
    return tf.clip_by_value(mean + factor * (image - mean), 0.0, 255.0)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """float32 pixels `[h, w, 3]` in [0, 255] -> `clip(g + factor * (x - g), 0, 255)`, g each
    pixel's gray (`GRAY_WEIGHTS`): 0 is gray, 1 the image."""
    gray = _gray(image)[..., None]
    return tf.clip_by_value(gray + factor * (image - gray), 0.0, 255.0)


def adjust_hue(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """float32 pixels `[h, w, 3]` in [0, 255] with their HSV hue turned by `delta` (in turns,
    modulo 1), saturation and value kept (`tf.image.adjust_hue`)."""
    return tf.clip_by_value(tf.image.adjust_hue(image / 255.0, delta) * 255.0, 0.0, 255.0)


def _gray(image: tf.Tensor) -> tf.Tensor:
    return tf.tensordot(image, tf.constant(GRAY_WEIGHTS, image.dtype), axes=[[-1], [0]])


def color_jitter(
    image: tf.Tensor,
    key: tf.Tensor,
    *,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> tf.Tensor:
    """Brightness, contrast, saturation and hue jitter of float32 pixels `[h, w, 3]` in [0, 255],
    in that order: factors uniform in [1 - s, 1 + s] for each strength s, a hue shift uniform in
    [-hue, hue]; an op whose strength is 0 is not applied."""
    keys = tf.unstack(tf.random.experimental.stateless_split(key, 4))
    for strength, adjust, op_key in ((brightness, adjust_brightness, keys[0]),
                                     (contrast, adjust_contrast, keys[1]),
                                     (saturation, adjust_saturation, keys[2])):
        if strength:
            factor = tf.random.stateless_uniform(
                [], op_key, minval=1.0 - strength, maxval=1.0 + strength
            )
            image = adjust(image, factor)
    if hue:
        image = adjust_hue(image, tf.random.stateless_uniform([], keys[3], minval=-hue, maxval=hue))
    return image


def jpeg_recompress(image: tf.Tensor, quality: tf.Tensor) -> tf.Tensor:
    """float32 pixels `[h, w, 3]` in [0, 255], rounded to uint8, JPEG-encoded at `quality` (int32
    scalar in 1..100) and decoded again, as float32."""
    pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    return tf.cast(tf.image.adjust_jpeg_quality(pixels, quality), tf.float32)


def random_geometric(
    image: tf.Tensor, boxes: tf.Tensor, key: tf.Tensor, augmentations: Augmentations
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The box-safe crop, vertical flip and 90-degree rotation of `augmentations` that are on,
    in that order, drawn from `key`: `(image, boxes, keep, clipped)` as `box_safe_crop`'s (all
    kept and none clipped without a crop)."""
    num_boxes = tf.shape(boxes)[0]
    keep = tf.ones([num_boxes], tf.bool)
    clipped = tf.zeros([num_boxes], tf.bool)
    if augmentations.safe_crop is not None:
        image, boxes, keep, clipped = box_safe_crop(
            image, boxes, _key(key, "crop"), crop_size=augmentations.safe_crop,
            min_visible=augmentations.safe_crop_min_visible,
        )
    if augmentations.vertical_flip:
        flip = tf.random.stateless_uniform([], _key(key, "vertical_flip")) < 0.5
        flipped_image, flipped_boxes = flip_up_down(image, boxes)
        image = tf.cond(flip, lambda: flipped_image, lambda: image)
        boxes = tf.where(flip, flipped_boxes, boxes)
    if augmentations.rotate90:
        k = tf.random.stateless_uniform([], _key(key, "rotate90"), maxval=4, dtype=tf.int32)
        image, boxes = rotate90(image, boxes, k)
    return image, boxes, keep, clipped


def random_photometric(
    image: tf.Tensor, key: tf.Tensor, augmentations: Augmentations
) -> tf.Tensor:
    """The color jitter, then the JPEG re-compression, of `augmentations` that are on, drawn from
    `key`, of float32 pixels `[h, w, 3]` in [0, 255]."""
    image = color_jitter(
        image, _key(key, "color"), brightness=augmentations.brightness,
        contrast=augmentations.contrast, saturation=augmentations.saturation,
        hue=augmentations.hue,
    )
    if augmentations.jpeg_quality is not None:
        low, high = augmentations.jpeg_quality
        quality = tf.random.stateless_uniform(
            [], _key(key, "jpeg"), minval=int(low), maxval=int(high) + 1, dtype=tf.int32
        )
        image = jpeg_recompress(image, quality)
    return image
