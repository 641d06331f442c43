"""Tests of the tf.data input pipeline and the data set registry: focaljax/data/pipeline.py and
focaljax/data/__init__.py, on the small "shapes" data set of conftest.py (48x64 images)."""

import itertools
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO

from focaljax import data
from focaljax.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Shapes,
    coco_ground_truth,
    create_eval_iterator,
    create_train_iterator,
    generate_example,
    shapes_config,
)
from tests.data.conftest import SMALL_SETTINGS, dataset_config

NUM_DEVICES = 4  # tests/conftest.py
HEIGHT, WIDTH = SMALL_SETTINGS["image_size"]
NUM_TRAIN = SMALL_SETTINGS["num_train"]
NUM_VALIDATION = SMALL_SETTINGS["num_validation"]
MAX_BOXES = 8  # more than max_objects (6): no truncation unless a test asks for it
KEYS = {"image", "boxes", "labels", "is_crowd", "image_id", "scale", "valid"}


def _source(builder, split: str, image_id: int) -> dict:
    """The generated example behind `image_id`, with its boxes as xyxy original pixels."""
    example = generate_example(builder.builder_config, split, image_id - 1)
    ymin, xmin, ymax, xmax = (example["bbox"].astype(np.float64) * [HEIGHT, WIDTH, HEIGHT, WIDTH]).T
    example["pixel_boxes"] = np.stack([xmin, ymin, xmax, ymax], axis=1)
    return example


