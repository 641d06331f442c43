"""`focaljax.Predictor` with a stub detector whose detections are known exactly: the box of each
pure red, green or blue region of its input. Tiling, batching, single vs list, weights and bad
inputs; the Predictor on a trained workdir is tested in tests/train/test_predict.py."""

from __future__ import annotations

import flax.linen as nn
import flax.serialization
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import focaljax
from focaljax import detectors
from focaljax.errors import ConfigError
from focaljax.inference import Predictor, tile_windows

COLOURS = ("red", "green", "blue")


class _ColourBoxes(nn.Module):
    """Per class c, the pixels whose channel c is above `level` and the others below it (the
    input is normalized: 0 is the mean colour, so black background and zero padding are out)."""

    @nn.compact
    def __call__(self, images, *, train: bool):
        del train
        level = self.param("level", nn.initializers.zeros, ())
        above = images > level
        masks = [above[..., c] & ~jnp.any(jnp.delete(above, c, axis=-1), axis=-1)
                 for c in range(3)]
        return {"masks": jnp.stack(masks, axis=-1)}


def _postprocess(outputs, batch):
    del batch
    masks = outputs["masks"]  # [B, H, W, 3]
    rows, cols = jnp.any(masks, axis=2), jnp.any(masks, axis=1)  # [B, H, 3], [B, W, 3]
    found = jnp.any(rows, axis=1)  # [B, 3]
    height, width = rows.shape[1], cols.shape[1]
    boxes = jnp.stack([
        jnp.argmax(cols, axis=1), jnp.argmax(rows, axis=1),
        width - jnp.argmax(cols[:, ::-1], axis=1), height - jnp.argmax(rows[:, ::-1], axis=1),
    ], axis=-1).astype(jnp.float32)
    order = jnp.argsort(~found, axis=1, stable=True)  # The classes found first.
    return {
        "boxes": jnp.take_along_axis(boxes, order[..., None], axis=1),
        "scores": jnp.take_along_axis(found, order, axis=1).astype(jnp.float32) * 0.9,
        "classes": order.astype(jnp.int32),
        "num_valid": jnp.sum(found, axis=1).astype(jnp.int32),
    }


def _build_colour_boxes(config, *, num_classes, image_size, axis_name):
    del config, image_size, axis_name
    assert num_classes == 3
    return detectors.Detector(
        name="colour_boxes", module=_ColourBoxes(), loss_fn=None, postprocess=_postprocess
    )


def _config(image_size=(64, 64)) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"model": {"name": "colour_boxes"}, "dataset": {"image_size": image_size}}
    )


WEIGHTS = {"params": {"level": np.float32(0.0)}}


@pytest.fixture()
def predictor(monkeypatch) -> Predictor:
    monkeypatch.setitem(detectors.BUILDERS, "colour_boxes", _build_colour_boxes)
    return focaljax.Predictor.from_weights(WEIGHTS, _config(), COLOURS, batch_size=4)


def _paint(image: np.ndarray, colour: str, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1, COLOURS.index(colour)] = 255


def _as_set(detections) -> set[tuple]:
    return {(name, *np.round(box, 3).tolist())
            for name, box in zip(detections.class_names, detections.boxes, strict=True)}


def test_boxes_come_back_in_the_pixels_of_images_of_any_size(predictor):
    image = np.zeros((32, 48, 3), np.uint8)  # Scaled by 4/3 to 43x64, padded to 64x64.
    _paint(image, "green", (6, 3, 18, 15))
    (detections,) = predictor([image])
    assert detections.class_names == ("green",)
    assert detections.scores.tolist() == pytest.approx([0.9])
    # Bilinear resizing blurs the edges by a pixel of the input.
    np.testing.assert_allclose(detections.boxes[0], [6, 3, 18, 15], atol=1.0)


def test_a_single_image_gives_what_it_gives_in_a_list_and_batches_compile_once_per_size(
    predictor
):
    rng = np.random.default_rng(0)
    images = []
    for size in ((64, 64), (40, 80), (100, 30)):
        image = np.zeros((*size, 3), np.uint8)
        x0, y0 = rng.integers(0, 10, 2)
        _paint(image, COLOURS[len(images)], (x0, y0, x0 + 15, y0 + 12))
        images.append(image)

    together = predictor.predict(images)
    alone = [predictor.predict(image) for image in images]

    assert [len(d) for d in together] == [1, 1, 1]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.class_names == b.class_names
    assert predictor.compiled_batch_sizes == (1, 4)  # 3 images padded to 4; 1 alone.
    predictor.predict(images[:1])
    assert predictor.compiled_batch_sizes == (1, 4)
    # A uint8 array [N, H, W, 3] is a list of its images.
    stacked = predictor.predict(np.stack([images[0], images[0]]))
    np.testing.assert_array_equal(stacked[1].boxes, together[0].boxes)


