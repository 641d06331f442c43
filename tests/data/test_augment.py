"""Tests of focaljax/data/augment.py: each transform's boxes against the extent of the object's
pixels transformed by NumPy, the photometric ops against NumPy formulas (colorsys for the hue,
Pillow for JPEG), the box-safe crop's visible-fraction rule, and the augmentations in the training
pipeline (box-correct, resumable, off by default) on the small "shapes" data set of conftest.py."""

import colorsys
import io
import itertools

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from focaljax import data
from focaljax.data import augment
from focaljax.data.augment import Augmentations
from tests.data.conftest import SMALL_SETTINGS, dataset_config
from tests.data.test_pipeline import (
    KEYS,
    MAX_BOXES,
    _check_format,
    _flat,
    _mask_extent_xyxy,
    _pixels,
    _source,
    _train_batches,
)

ALL_ON = Augmentations(
    vertical_flip=True, rotate90=True, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05,
    jpeg_quality=(40, 90), safe_crop=(0.5, 1.0), safe_crop_min_visible=0.6, mosaic=0.5,
)


def _key(i: int) -> tf.Tensor:
    return tf.constant([7, i], tf.int64)


def _masks_and_boxes(height: int, width: int, pixel_boxes: np.ndarray):
    """One mask per yxyx integer pixel box, and the boxes normalized (TFDS's layout)."""
    masks = np.zeros((len(pixel_boxes), height, width), bool)
    for mask, (y0, x0, y1, x1) in zip(masks, pixel_boxes, strict=True):
        mask[y0:y1, x0:x1] = True
    return masks, (pixel_boxes / [height, width, height, width]).astype(np.float32)


def _normalized_extent(mask: np.ndarray) -> np.ndarray:
    """yxyx of the mask's pixels, normalized by the mask's size."""
    x0, y0, x1, y1 = _mask_extent_xyxy(mask)
    height, width = mask.shape
    return np.array([y0 / height, x0 / width, y1 / height, x1 / width])


PIXEL_BOXES = np.array([[2, 3, 10, 20], [15, 1, 30, 9], [5, 25, 28, 38]])
HEIGHT, WIDTH = 32, 40