def _pixels(image: np.ndarray) -> np.ndarray:
    """Undoes the normalization: float [.., 3] in 0..255."""
    return (image * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0


def _flat(batch: dict) -> dict:
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


def _mask_extent_xyxy(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)


def _eval_batches(builder, per_device_batch_size=1, **kwargs) -> list[dict]:
    kwargs.setdefault("image_size", (HEIGHT, WIDTH))
    kwargs.setdefault("max_boxes", MAX_BOXES)
    return list(
        create_eval_iterator(builder, per_device_batch_size=per_device_batch_size, **kwargs)
    )


def _train_batches(builder, num_batches, per_device_batch_size=1, **kwargs) -> list[dict]:
    kwargs.setdefault("image_size", (HEIGHT, WIDTH))
    kwargs.setdefault("max_boxes", MAX_BOXES)
    kwargs.setdefault("seed", 0)
    iterator = create_train_iterator(
        builder, per_device_batch_size=per_device_batch_size, **kwargs
    )
    return list(itertools.islice(iterator, num_batches))


def _check_format(batch: dict, per_device_batch_size: int, image_size: tuple[int, int]):
    assert set(batch) == KEYS
    lead = (NUM_DEVICES, per_device_batch_size)
    expected = {
        "image": (np.float32, (*lead, *image_size, 3)),
        "boxes": (np.float32, (*lead, MAX_BOXES, 4)),
        "labels": (np.int32, (*lead, MAX_BOXES)),
        "is_crowd": (np.bool_, (*lead, MAX_BOXES)),
        "image_id": (np.int32, lead),
        "scale": (np.float32, lead),
        "valid": (np.bool_, lead),
    }
    for key, (dtype, shape) in expected.items():
        assert batch[key].dtype == dtype, key
        assert batch[key].shape == shape, key
    padding_rows = batch["labels"] == -1
    assert np.all(batch["boxes"][padding_rows] == 0)
    assert not batch["is_crowd"].any()
    real_boxes = batch["boxes"][~padding_rows]
    assert np.all(real_boxes[:, 2:] > real_boxes[:, :2])


def test_train_batches_have_the_documented_format(small_builder):
    batch = _train_batches(small_builder, 1, per_device_batch_size=2, image_size=(56, 72))[0]
    _check_format(batch, 2, (56, 72))
    assert batch["valid"].all()
    assert set(batch["image_id"].ravel()) <= set(range(1, NUM_TRAIN + 1))
    assert jax.local_device_count() == NUM_DEVICES


@pytest.mark.parametrize("per_device_batch_size", [1, 3])
def test_eval_visits_every_example_once_in_order_and_masks_the_padding(
    small_builder, per_device_batch_size
):
    batches = _eval_batches(small_builder, per_device_batch_size)
    host_batch = NUM_DEVICES * per_device_batch_size
    assert len(batches) == -(-NUM_VALIDATION // host_batch)
    for batch in batches:
        _check_format(batch, per_device_batch_size, (HEIGHT, WIDTH))
    flat = _flat({k: np.concatenate([b[k] for b in batches]) for k in KEYS})
    valid = flat["valid"]
    np.testing.assert_array_equal(flat["image_id"][valid], np.arange(1, NUM_VALIDATION + 1))
    assert np.all(valid[:NUM_VALIDATION]) and not np.any(valid[NUM_VALIDATION:])
    assert np.sum(~valid) == len(batches) * host_batch - NUM_VALIDATION
    assert np.all(flat["image_id"][~valid] == -1)
    assert np.all(flat["labels"][~valid] == -1)
    assert np.all(flat["image"][~valid] == 0)
    assert np.all(flat["scale"][~valid] == 1)
    for image_id, boxes, labels in zip(
        flat["image_id"][valid], flat["boxes"][valid], flat["labels"][valid], strict=True
    ):
        source = _source(small_builder, "validation", image_id)
        num = len(source["label"])
        np.testing.assert_array_equal(labels[:num], source["label"])
        assert np.all(labels[num:] == -1)
        np.testing.assert_allclose(boxes[:num], source["pixel_boxes"], atol=1e-3)


def test_eval_normalizes_with_the_imagenet_mean_and_std(small_builder):
    flat = _flat(_eval_batches(small_builder, 3)[0])
    for image, image_id in zip(flat["image"][:4], flat["image_id"][:4], strict=True):
        original = _source(small_builder, "validation", image_id)["image"]
        np.testing.assert_allclose(_pixels(image), original, atol=1e-3)
    # Normalized images of a cluttered data set are roughly centred.
    assert abs(float(flat["image"][flat["valid"]].mean())) < 1.0


@pytest.mark.parametrize(
    ("image_size", "scale"),
    [((96, 96), 1.5), ((40, 40), 0.625), ((24, 64), 0.5), ((48, 100), 1.0)],
)
def test_resize_keeps_the_aspect_ratio_and_pads_bottom_right(small_builder, image_size, scale):
    flat = _flat(_eval_batches(small_builder, 3, image_size=image_size)[0])
    resized = (round(HEIGHT * scale), round(WIDTH * scale))
    for i in range(3):
        source = _source(small_builder, "validation", flat["image_id"][i])
        assert flat["scale"][i] == pytest.approx(scale)
        image = flat["image"][i]
        assert np.all(image[resized[0]:] == 0) and np.all(image[:, resized[1]:] == 0)
        expected = tf.image.resize(source["image"].astype(np.float32), resized).numpy()
        np.testing.assert_allclose(_pixels(image[: resized[0], : resized[1]]), expected, atol=1e-2)
        num = len(source["label"])
        np.testing.assert_allclose(
            flat["boxes"][i][:num], source["pixel_boxes"] * scale, atol=1e-3
        )


@pytest.mark.parametrize("horizontal_flip", [True, False])
def test_flip_moves_the_boxes_with_the_pixels(small_builder, horizontal_flip):
    # 3 batches of 8: one epoch, every training image once.
    batches = _train_batches(
        small_builder, 3, per_device_batch_size=2, horizontal_flip=horizontal_flip
    )
    flat = _flat({k: np.concatenate([b[k] for b in batches]) for k in KEYS})
    assert sorted(flat["image_id"]) == list(range(1, NUM_TRAIN + 1))
    num_flipped = 0
    for image, boxes, labels, image_id in zip(
        flat["image"], flat["boxes"], flat["labels"], flat["image_id"], strict=True
    ):
        source = _source(small_builder, "train", image_id)
        pixels = _pixels(image)
        flipped = np.allclose(pixels, source["image"][:, ::-1], atol=1e-3)
        assert flipped or np.allclose(pixels, source["image"], atol=1e-3)
        num_flipped += flipped
        num = len(source["label"])
        np.testing.assert_array_equal(labels[:num], source["label"])
        for box, mask in zip(boxes[:num], source["mask"], strict=True):
            np.testing.assert_allclose(
                box, _mask_extent_xyxy(mask[:, ::-1] if flipped else mask), atol=1e-3
            )
    if horizontal_flip:
        assert 0 < num_flipped < NUM_TRAIN
    else:
        assert num_flipped == 0


def test_scale_jitter_crops_image_and_boxes_together(small_builder):
    flat = _flat(
        _train_batches(small_builder, 1, horizontal_flip=False, scale_jitter=(2.0, 2.0))[0]
    )
    np.testing.assert_allclose(flat["scale"], 2.0)
    for i in range(2):
        source = _source(small_builder, "train", flat["image_id"][i])
        enlarged = tf.image.resize(source["image"].astype(np.float32), (2 * HEIGHT, 2 * WIDTH))
        enlarged = enlarged.numpy()
        pixels = _pixels(flat["image"][i])
        offsets = [
            (y, x)
            for y in range(HEIGHT + 1)
            for x in range(WIDTH + 1)
            if np.allclose(enlarged[y : y + HEIGHT, x : x + WIDTH], pixels, atol=1e-2)
        ]
        assert len(offsets) == 1
        offset_y, offset_x = offsets[0]
        expected = source["pixel_boxes"] * 2 - [offset_x, offset_y, offset_x, offset_y]
        expected = np.clip(expected, 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
        kept = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
        num = int(kept.sum())
        np.testing.assert_allclose(flat["boxes"][i][:num], expected[kept], atol=1e-3)
        np.testing.assert_array_equal(flat["labels"][i][:num], source["label"][kept])
        assert np.all(flat["labels"][i][num:] == -1)


@pytest.mark.parametrize("shuffle_buffer_size", [5, 10_000])
def test_resuming_at_start_step_yields_the_batches_of_an_uninterrupted_run(
    small_builder, shuffle_buffer_size
):
    # Host batch 4: 6 batches per epoch.
    full = _train_batches(small_builder, 10, shuffle_buffer_size=shuffle_buffer_size)
    first_epoch = np.concatenate([batch["image_id"].ravel() for batch in full[:6]])
    assert sorted(first_epoch) == list(range(1, NUM_TRAIN + 1))
    for start_step in (4, 7):
        resumed = _train_batches(
            small_builder,
            10 - start_step,
            start_step=start_step,
            shuffle_buffer_size=shuffle_buffer_size,
        )
        for expected, batch in zip(full[start_step:], resumed, strict=True):
            for key in KEYS:
                np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)


def _image_ids(batches: list[dict]) -> np.ndarray:
    return np.concatenate([batch["image_id"].ravel() for batch in batches])


def test_epochs_and_seeds_shuffle_differently(small_builder):
    batches = _train_batches(small_builder, 12)  # two epochs of 6 batches
    first, second = _image_ids(batches[:6]), _image_ids(batches[6:])
    assert sorted(second) == list(range(1, NUM_TRAIN + 1))
    assert not np.array_equal(first, second)
    assert not np.array_equal(_image_ids(_train_batches(small_builder, 6, seed=1)), first)


def _as_process(monkeypatch, index: int, count: int) -> None:
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)


def test_eval_shards_the_split_between_processes(small_builder, monkeypatch):
    shares = []
    for index in range(2):
        _as_process(monkeypatch, index, 2)
        batches = _eval_batches(small_builder, 1)
        assert len(batches) == 2  # both processes run as many steps, though shares are 6 and 5
        flat = _flat({k: np.concatenate([b[k] for b in batches]) for k in KEYS})
        shares.append(flat["image_id"][flat["valid"]])
    assert sorted(np.concatenate(shares)) == list(range(1, NUM_VALIDATION + 1))
    assert sorted(len(share) for share in shares) == [5, 6]


def test_train_shards_the_split_between_processes(small_builder, monkeypatch):
    shares = []
    for index in range(2):
        _as_process(monkeypatch, index, 2)
        # Each process holds 12 examples: an epoch is 3 batches of 4.
        batches = _train_batches(small_builder, 3)
        shares.append(np.concatenate([b["image_id"].ravel() for b in batches]))
    assert sorted(np.concatenate(shares)) == list(range(1, NUM_TRAIN + 1))


def test_images_with_more_than_max_boxes_are_truncated_and_counted(small_builder):
    iterator = create_eval_iterator(
        small_builder, image_size=(HEIGHT, WIDTH), max_boxes=2, per_device_batch_size=3
    )
    flat = _flat(next(iterator))
    counts = [len(_source(small_builder, "validation", i)["label"]) for i in flat["image_id"][:11]]
    assert iterator.num_truncated_images == sum(count > 2 for count in counts) > 0
    assert flat["boxes"].shape[1] == 2
    for image_id, labels in zip(flat["image_id"][:11], flat["labels"][:11], strict=True):
        np.testing.assert_array_equal(
            labels[labels >= 0], _source(small_builder, "validation", image_id)["label"][:2]
        )


def test_coco_ground_truth_matches_the_eval_batches_in_original_pixels(small_builder):
    ground_truth = coco_ground_truth(small_builder, split="validation")
    coco = COCO()
    coco.dataset = ground_truth
    coco.createIndex()
    assert sorted(coco.getImgIds()) == list(range(1, NUM_VALIDATION + 1))
    sizes = {(image["width"], image["height"]) for image in coco.imgs.values()}
    assert sizes == {(WIDTH, HEIGHT)}
    assert [c["id"] for c in ground_truth["categories"]] == [1, 2, 3, 4]
    flat = _flat(_eval_batches(small_builder, 3, image_size=(96, 96))[0])
    num_annotations = 0
    for boxes, labels, image_id, scale in zip(
        flat["boxes"], flat["labels"], flat["image_id"], flat["scale"], strict=True
    ):
        if image_id < 0:
            continue
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[int(image_id)]))
        real = labels >= 0
        assert len(annotations) == real.sum()
        xywh = np.array([a["bbox"] for a in annotations]).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        # The trainer divides predictions by `scale`, so batch boxes / scale must be these.
        np.testing.assert_allclose(boxes[real] / scale, xyxy, atol=1e-3)
        np.testing.assert_array_equal([a["category_id"] for a in annotations], labels[real] + 1)
        source = _source(small_builder, "validation", image_id)
        np.testing.assert_array_equal([a["area"] for a in annotations], source["area"])
        num_annotations += len(annotations)
    assert num_annotations == len(ground_truth["annotations"]) > 0


