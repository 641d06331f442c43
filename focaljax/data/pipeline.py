"""tf.data input pipeline: a TFDS detection data set -> device-sharded numpy batches.

Works with any TFDS builder whose features include `image`, `objects/bbox` (tfds BBoxFeature:
normalized ymin, xmin, ymax, xmax) and `objects/label` (ClassLabel); `image/id` and
`objects/is_crowd` are used when present. Batches follow the format in DEVELOPERS.md: a leading
axis of `jax.local_device_count()`, then the per-device batch.

Resumption. Training randomness is stateless, keyed by `(seed, process_index, position)`, where
`position` counts this process's examples from the start of training (epoch * examples + index):
epoch `e` reads the records in a fixed order and shuffles them with a buffer seeded by
`(seed, process_index, e)`; flip, scale jitter and crop of the example at `position` are drawn
from a key folded from `position`, and so are the augmentations of `focaljax.data.augment`. A
mosaic at `position` is made of the examples at `position` to `position + 3` (a window sliding
over the stream after the shuffle), which a resumed stream holds alike. With
repeat-factor sampling (`focaljax.data.sampling`), epoch `e` holds each record as often as a draw
keyed by `(seed, process_index, e)` says, so that its length, and where each epoch starts, are
known without reading it; positions count the repeated examples.
`create_train_iterator(start_step=k)` therefore starts directly at the epoch holding example
`k * batch`, skips the earlier records of that epoch before they are decoded, and yields exactly
the batches an uninterrupted iterator yields from its k-th batch on, provided the device count,
per-device batch size, seed, shuffle buffer size and augmentation settings are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from focaljax.data import augment, sampling
from focaljax.data.augment import Augmentations, random_geometric, random_photometric
from focaljax.errors import ConfigError
from focaljax.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

_REQUIRED_FEATURES = ("image", "objects/bbox", "objects/label")
# Per-example counts that `DeviceBatchIterator` takes out of the batches and adds up.
_COUNTS = ("num_objects", "num_dropped_boxes", "num_clipped_boxes")
# The images of a mosaic besides the example's own: the next ones of the stream.
_MOSAIC_PARTNERS = 3
# What a mosaic's canvas shows where no image is: the ImageNet mean, which the normalization makes
# about 0, as it is in the padding of the batch images.
_MOSAIC_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)


def load_builder(
    builder_or_name: str | tfds.core.DatasetBuilder, *, data_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """The builder itself, or `tfds.builder(name, data_dir=data_dir)`; checks that it is prepared
    and has the detection features this module reads."""
    if isinstance(builder_or_name, str):
        builder = tfds.builder(builder_or_name, data_dir=data_dir)
    else:
        builder = builder_or_name
    if not builder.is_prepared():
        raise ConfigError(
            f"{builder.info.full_name} is not prepared in {builder.data_dir_root}: call "
            "builder.download_and_prepare() (or use focaljax.data.build, which does) first"
        )
    features = builder.info.features
    missing = [
        name
        for name in _REQUIRED_FEATURES
        if not _has_feature(features, name.split("/", 1) if name.startswith("objects/") else [name])
    ]
    if missing:
        raise ConfigError(
            f"{builder.info.full_name} lacks the features {missing}: expected a detection data set "
            f"with {list(_REQUIRED_FEATURES)}"
        )
    return builder


def _has_feature(features, path: Sequence[str]) -> bool:
    for name in path:
        if name not in features:
            return False
        features = features[name]
    return True


class DeviceBatchIterator(Iterator[dict[str, np.ndarray]]):
    """Iterates numpy batches reshaped to [num_devices, per_device_batch, ...].

    Batches with fewer examples than `num_devices * per_device_batch_size` are filled with masked
    examples (`valid` False, image zeros, labels and image_id -1, scale 1); when `num_batches` is
    given, fully masked batches follow the last one until `num_batches` batches are yielded.

    Attributes:
      num_batches: number of batches it yields, or None when it yields as many as `dataset` holds.
      num_truncated_images: images seen so far that had more than `max_boxes` boxes; their first
        `max_boxes` were kept. The first occurrence is logged as a warning.
      num_dropped_boxes: boxes of the images seen so far that are not in the batches: left out by
        a crop (or with no area), not counting those over `max_boxes`.
      num_clipped_boxes: boxes kept but cut by a crop (or the image border), also those over
        `max_boxes`.
    """

    def __init__(
        self,
        dataset: tf.data.Dataset,
        *,
        num_devices: int,
        per_device_batch_size: int,
        max_boxes: int,
        num_batches: int | None = None,
    ):
        self._batches = iter(tfds.as_numpy(dataset))
        self._shape = (num_devices, per_device_batch_size)
        self._max_boxes = max_boxes
        self._padding = {
            k: np.zeros((1,) + tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype)
            for k, spec in dataset.element_spec.items()
            if k not in _COUNTS
        }
        self._padding["labels"][:] = -1
        self._padding["image_id"][:] = -1
        # Predicted boxes are divided by `scale`; 1 keeps those of padding examples finite.
        self._padding["scale"][:] = 1
        self.num_batches = num_batches
        self.num_truncated_images = 0
        self.num_dropped_boxes = 0
        self.num_clipped_boxes = 0
        self._num_yielded = 0

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_batches is not None and self._num_yielded >= self.num_batches:
            raise StopIteration
        try:
            batch = next(self._batches)
        except StopIteration:
            if self.num_batches is None:
                raise
            batch = {k: v[:0] for k, v in self._padding.items()}
        else:
            self._count_truncated(batch.pop("num_objects"))
            self.num_dropped_boxes += int(np.sum(batch.pop("num_dropped_boxes")))
            self.num_clipped_boxes += int(np.sum(batch.pop("num_clipped_boxes")))
        missing = self._shape[0] * self._shape[1] - len(batch["valid"])
        if missing:
            batch = {
                k: np.concatenate([v, np.repeat(self._padding[k], missing, axis=0)])
                for k, v in batch.items()
            }
        self._num_yielded += 1
        return {k: v.reshape(self._shape + v.shape[1:]) for k, v in batch.items()}

    def _count_truncated(self, num_objects: np.ndarray) -> None:
        truncated = int(np.sum(num_objects > self._max_boxes))
        if truncated and not self.num_truncated_images:
            logging.warning(
                "%d image(s) in this batch have more than max_boxes=%d boxes (up to %d); only "
                "the first %d are kept. Later ones are counted in num_truncated_images.",
                truncated, self._max_boxes, int(num_objects.max()), self._max_boxes,
            )
        self.num_truncated_images += truncated


def create_train_iterator(
    builder_or_name: str | tfds.core.DatasetBuilder,
    *,
    data_dir: str | None = None,
    split: str = "train",
    image_size: int | Sequence[int],
    max_boxes: int,
    per_device_batch_size: int,
    seed: int,
    start_step: int = 0,
    horizontal_flip: bool = True,
    scale_jitter: tuple[float, float] | None = None,
    shuffle_buffer_size: int = 10_000,
    augmentations: Augmentations | None = None,
    repeat_factor_threshold: float = 0.0,
    print_fn: Callable[[str], None] = logging.info,
) -> DeviceBatchIterator:
    """Infinite, shuffled, augmented training batches of this process's share of `split`.

    Each image is flipped left-right with probability 1/2 (if `horizontal_flip`), resized keeping
    its aspect ratio to fit in `image_size` (times a factor drawn uniformly from `scale_jitter`,
    then randomly cropped to `image_size` when larger), normalized with the ImageNet mean and std
    and padded bottom/right with zeros. Boxes become xyxy pixels of the resized image; boxes left
    with no area by the crop are dropped. The `augmentations` that are on come in too: the mosaic,
    box-safe crop, vertical flip and 90-degree rotation before the horizontal flip, the color
    jitter and JPEG re-compression after the resize (`focaljax.data.augment`); `scale` is then
    that of the image as cropped and turned (of a mosaic, that of its canvas, `image_size`: 1
    without scale jitter). A mosaic is made of the example and the next 3 of the stream, each
    decoded and resized to fit `image_size` as a single image is (`augment.mosaic`); it has the
    example's `image_id`.

    Args:
      builder_or_name: a prepared TFDS builder, or a registered TFDS name such as "shapes/tiny".
      data_dir: where TFDS finds `builder_or_name` when it is a name.
      split: a TFDS split, e.g. "train" or "train[:90%]".
      image_size: (height, width) of the batch images, or one int for both.
      max_boxes: rows of `boxes`/`labels`/`is_crowd` per image.
      per_device_batch_size: images per device; batches hold `jax.local_device_count()` times as
        many.
      seed: seed of the shuffle and the augmentations.
      start_step: index of the first batch to yield (see the module docstring on resumption).
      horizontal_flip: whether to flip images at random.
      scale_jitter: (low, high) range of the random resize factor, or None for none.
      shuffle_buffer_size: records in the shuffle buffer (capped at the examples of the split);
        a full permutation each epoch when the split is no larger.
      augmentations: the augmentations of `focaljax.data.augment`; None is all off.
      repeat_factor_threshold: t of repeat-factor sampling (`focaljax.data.sampling`); 0 is off.
        The factors are computed over the whole `split` and summarized in one line.
      print_fn: what that line goes to (the trainer prints it on process 0).

    Returns:
      An infinite `DeviceBatchIterator` of batches in the DEVELOPERS.md format.
    """
    image_size = _check_image_size(image_size)
    _check_positive(max_boxes=max_boxes, per_device_batch_size=per_device_batch_size)
    if start_step < 0:
        raise ValueError(f"start_step is {start_step}, expected >= 0")
    if scale_jitter is not None and not 0 < scale_jitter[0] <= scale_jitter[1]:
        raise ConfigError(
            f"scale_jitter is {scale_jitter}, expected (low, high) with 0 < low <= high"
        )
    if repeat_factor_threshold < 0:
        raise ConfigError(
            f"repeat_factor_threshold is {repeat_factor_threshold}, expected >= 0 (0 is off)"
        )
    augmentations = augmentations or Augmentations()
    builder = load_builder(builder_or_name, data_dir=data_dir)
    num_devices = jax.local_device_count()
    host_batch_size = num_devices * per_device_batch_size
    # Equal shares, so that every process runs the same number of steps per epoch.
    host_split, num_examples, first_position = _host_split(builder, split, drop_remainder=True)
    if num_examples == 0:
        raise ConfigError(f"split {split!r} of {builder.info.full_name} has no example for process "
                         f"{jax.process_index()} of {jax.process_count()}")
    records = read_records(builder, host_split, first_position)

    key = tf.constant([seed, jax.process_index()], tf.int64)
    shuffle_key = tf.random.experimental.stateless_fold_in(key, 0)
    augment_key = tf.random.experimental.stateless_fold_in(key, 1)
    buffer_size = min(shuffle_buffer_size, num_examples)

    def epoch_seed(index):
        # A fold-in key is (hash of the key, index), so its first word is the same every epoch;
        # a draw from it mixes both words into one seed.
        epoch_key = tf.random.experimental.stateless_fold_in(shuffle_key, index)
        return tf.random.stateless_uniform([], epoch_key, minval=None, maxval=None, dtype=tf.int64)

    def epoch(index):
        shuffled = records.shuffle(buffer_size, seed=epoch_seed(index))
        return shuffled.enumerate(start=index * num_examples)

    if repeat_factor_threshold:
        ds = _repeated_epochs(
            builder, split, records, key, epoch_seed,
            first_position=first_position, num_examples=num_examples,
            threshold=repeat_factor_threshold, shuffle_buffer_size=shuffle_buffer_size,
            start=start_step * host_batch_size, print_fn=print_fn,
        )
    else:
        start_epoch, skip = divmod(start_step * host_batch_size, num_examples)
        ds = tf.data.Dataset.counter(start_epoch).flat_map(epoch).skip(skip)
    if augmentations.mosaic:
        ds = _with_partners(ds, _MOSAIC_PARTNERS)
    image_feature = builder.info.features["image"]

    def preprocess(position, example, partners=None):
        example_key = tf.random.experimental.stateless_fold_in(augment_key, position)
        return _preprocess(
            example,
            image_feature=image_feature,
            image_size=image_size,
            max_boxes=max_boxes,
            key=example_key,
            horizontal_flip=horizontal_flip,
            scale_jitter=scale_jitter,
            augmentations=augmentations,
            partners=partners,
        )

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(host_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return DeviceBatchIterator(
        ds.with_options(_deterministic_options()),
        num_devices=num_devices,
        per_device_batch_size=per_device_batch_size,
        max_boxes=max_boxes,
    )


def create_eval_iterator(
    builder_or_name: str | tfds.core.DatasetBuilder,
    *,
    data_dir: str | None = None,
    split: str = "validation",
    image_size: int | Sequence[int],
    max_boxes: int,
    per_device_batch_size: int,
) -> DeviceBatchIterator:
    """This process's share of `split`, once, in order, without augmentation.

    The last batch is filled with masked examples (`valid` False, image zeros, labels and
    image_id -1, scale 1); processes with fewer examples get extra masked batches, so that all
    processes yield `num_batches` batches.

    Args: as `create_train_iterator`.

    Returns:
      A finite `DeviceBatchIterator` of batches in the DEVELOPERS.md format.
    """
    image_size = _check_image_size(image_size)
    _check_positive(max_boxes=max_boxes, per_device_batch_size=per_device_batch_size)
    builder = load_builder(builder_or_name, data_dir=data_dir)
    num_devices = jax.local_device_count()
    host_batch_size = num_devices * per_device_batch_size
    host_split, _, first_position = _host_split(builder, split, drop_remainder=False)
    largest_share = math.ceil(builder.info.splits[split].num_examples / jax.process_count())
    image_feature = builder.info.features["image"]

    def preprocess(example):
        return _preprocess(
            example,
            image_feature=image_feature,
            image_size=image_size,
            max_boxes=max_boxes,
            key=None,
        )

    ds = read_records(builder, host_split, first_position)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(host_batch_size).prefetch(tf.data.AUTOTUNE)
    return DeviceBatchIterator(
        ds.with_options(_deterministic_options()),
        num_devices=num_devices,
        per_device_batch_size=per_device_batch_size,
        max_boxes=max_boxes,
        num_batches=math.ceil(largest_share / host_batch_size),
    )


def _check_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(f"image_size is {image_size}, expected (height, width) of positive ints")
    return int(image_size[0]), int(image_size[1])


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{name} is {value}, expected a positive int")


def _host_split(builder: tfds.core.DatasetBuilder, split: str, *, drop_remainder: bool):
    """This process's contiguous share of `split`, its number of examples and the position of its
    first example in `split`."""
    shares = tfds.even_splits(split, n=jax.process_count(), drop_remainder=drop_remainder)
    sizes = [builder.info.splits[share].num_examples for share in shares]
    index = jax.process_index()
    return shares[index], sizes[index], sum(sizes[:index])


def read_records(builder: tfds.core.DatasetBuilder, split, first_position: int) -> tf.data.Dataset:
    """The examples of `split` in their stored order, images still encoded, with `image_id`
    (`image/id`, else 1 + position in the split) and only the features the pipeline reads."""
    records = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False),
    )
    has_id = "image/id" in builder.info.features

    def select(position, example):
        image_id = example["image/id"] if has_id else first_position + position + 1
        selected = {"image": example["image"], "image_id": tf.cast(image_id, tf.int32)}
        objects = {
            k: example["objects"][k]
            for k in ("bbox", "label", "is_crowd", "area")
            if k in example["objects"]
        }
        selected["objects"] = objects
        if "image/filename" in example:
            selected["image/filename"] = example["image/filename"]
        return selected

    return records.enumerate().map(select)


def _repeated_epochs(
    builder: tfds.core.DatasetBuilder,
    split: str,
    records: tf.data.Dataset,
    key: tf.Tensor,
    epoch_seed,
    *,
    first_position: int,
    num_examples: int,
    threshold: float,
    shuffle_buffer_size: int,
    start: int,
    print_fn: Callable[[str], None],
) -> tf.data.Dataset:
    """`(position, example)` from the `start`-th on, epochs of this process's `records` with
    repeat-factor sampling at `threshold` (module docstring), each shuffled with
    `epoch_seed(epoch)`; the factors of the whole `split` summarized to `print_fn`."""
    labels = [objects["label"] for objects in tfds.as_numpy(
        read_records(builder, split, 0).map(lambda example: example["objects"])
    )]
    factors = sampling.repeat_factors(labels, threshold=threshold)
    print_fn(sampling.summary(factors, threshold=threshold))
    factors = factors[first_position:first_position + num_examples]
    buffer_size = min(shuffle_buffer_size, int(np.sum(np.ceil(factors))))
    repeat_key = tf.random.experimental.stateless_fold_in(key, 2)
    factors = tf.constant(factors, tf.float64)

    def counts(index):
        return sampling.epoch_counts(
            factors, tf.random.experimental.stateless_fold_in(repeat_key, index)
        )

    def epoch(index):
        times = counts(index)
        repeated = records.enumerate().flat_map(
            lambda i, example: tf.data.Dataset.from_tensors(example).repeat(times[i])
        )
        return repeated.shuffle(buffer_size, seed=epoch_seed(index))

    start_epoch, epoch_start = 0, 0
    while True:
        size = int(tf.reduce_sum(counts(tf.constant(start_epoch, tf.int64))))
        if epoch_start + size > start:
            break
        start_epoch, epoch_start = start_epoch + 1, epoch_start + size
    ds = tf.data.Dataset.counter(start_epoch).flat_map(epoch)
    return ds.enumerate(start=epoch_start).skip(start - epoch_start)


def _with_partners(ds: tf.data.Dataset, count: int) -> tf.data.Dataset:
    """`(position, example)` -> `(position, example, partners)`: `partners` the examples of the
    next `count` elements of `ds`, batched (their objects ragged), from a window sliding over it:
    each element is read once."""

    def window(positions, examples):
        return tf.data.Dataset.zip((positions, examples)).ragged_batch(count + 1)

    def split(positions, examples):
        first = tf.nest.map_structure(lambda t: t[0], examples)
        return positions[0], first, tf.nest.map_structure(lambda t: t[1:], examples)

    windows = ds.window(count + 1, shift=1, drop_remainder=True).flat_map(window)
    return windows.map(split)


def preprocess_image(image: Any, image_size: int | Sequence[int]) -> tuple[tf.Tensor, tf.Tensor]:
    """`(input float32 [H, W, 3], scale)` of one uint8 RGB image `[h, w, 3]` for an `image_size`
    `(H, W)` input, exactly as the evaluation batches have it (no augmentation).

    Resized by `scale = min(H / h, W / w)` (bilinear, to the rounded size), normalized with
    `IMAGENET_MEAN` and `IMAGENET_STD` (in [0, 1] units), padded bottom/right with zeros. Divide
    the boxes detected on it by `scale` for the image's own pixels.
    """
    image_size = _check_image_size(image_size)
    height, width = image_size
    image = tf.convert_to_tensor(image)
    original_size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = _fit_scale(original_size, image_size)
    resized = tf.image.resize(image, _resized_size(original_size, scale))[:height, :width]
    return _normalize_and_pad(resized, image_size), scale


def _fit_scale(original_size: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """The largest scale at which an image of `original_size` (float32 `[2]`) fits `image_size`."""
    return tf.minimum(image_size[0] / original_size[0], image_size[1] / original_size[1])


def _resized_size(original_size: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    return tf.maximum(tf.cast(tf.round(original_size * scale), tf.int32), 1)


def _normalize_and_pad(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """A resized image, at most `image_size`, in [0, 255] -> normalized, padded bottom/right."""
    height, width = image_size
    size = tf.shape(image)
    # As rows of width * 3 values, the mean and std repeated along them: TensorFlow broadcasts a
    # [3] vector over [h, w, 3] element by element, 3-4x slower than over these rows, and took
    # half the pipeline's CPU time (BENCHMARKS.md). The same float32 operations, the same values.
    rows = tf.reshape(image, [size[0], size[1] * 3]) / 255.0
    mean = tf.tile(tf.constant(IMAGENET_MEAN, rows.dtype), [size[1]])
    std = tf.tile(tf.constant(IMAGENET_STD, rows.dtype), [size[1]])
    rows = tf.pad((rows - mean) / std, [[0, height - size[0]], [0, 3 * (width - size[1])]])
    return tf.ensure_shape(tf.cast(tf.reshape(rows, [height, width, 3]), tf.float32),
                           [height, width, 3])


def _deterministic_options() -> tf.data.Options:
    options = tf.data.Options()
    # Resumption and evaluation order rely on the order of parallel maps being kept.
    options.deterministic = True
    return options


def _preprocess(
    example: dict,
    *,
    image_feature: tfds.features.Image,
    image_size: tuple[int, int],
    max_boxes: int,
    key: tf.Tensor | None,
    horizontal_flip: bool = False,
    scale_jitter: tuple[float, float] | None = None,
    augmentations: Augmentations | None = None,
    partners: dict | None = None,
) -> dict[str, tf.Tensor]:
    """Decodes, augments (when `key` is given), resizes, normalizes and pads one example; with
    `partners` (`_with_partners`'), a mosaic when `augmentations.mosaic` draws one."""
    height, width = image_size
    image, boxes, labels, is_crowd = _decode(example, image_feature)
    num_input_objects = tf.shape(labels)[0]
    clipped = tf.zeros([num_input_objects], tf.bool)
    if partners is not None:
        image, boxes, labels, is_crowd, clipped, num_input_objects = _random_mosaic(
            (image, boxes, labels, is_crowd), partners, key=key, image_feature=image_feature,
            image_size=image_size, augmentations=augmentations,
        )
    if key is not None and augmentations is not None and augmentations.geometric:
        image, boxes, kept, cut = random_geometric(image, boxes, key, augmentations)
        labels, is_crowd, clipped = (
            tf.boolean_mask(t, kept) for t in (labels, is_crowd, clipped | cut)
        )

    original_size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = _fit_scale(original_size, image_size)
    if key is not None:
        flip_key, jitter_key, crop_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
        if horizontal_flip:
            flip = tf.random.stateless_uniform([], flip_key) < 0.5
            image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
            ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
            boxes = tf.where(flip, tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=1), boxes)
        if scale_jitter is not None:
            low, high = scale_jitter
            scale *= tf.random.stateless_uniform([], jitter_key, minval=low, maxval=high)
    resized_size = _resized_size(original_size, scale)
    image = tf.image.resize(image, resized_size)
    crop_size = tf.minimum(resized_size, [height, width])
    crop_offset = tf.zeros([2], tf.int32)
    if key is not None and scale_jitter is not None:
        room = tf.cast(resized_size - crop_size + 1, tf.float32)
        crop_offset = tf.cast(tf.random.stateless_uniform([2], crop_key) * room, tf.int32)
    image = tf.slice(image, tf.concat([crop_offset, [0]], 0), tf.concat([crop_size, [3]], 0))
    if key is not None and augmentations is not None and augmentations.photometric:
        image = random_photometric(image, key, augmentations)

    resized_h, resized_w = tf.unstack(tf.cast(resized_size, tf.float32))
    offset_y, offset_x = tf.unstack(tf.cast(crop_offset, tf.float32))
    crop_h, crop_w = tf.unstack(tf.cast(crop_size, tf.float32))
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    unclipped = tf.stack([xmin * resized_w - offset_x, ymin * resized_h - offset_y,
                          xmax * resized_w - offset_x, ymax * resized_h - offset_y], axis=1)
    boxes = tf.clip_by_value(unclipped, 0.0, tf.stack([crop_w, crop_h, crop_w, crop_h]))
    x1, y1, x2, y2 = tf.unstack(boxes, axis=1)
    keep = (x2 > x1) & (y2 > y1)
    clipped |= tf.reduce_any(boxes != unclipped, axis=1)
    boxes = tf.boolean_mask(boxes, keep)
    labels = tf.boolean_mask(labels, keep)
    is_crowd = tf.boolean_mask(is_crowd, keep)
    num_objects = tf.shape(labels)[0]
    num_padding = tf.maximum(max_boxes - num_objects, 0)

    return {
        "image": _normalize_and_pad(image, image_size),
        "boxes": tf.ensure_shape(tf.pad(boxes[:max_boxes], [[0, num_padding], [0, 0]]),
                                 [max_boxes, 4]),
        "labels": tf.ensure_shape(
            tf.pad(labels[:max_boxes], [[0, num_padding]], constant_values=-1), [max_boxes]
        ),
        "is_crowd": tf.ensure_shape(tf.pad(is_crowd[:max_boxes], [[0, num_padding]]), [max_boxes]),
        "image_id": example["image_id"],
        "scale": tf.cast(scale, tf.float32),
        "valid": tf.constant(True),
        "num_objects": num_objects,
        "num_dropped_boxes": num_input_objects - num_objects,
        "num_clipped_boxes": tf.reduce_sum(tf.cast(clipped & keep, tf.int32)),
    }