def test_flip_up_down_moves_the_boxes_with_the_pixels():
    masks, boxes = _masks_and_boxes(HEIGHT, WIDTH, PIXEL_BOXES)
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    flipped, flipped_boxes = augment.flip_up_down(tf.constant(image), tf.constant(boxes))
    np.testing.assert_array_equal(flipped, image[::-1])
    for mask, box in zip(masks, flipped_boxes.numpy(), strict=True):
        np.testing.assert_allclose(box, _normalized_extent(mask[::-1]), atol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_rotate90_turns_the_boxes_with_the_pixels(k):
    masks, boxes = _masks_and_boxes(HEIGHT, WIDTH, PIXEL_BOXES)
    image = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    turned, turned_boxes = augment.rotate90(tf.constant(image), tf.constant(boxes), tf.constant(k))
    np.testing.assert_array_equal(turned, np.rot90(image, k))  # counter-clockwise, as NumPy's
    for mask, box in zip(masks, turned_boxes.numpy(), strict=True):
        np.testing.assert_allclose(box, _normalized_extent(np.rot90(mask, k)), atol=1e-6)


def _find_window(image: np.ndarray, crop: np.ndarray) -> tuple[int, int]:
    """The offset (y, x) at which `crop` lies in `image` (random pixels: one place)."""
    height, width = crop.shape[:2]
    offsets = [
        (y, x)
        for y in range(image.shape[0] - height + 1)
        for x in range(image.shape[1] - width + 1)
        if np.array_equal(image[y : y + height, x : x + width], crop)
    ]
    assert len(offsets) == 1
    return offsets[0]


@pytest.mark.parametrize("min_visible", [0.3, 0.7, 1.0])
def test_box_safe_crop_cuts_no_object_below_the_visible_fraction(min_visible):
    masks, boxes = _masks_and_boxes(HEIGHT, WIDTH, PIXEL_BOXES)
    image = np.random.default_rng(2).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    areas = masks.sum(axis=(1, 2))
    num_cropped = num_clipped = 0
    for i in range(12):
        crop, crop_boxes, keep, clipped = (t.numpy() for t in augment.box_safe_crop(
            tf.constant(image), tf.constant(boxes), _key(i), crop_size=(0.4, 0.9),
            min_visible=min_visible,
        ))
        y, x = _find_window(image, crop)
        windowed = masks[:, y : y + crop.shape[0], x : x + crop.shape[1]]
        visible = windowed.sum(axis=(1, 2)) / areas
        assert np.all((visible == 0) | (visible >= min_visible - 1e-6)), visible
        np.testing.assert_array_equal(keep, visible > 0)
        np.testing.assert_array_equal(clipped, (visible > 0) & (visible < 1))
        expected = [_normalized_extent(mask) for mask, kept in zip(windowed, keep, strict=True)
                    if kept]
        np.testing.assert_allclose(crop_boxes, np.reshape(expected, (-1, 4)), atol=1e-6)
        num_cropped += crop.shape[:2] != image.shape[:2]
        num_clipped += clipped.sum()
    assert num_cropped > 0
    if min_visible < 1:
        assert num_clipped > 0


def test_box_safe_crop_keeps_the_whole_image_when_no_window_is_safe():
    # One object over the whole image: every window of 30% of the sides shows 9% of it.
    image = np.random.default_rng(3).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    boxes = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    crop, crop_boxes, keep, clipped = augment.box_safe_crop(
        tf.constant(image), boxes, _key(0), crop_size=(0.3, 0.3), min_visible=0.5
    )
    np.testing.assert_array_equal(crop, image)
    np.testing.assert_allclose(crop_boxes, boxes)
    assert keep.numpy().all() and not clipped.numpy().any()


def test_box_safe_crop_of_an_image_without_objects_crops():
    image = np.random.default_rng(4).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    crop, crop_boxes, _, _ = augment.box_safe_crop(
        tf.constant(image), tf.zeros([0, 4]), _key(0), crop_size=(0.5, 0.5), min_visible=0.5
    )
    assert crop.shape == (HEIGHT // 2, WIDTH // 2, 3) and crop_boxes.shape == (0, 4)


MOSAIC_SIZE = (32, 40)
MOSAIC_FILL = (124, 116, 104)


def _numpy_mosaic(images, masks, center, *, size, min_visible):
    """The canvas of `size` and, for each object (a mask of its box in its image), whether it is
    kept, is cut, and the normalized yxyx extent of its pixels on the canvas: each canvas pixel
    looked up in the image of its quarter."""
    height, width = size
    cy, cx = center
    ys, xs = np.indices(size)
    canvas = np.empty((height, width, 3))
    canvas[:] = MOSAIC_FILL
    keep, clipped, boxes = [], [], []
    for i, (image, image_masks) in enumerate(zip(images, masks, strict=True)):
        h, w = image.shape[:2]
        top, left = i < 2, i % 2 == 0
        source_y = ys - (cy - h if top else cy)
        source_x = xs - (cx - w if left else cx)
        shown = (((ys < cy) == top) & ((xs < cx) == left) & (source_y >= 0) & (source_y < h)
                 & (source_x >= 0) & (source_x < w))
        canvas[shown] = image[source_y[shown], source_x[shown]]
        for mask in image_masks:
            visible = np.zeros(size, bool)
            visible[shown] = mask[source_y[shown], source_x[shown]]
            fraction = visible.sum() / mask.sum()
            keep.append(fraction >= min_visible)
            clipped.append(keep[-1] and fraction < 1)
            if keep[-1]:
                boxes.append(_normalized_extent(visible))
    return canvas, np.array(keep), np.array(clipped), np.reshape(boxes, (-1, 4))


def test_mosaic_places_the_four_images_and_their_boxes_around_the_centre():
    rng = np.random.default_rng(8)
    # A full-size image, images narrower and shorter than the canvas and one smaller than most
    # quarters, so that the fill shows; random boxes, one of them the whole image.
    sizes = [(32, 40), (20, 40), (32, 24), (12, 16)]
    images, masks, boxes = [], [], []
    for h, w in sizes:
        images.append(rng.integers(0, 256, (h, w, 3), np.uint8))
        corners = np.sort(rng.integers(0, [h + 1, w + 1], (4, 2, 2)), axis=1)
        corners[:, 1] += corners[:, 0] == corners[:, 1]  # At least a pixel: [y0, x0, y1, x1].
        pixel_boxes = np.concatenate([np.minimum(corners.reshape(4, 4), [h - 1, w - 1, h, w]),
                                      [[0, 0, h, w]]])
        image_masks, image_boxes = _masks_and_boxes(h, w, pixel_boxes)
        masks.append(image_masks)
        boxes.append(tf.constant(image_boxes))
    num_dropped = num_clipped = 0
    for center in [(16, 20), (7, 33), (25, 6), (0, 0), (32, 40), (0, 17)]:
        canvas, mosaic_boxes, keep, clipped = (t.numpy() for t in augment.mosaic(
            [tf.constant(image) for image in images], boxes, tf.constant(center),
            output_size=MOSAIC_SIZE, min_visible=0.5, fill=MOSAIC_FILL,
        ))
        want_canvas, want_keep, want_clipped, want_boxes = _numpy_mosaic(
            images, masks, center, size=MOSAIC_SIZE, min_visible=0.5)
        np.testing.assert_array_equal(canvas, want_canvas, err_msg=str(center))
        np.testing.assert_array_equal(keep, want_keep, err_msg=str(center))
        np.testing.assert_array_equal(clipped, want_clipped, err_msg=str(center))
        np.testing.assert_allclose(mosaic_boxes, want_boxes, atol=1e-6, err_msg=str(center))
        num_dropped += (~keep).sum()
        num_clipped += clipped.sum()
    assert num_dropped > 0 and num_clipped > 0


def test_mosaic_draws_its_centre_in_the_middle_of_the_canvas_with_its_probability():
    draws = [augment.draw_mosaic(_key(i), probability=0.3, output_size=(100, 200))
             for i in range(200)]
    on = np.array([bool(d[0]) for d in draws])
    centers = np.array([d[1].numpy() for d in draws])
    assert 0.2 < on.mean() < 0.4
    assert np.all((centers >= [20, 40]) & (centers <= [80, 160]))
    assert np.all(centers.min(axis=0) < [30, 60]) and np.all(centers.max(axis=0) > [70, 140])


def _gray(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("factor", [0.0, 0.6, 1.0, 1.7])
def test_brightness_contrast_and_saturation_follow_their_formulas(factor):
    image = np.random.default_rng(5).uniform(0, 255, (6, 7, 3))
    tensor = tf.constant(image, tf.float32)
    brightness = augment.adjust_brightness(tensor, factor)
    np.testing.assert_allclose(brightness, np.clip(factor * image, 0, 255), atol=1e-3)
    mean = _gray(image).mean()
    contrast = augment.adjust_contrast(tensor, factor)
    np.testing.assert_allclose(contrast, np.clip(mean + factor * (image - mean), 0, 255),
                               atol=1e-3)
    gray = _gray(image)[..., None]
    saturation = augment.adjust_saturation(tensor, factor)
    np.testing.assert_allclose(saturation, np.clip(gray + factor * (image - gray), 0, 255),
                               atol=1e-3)


@pytest.mark.parametrize("delta", [-0.4, -0.05, 0.1, 0.5])
def test_hue_turns_the_hsv_hue(delta):
    image = np.random.default_rng(6).uniform(0, 255, (5, 6, 3))
    expected = np.empty_like(image)
    for index in np.ndindex(image.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(image[index] / 255))
        expected[index] = np.array(colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)) * 255
    turned = augment.adjust_hue(tf.constant(image, tf.float32), delta)
    np.testing.assert_allclose(turned, expected, atol=0.05)


def test_color_jitter_draws_factors_in_the_strength_range():
    image = tf.constant(np.random.default_rng(7).uniform(20, 120, (4, 5, 3)), tf.float32)
    factors = []
    for i in range(40):
        jittered = augment.color_jitter(image, _key(i), brightness=0.4)
        ratio = (jittered / image).numpy()
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # one factor per image
        factors.append(ratio.flat[0])
    assert 0.6 <= min(factors) < 0.75 and 1.25 < max(factors) <= 1.4
    np.testing.assert_array_equal(augment.color_jitter(image, _key(0)), image)  # all off


@pytest.mark.parametrize("quality", [20, 75])
def test_jpeg_recompression_is_pillows_jpeg_at_that_quality(quality):
    # A smooth image, as photographs are.
    y, x = np.mgrid[0:32, 0:48]
    image = np.stack([128 + 100 * np.sin(x / 5), 128 + 80 * np.cos(y / 7), (x + y) * 3], -1)
    image = np.clip(image, 0, 255).round().astype(np.uint8)

    def pillow(quality):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
        return np.asarray(Image.open(buffer), np.float64)

    recompressed = augment.jpeg_recompress(tf.constant(image, tf.float32), quality).numpy()
    assert np.abs(pillow(quality) - image).mean() > 2.0  # JPEG's own error
    # The decoders differ (TensorFlow's upsamples chroma otherwise) by about one gray level.
    distance = np.abs(recompressed - pillow(quality)).mean()
    others = [np.abs(recompressed - pillow(q)).mean() for q in (quality - 5, quality + 5)]
    assert distance < 1.25 and distance < 0.7 * min(others)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"brightness": 1.0}, "brightness"),
        ({"hue": 0.6}, "hue"),
        ({"jpeg_quality": (90, 40)}, "jpeg_quality"),
        ({"safe_crop": (0.0, 1.0)}, "safe_crop"),
        ({"safe_crop_min_visible": 0.0}, "safe_crop_min_visible"),
        ({"mosaic": 1.5}, "mosaic"),
    ],
)
def test_invalid_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmentations(**kwargs)