def test_registry_builds_the_data_set_and_its_iterators(small_builder, small_data_dir):
    dataset = data.build(
        dataset_config(
            name="shapes",
            image_size=(HEIGHT, WIDTH),
            max_boxes=MAX_BOXES,
            data_dir=small_data_dir,
            builder_kwargs=SMALL_SETTINGS,
        )
    )
    assert dataset.info.name == small_builder.info.full_name
    assert dataset.info.num_classes == 4
    assert dataset.info.category_ids == (1, 2, 3, 4)
    assert dataset.info.num_examples == {"train": NUM_TRAIN, "validation": NUM_VALIDATION}
    batch = next(dataset.eval_iterator(3))
    flat = _flat(batch)
    source = _source(small_builder, "validation", flat["image_id"][0])
    # The trainer turns images back into pixels with the data set's mean and std.
    np.testing.assert_allclose(
        flat["image"][0] * dataset.std + np.asarray(dataset.mean), source["image"], atol=1e-3
    )
    assert dataset.coco_ground_truth() is dataset.coco_ground_truth("validation")
    _check_format(next(dataset.train_iterator(2, seed=0, start_step=3)), 2, (HEIGHT, WIDTH))


def test_registry_reads_an_empty_data_dir_as_the_tfds_default():
    dataset = data.build(
        dataset_config(name="shapes", image_size=64, max_boxes=4, data_dir="", builder_kwargs={})
    )
    assert Path(dataset._builder.data_dir_root) != Path(".")