def _decode(
    example: dict, image_feature: tfds.features.Image
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(image uint8 [h, w, 3], boxes [N, 4] normalized yxyx, labels int32 [N], is_crowd bool
    [N])` of a record."""
    image = image_feature.decode_example(example["image"])
    image.set_shape([None, None, 3])
    objects = example["objects"]
    boxes = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
    labels = tf.cast(objects["label"], tf.int32)
    is_crowd = tf.cast(objects.get("is_crowd", tf.zeros_like(labels)), tf.bool)
    return image, boxes, labels, is_crowd


def _random_mosaic(
    decoded: tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor],
    partners: dict,
    *,
    key: tf.Tensor,
    image_feature: tfds.features.Image,
    image_size: tuple[int, int],
    augmentations: Augmentations,
) -> tuple[tf.Tensor, ...]:
    """The example's `decoded` image and objects, or, when `augment.draw_mosaic` says so, the
    mosaic of it and its `partners` (decoded only then), with `clipped` (bool, per object) and the
    number of objects it was made from."""
    on, center = augment.draw_mosaic(key, probability=augmentations.mosaic,
                                     output_size=image_size)

    def single():
        image, boxes, labels, is_crowd = decoded
        num_objects = tf.shape(labels)[0]
        return image, boxes, labels, is_crowd, tf.zeros([num_objects], tf.bool), num_objects

    def compose():
        examples = [decoded] + [
            _decode(tf.nest.map_structure(lambda t, i=i: t[i], partners), image_feature)
            for i in range(_MOSAIC_PARTNERS)
        ]
        images = []
        for image, *_ in examples:
            size = tf.cast(tf.shape(image)[:2], tf.float32)
            images.append(tf.image.resize(image, _resized_size(size, _fit_scale(size, image_size))))
        canvas, boxes, keep, clipped = augment.mosaic(
            images, [boxes for _, boxes, _, _ in examples], center, output_size=image_size,
            min_visible=augmentations.safe_crop_min_visible, fill=_MOSAIC_FILL,
        )
        labels, is_crowd = (tf.concat([example[i] for example in examples], 0) for i in (2, 3))
        return (canvas, boxes, tf.boolean_mask(labels, keep), tf.boolean_mask(is_crowd, keep),
                tf.boolean_mask(clipped, keep), tf.shape(labels)[0])

    return tf.cond(on, compose, single)


def to_original_pixels(boxes: np.ndarray, scale: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """Detected boxes `[B, K, 4]` in input pixels -> the original pixels of each image, clipped to
    its `(height, width)` in `image_sizes [B, 2]`; `scale [B]` as `preprocess_image` and the
    evaluation batches give it.

    The detector clips boxes to its padded input; an image of another aspect ratio fills only
    part of it, so boxes reaching into the padding are clipped here.
    """
    boxes = boxes / scale[:, None, None]
    height, width = image_sizes[:, 0], image_sizes[:, 1]
    return np.clip(boxes, 0.0, np.stack([width, height, width, height], axis=-1)[:, None, :])