def test_tiles_find_each_object_at_its_place_in_the_image_and_merge_duplicates(predictor):
    # 112x112 in 64x64 tiles overlapping by 16 pixels: tiles start at 0 and 48 on both axes.
    assert tile_windows((112, 112), (64, 64), overlap=0.25) == [
        (0, 0, 64, 64), (0, 48, 64, 112), (48, 0, 112, 64), (48, 48, 112, 112)
    ]
    image = np.zeros((112, 112, 3), np.uint8)
    objects = {
        ("red", 8, 8, 28, 24),       # in the top-left tile only
        ("red", 90, 8, 106, 20),     # top-right only
        ("green", 10, 90, 30, 104),  # bottom-left only
        ("green", 84, 80, 104, 100),  # bottom-right only
        ("blue", 52, 52, 60, 60),    # whole in all four: three duplicates to merge
    }
    for colour, *box in objects:
        _paint(image, colour, box)

    tiled = predictor.predict_tiles(image, overlap=0.25, iou_threshold=0.5)

    # Each tile is seen at its native resolution, so the boxes are exact.
    assert _as_set(tiled) == {(c, *map(float, box)) for c, *box in objects}
    assert len(tiled) == len(objects)
    # Whole, the image is shrunk to 64x64 and the small objects blur.
    assert len(predictor.predict(image)) == 3


def test_an_image_that_fits_in_one_tile_gets_the_untiled_detections(predictor):
    image = np.zeros((50, 60, 3), np.uint8)
    _paint(image, "red", (5, 5, 20, 30))
    _paint(image, "blue", (30, 10, 50, 40))
    whole, tiled = predictor.predict(image), predictor.predict_tiles(image)
    assert len(whole) == 2
    np.testing.assert_array_equal(tiled.boxes, whole.boxes)
    np.testing.assert_array_equal(tiled.scores, whole.scores)
    assert tiled.class_names == whole.class_names


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((8, 8, 3), np.float32), r"^image has dtype float32, expected a NumPy uint8 RGB "
                                          r"array of shape \[height, width, 3\]$"),
        (np.zeros((8, 8), np.uint8), r"^image has shape \(8, 8\), expected .*\[height, width, 3\] "
                                     r"\(convert grayscale or RGBA first"),
        (np.zeros((8, 8, 4), np.uint8), r"^image has shape \(8, 8, 4\), expected .*RGB"),
        (np.zeros((0, 8, 3), np.uint8), r"^image has shape \(0, 8, 3\) and no pixels"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.int64)],
         r"^image 1 has dtype int64, expected a NumPy uint8"),
        ("photo.jpg", r"^images is a str, expected a NumPy uint8 RGB array"),
    ],
)
def test_a_bad_input_is_refused_in_one_line_naming_what_was_expected(predictor, image, message):
    with pytest.raises(ConfigError, match=message) as raised:
        predictor.predict(image)
    assert "\n" not in str(raised.value)


def test_predict_tiles_refuses_parameters_out_of_range(predictor):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ConfigError, match=r"^overlap is 1.0, expected a fraction"):
        predictor.predict_tiles(image, overlap=1.0)
    with pytest.raises(ConfigError, match=r"^tile_size is \(0, 4\)"):
        predictor.predict_tiles(image, tile_size=(0, 4))


def test_weights_come_from_a_msgpack_file_and_must_fit_the_detector(monkeypatch, tmp_path):
    monkeypatch.setitem(detectors.BUILDERS, "colour_boxes", _build_colour_boxes)
    path = tmp_path / "weights.msgpack"
    path.write_bytes(flax.serialization.msgpack_serialize(WEIGHTS))
    image = np.zeros((64, 64, 3), np.uint8)
    _paint(image, "blue", (1, 2, 3, 4))
    from_file = Predictor.from_weights(path, _config(), COLOURS)
    assert from_file(image).boxes.tolist() == [[1, 2, 3, 4]]

    with pytest.raises(ConfigError, match=r"^weights lack params/level \(1 variables missing\)"):
        Predictor.from_weights({"params": {}}, _config(), COLOURS)
    with pytest.raises(ConfigError, match=r"^weights' params/level has shape \(2,\)"):
        Predictor.from_weights({"params": {"level": np.zeros(2)}}, _config(), COLOURS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Predictor.from_weights(tmp_path / "none.msgpack", _config(), COLOURS)