# ----------------------------------------------------------------------------------------------
# In the training pipeline.

SQUARE = 64  # Landscape shapes images turned a quarter still fit, at another scale.


def test_pipeline_flips_and_turns_the_boxes_with_the_pixels(small_builder):
    augmentations = Augmentations(vertical_flip=True, rotate90=True)
    batches = _train_batches(small_builder, 3, per_device_batch_size=2, image_size=SQUARE,
                             horizontal_flip=False, augmentations=augmentations)
    flat = _flat({k: np.concatenate([b[k] for b in batches]) for k in KEYS})
    seen = set()
    for image, boxes, scale, image_id in zip(
        flat["image"], flat["boxes"], flat["scale"], flat["image_id"], strict=True
    ):
        source = _source(small_builder, "train", image_id)
        pixels = _pixels(image)
        matches = []
        for flip, k in itertools.product((False, True), range(4)):
            transformed = np.rot90(source["image"][::-1] if flip else source["image"], k)
            size = (round(transformed.shape[0] * scale), round(transformed.shape[1] * scale))
            resized = tf.image.resize(transformed.astype(np.float32), size).numpy()
            if np.allclose(pixels[: size[0], : size[1]], resized, atol=1e-2):
                matches.append((flip, k))
        assert len(matches) >= 1
        flip, k = matches[0]
        seen.add((flip, k))
        num = len(source["label"])
        for box, mask in zip(boxes[:num], source["mask"], strict=True):
            expected = _mask_extent_xyxy(np.rot90(mask[::-1] if flip else mask, k)) * scale
            np.testing.assert_allclose(box, expected, atol=1e-3)
    assert len(seen) >= 4