def test_registry_names_every_missing_field_and_the_config_that_declares_them():
    config = dataset_config(name="shapes", builder_kwargs={})
    del config["shuffle_buffer_size"], config["eval_split"]
    with pytest.raises(ValueError, match=r"focaljax.data.default_config\(\)") as error:
        data.build(config)
    message = str(error.value)
    assert "'eval_split'" in message and "'shuffle_buffer_size'" in message
    assert "'train_split'" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": (0, 64)}, "image_size"),
        ({"per_device_batch_size": 0}, "per_device_batch_size"),
        ({"start_step": -1}, "start_step"),
        ({"scale_jitter": (1.5, 1.0)}, "scale_jitter"),
    ],
)
def test_invalid_train_arguments_are_rejected(small_builder, kwargs, message):
    arguments = {"image_size": 64, "max_boxes": 4, "per_device_batch_size": 1, "seed": 0}
    with pytest.raises(ValueError, match=message):
        create_train_iterator(small_builder, **{**arguments, **kwargs})


def test_unprepared_builder_is_rejected(tmp_path):
    builder = Shapes(
        config=shapes_config(image_size=64, num_train=2, num_validation=1, seed=9),
        data_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match="not prepared"):
        create_eval_iterator(builder, image_size=64, max_boxes=4, per_device_batch_size=1)
    assert not any(tmp_path.iterdir())