def test_pipeline_counts_the_objects_a_safe_crop_drops_and_clips(small_builder):
    augmentations = Augmentations(safe_crop=(0.4, 0.8), safe_crop_min_visible=0.5)
    iterator = data.create_train_iterator(
        small_builder, image_size=SMALL_SETTINGS["image_size"], max_boxes=MAX_BOXES,
        per_device_batch_size=2, seed=0, augmentations=augmentations,
    )
    batches = list(itertools.islice(iterator, 3))  # one epoch
    flat = _flat({k: np.concatenate([b[k] for b in batches]) for k in KEYS})
    num_source = sum(len(_source(small_builder, "train", i)["label"]) for i in flat["image_id"])
    num_kept = int(np.sum(flat["labels"] >= 0))
    assert iterator.num_dropped_boxes == num_source - num_kept > 0
    assert 0 < iterator.num_clipped_boxes <= num_kept
    _check_format(batches[0], 2, SMALL_SETTINGS["image_size"])


def test_pipeline_mosaic_is_the_image_and_the_next_three_of_the_stream(small_builder):
    # The images fit the batch at scale 1: the canvas is the batch image, its pixels its boxes'.
    height, width = SMALL_SETTINGS["image_size"]
    iterator = data.create_train_iterator(
        small_builder, image_size=(height, width), max_boxes=4 * MAX_BOXES,
        per_device_batch_size=2, seed=0, horizontal_flip=False,
        augmentations=Augmentations(mosaic=1.0, safe_crop_min_visible=0.5),
    )
    batches = list(itertools.islice(iterator, 2))
    flat = _flat({k: np.concatenate([b[k] for b in batches]) for k in KEYS})
    sources = [_source(small_builder, "train", i) for i in flat["image_id"]]
    num_dropped = 0
    for j in range(len(sources) - 3):
        quartet = sources[j : j + 4]
        images = [source["image"] for source in quartet]
        masks = [_masks_and_boxes(height, width, np.round(
            source["pixel_boxes"][:, [1, 0, 3, 2]]).astype(int))[0] for source in quartet]
        pixels = _pixels(flat["image"][j])
        centers = [(cy, cx) for cy in range(round(0.2 * height), round(0.8 * height) + 1)
                   for cx in range(round(0.2 * width), round(0.8 * width) + 1)
                   if np.allclose(pixels[0, 0], images[0][height - cy, width - cx], atol=1e-2)]
        matches = [center for center in centers if np.allclose(
            pixels, _numpy_mosaic(images, masks, center, size=(height, width), min_visible=0.5)[0],
            atol=1e-2)]
        assert len(matches) == 1, matches
        _, keep, _, boxes = _numpy_mosaic(images, masks, matches[0], size=(height, width),
                                          min_visible=0.5)
        num = int(keep.sum())
        np.testing.assert_allclose(flat["boxes"][j][:num],
                                   boxes[:, [1, 0, 3, 2]] * [width, height, width, height],
                                   atol=1e-3)
        labels = np.concatenate([source["label"] for source in quartet])[keep]
        np.testing.assert_array_equal(flat["labels"][j][:num], labels)
        assert np.all(flat["labels"][j][num:] == -1) and flat["scale"][j] == 1.0
        num_dropped += (~keep).sum()
    assert num_dropped > 0


def _assert_same_batches(expected: list[dict], batches: list[dict]) -> None:
    for want, batch in zip(expected, batches, strict=True):
        for key in KEYS:
            np.testing.assert_array_equal(batch[key], want[key], err_msg=key)


@pytest.mark.parametrize("shuffle_buffer_size", [5, 10_000])
def test_resuming_with_every_augmentation_yields_the_batches_of_an_uninterrupted_run(
    small_builder, shuffle_buffer_size
):
    kwargs = {"augmentations": ALL_ON, "scale_jitter": (0.8, 1.2),
              "shuffle_buffer_size": shuffle_buffer_size}
    full = _train_batches(small_builder, 8, **kwargs)  # 6 batches per epoch
    for batch in full:
        _check_format(batch, 1, SMALL_SETTINGS["image_size"])
    for start_step in (3, 7):
        _assert_same_batches(
            full[start_step:],
            _train_batches(small_builder, 8 - start_step, start_step=start_step, **kwargs),
        )


def test_every_augmentation_changes_the_batches_and_all_off_changes_nothing(small_builder):
    plain = _train_batches(small_builder, 1, per_device_batch_size=2)
    _assert_same_batches(plain, _train_batches(small_builder, 1, per_device_batch_size=2,
                                               augmentations=Augmentations()))
    for name, value in (("vertical_flip", True), ("rotate90", True), ("brightness", 0.5),
                        ("contrast", 0.5), ("saturation", 0.5), ("hue", 0.2),
                        ("jpeg_quality", (10, 20)), ("safe_crop", (0.5, 0.7)),
                        ("mosaic", 1.0)):
        augmented = _train_batches(small_builder, 1, per_device_batch_size=2,
                                   augmentations=Augmentations(**{name: value}))
        assert not np.array_equal(augmented[0]["image"], plain[0]["image"]), name
        np.testing.assert_array_equal(augmented[0]["image_id"], plain[0]["image_id"])


def test_registry_passes_the_augmentation_fields(small_builder, small_data_dir):
    fields = {"vertical_flip": True, "rotate90": True, "brightness": 0.2, "contrast": 0.2,
              "saturation": 0.2, "hue": 0.02, "jpeg_quality": (50, 90), "safe_crop": (0.5, 1.0),
              "safe_crop_min_visible": 0.7, "mosaic": 0.5}
    assert set(fields) == set(data.AUGMENTATION_FIELDS)
    dataset = data.build(dataset_config(
        name="shapes", image_size=SMALL_SETTINGS["image_size"], max_boxes=MAX_BOXES,
        data_dir=small_data_dir, builder_kwargs=SMALL_SETTINGS, **fields,
    ))
    expected = _train_batches(small_builder, 2, per_device_batch_size=2, scale_jitter=(1.0, 1.0),
                              augmentations=Augmentations(**fields))
    _assert_same_batches(expected, list(itertools.islice(dataset.train_iterator(2, seed=0), 2)))


def test_registry_reports_a_bad_augmentation_field_before_reading_anything():
    with pytest.raises(ValueError, match="hue is 0.9"):
        data.build(dataset_config(name="shapes", builder_kwargs={}, hue=0.9))
