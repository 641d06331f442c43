"""Tests of focaljax/data/coco_folder.py: a user's folder of images with COCO-format JSON files,
with its own categories, prepared, read through the pipeline, and trained on for two steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from focaljax import data
from focaljax.data import IMAGENET_MEAN, IMAGENET_STD, CocoFolder, source_reports
from tests.data.conftest import dataset_config
from tests.data.fake_sources import coco_annotation, write_image, write_json

# Listed out of id order: labels follow the ids, apple (3) -> 0, zebra (7) -> 1, kite (42) -> 2.
CATEGORIES = [{"id": 7, "name": "zebra"}, {"id": 42, "name": "kite"}, {"id": 3, "name": "apple"}]
CATEGORY_IDS = (3, 7, 42)
CLASS_NAMES = ("apple", "zebra", "kite")
# image id: (file name, width, height)
TRAIN_IMAGES = {101: ("a.png", 64, 48), 102: ("sub/b.jpg", 40, 40), 103: ("c.png", 32, 48)}
TRAIN_ANNOTATIONS = [
    coco_annotation(1, 101, 7, [1, 2, 10, 20]),
    coco_annotation(2, 101, 42, [20, 5, 30, 30], iscrowd=1),
    {"id": 3, "image_id": 102, "category_id": 3, "bbox": [-5, 4, 20, 10]},  # clipped; no area
    coco_annotation(4, 103, 7, [5, 5, 10, 0]),  # no height: dropped
]
VALIDATION_IMAGES = {201: ("d.png", 64, 64)}
VALIDATION_ANNOTATIONS = [coco_annotation(5, 201, 3, [10, 10, 20, 20])]
# image id -> [(category id, xyxy original pixels, is_crowd)]
EXPECTED_TRAIN = {
    101: [(7, (1, 2, 11, 22), False), (42, (20, 5, 50, 35), True)],
    102: [(3, (0, 4, 15, 14), False)],
    103: [],
}
DOWNLOAD_CONFIG = tfds.download.DownloadConfig(try_download_gcs=False)


def _coco_json(images: dict, annotations: list, categories=CATEGORIES) -> dict:
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h}
                   for i, (f, w, h) in images.items()],
        "annotations": annotations,
        "categories": categories,
    }


def make_source(root: Path) -> dict[str, tuple[str, str]]:
    """The folder layout of the module docstring; returns the `splits` argument for it."""
    for folder, images in (("train", TRAIN_IMAGES), ("val", VALIDATION_IMAGES)):
        for seed, (file_name, width, height) in enumerate(images.values()):
            write_image(root / "images" / folder / file_name, width, height, seed=seed)
    write_json(root / "annotations" / "train.json", _coco_json(TRAIN_IMAGES, TRAIN_ANNOTATIONS))
    write_json(root / "annotations" / "val.json",
               _coco_json(VALIDATION_IMAGES, VALIDATION_ANNOTATIONS, CATEGORIES[::-1]))
    return {
        "train": (str(root / "images" / "train"), str(root / "annotations" / "train.json")),
        "validation": (str(root / "images" / "val"), str(root / "annotations" / "val.json")),
    }


def _prepare(splits, data_dir: Path, name: str = "my_data") -> CocoFolder:
    builder = CocoFolder(config=name, splits=splits, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=DOWNLOAD_CONFIG)
    return builder


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("my_data")
    make_source(root)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, source) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    _prepare(make_source_splits(source), data_dir)
    return data_dir


def make_source_splits(root: Path) -> dict[str, dict[str, str]]:
    return {
        "train": {"images": str(root / "images" / "train"),
                  "annotations": str(root / "annotations" / "train.json")},
        "validation": {"images": str(root / "images" / "val"),
                       "annotations": str(root / "annotations" / "val.json")},
    }


def folder_config(data_dir: Path, **overrides) -> dict:
    return dataset_config(**{
        "name": "coco_folder", "image_size": (64, 64), "max_boxes": 4, "data_dir": str(data_dir),
        "builder_kwargs": {"name": "my_data"}, "eval_split": "train", **overrides,
    })


def test_categories_and_their_ids_come_from_the_json(data_dir):
    info = data.build(folder_config(data_dir)).info
    assert info.name == "coco_folder/my_data/1.0.0"
    assert (info.class_names, info.category_ids, info.num_classes) == (
        CLASS_NAMES, CATEGORY_IDS, 3)
    assert info.num_examples == {"train": 3, "validation": 1}


def test_report_counts_clipped_dropped_and_crowd(data_dir):
    train = source_reports(CocoFolder(config="my_data", data_dir=str(data_dir)))["train"]
    assert (train.images, train.images_without_objects, train.objects, train.ignore_regions) == (
        3, 1, 3, 1)
    assert (train.clipped_boxes, train.dropped_boxes, train.reencoded_images) == (1, 1, 0)
    assert any("sub/b.jpg annotation 3" in n and "clipped" in n for n in train.notes)


def test_batches_round_trip_pixels_boxes_labels_and_crowd(source, data_dir):
    (batch,) = list(data.build(folder_config(data_dir)).eval_iterator(per_device_batch_size=1))
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
    assert sorted(flat["image_id"][flat["valid"]].tolist()) == sorted(TRAIN_IMAGES)
    for i in np.flatnonzero(flat["valid"]):
        image_id = int(flat["image_id"][i])
        expected = EXPECTED_TRAIN[image_id]
        real = flat["labels"][i] >= 0
        np.testing.assert_allclose(
            flat["boxes"][i][real] / flat["scale"][i],
            np.array([box for _, box, _ in expected], np.float32).reshape(-1, 4), atol=1e-3,
        )
        assert flat["labels"][i][real].tolist() == [CATEGORY_IDS.index(c) for c, _, _ in expected]
        assert flat["is_crowd"][i][real].tolist() == [crowd for _, _, crowd in expected]
        if image_id == 101:  # 64x48 PNG, not resized: the pixels come back exactly
            pixels = (flat["image"][i] * IMAGENET_STD + IMAGENET_MEAN) * 255.0
            original = np.asarray(Image.open(source / "images" / "train" / "a.png"))
            np.testing.assert_allclose(pixels[:48], original, atol=1e-3)
            np.testing.assert_allclose(flat["image"][i][48:], 0.0)


def test_ground_truth_has_the_jsons_category_ids(data_dir):
    ground_truth = data.build(folder_config(data_dir)).coco_ground_truth("validation")
    assert ground_truth["categories"] == [{"id": c, "name": n} for c, n in
                                          zip(CATEGORY_IDS, CLASS_NAMES, strict=True)]
    (annotation,) = ground_truth["annotations"]
    assert (annotation["image_id"], annotation["category_id"]) == (201, 3)
    assert annotation["bbox"] == [10.0, 10.0, 20.0, 20.0]


def test_unprepared_data_set_without_sources_says_what_to_give(tmp_path):
    builder = CocoFolder(config="unknown", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"not prepared .* pass splits="):
        builder.download_and_prepare(download_config=DOWNLOAD_CONFIG)


def test_splits_with_other_categories_are_refused(tmp_path, source):
    shutil.copytree(source, tmp_path / "src")
    write_json(tmp_path / "src" / "annotations" / "val.json",
               _coco_json(VALIDATION_IMAGES, [], CATEGORIES[:2]))
    with pytest.raises(ValueError,
                       match=r"val\.json lists the categories .* every split must list"):
        _prepare(make_source_splits(tmp_path / "src"), tmp_path / "tfds")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("images"), r"train\.json lacks \['images'\]"),
        (lambda d: d["annotations"].append(coco_annotation(9, 999, 3, [1, 1, 2, 2])),
         r"train\.json: annotation 9 is of image 999, which is not in its images"),
        (lambda d: d["annotations"].append(coco_annotation(9, 101, 5, [1, 1, 2, 2])),
         r"train\.json: annotation 9 has category_id 5, not one of \[3, 7, 42\]"),
        (lambda d: d["annotations"].append({"id": 9, "image_id": 101, "category_id": 3,
                                            "bbox": [1, 1, 2]}),
         r"train\.json: annotation 9 has bbox=\[1, 1, 2\], expected \[x, y, width, height\]"),
        (lambda d: d["images"].append(dict(d["images"][0])),
         r"train\.json: image id 101 is listed twice"),
        (lambda d: d["images"][0].update(id="a"),
         r"train\.json: image .* has id='a', expected an int"),
    ],
)
def test_bad_annotation_file_is_named_with_what_is_wrong(tmp_path, source, edit, message):
    shutil.copytree(source, tmp_path / "src")
    path = tmp_path / "src" / "annotations" / "train.json"
    content = json.loads(path.read_text())
    edit(content)
    write_json(path, content)
    with pytest.raises(ValueError, match=message):
        _prepare(make_source_splits(tmp_path / "src"), tmp_path / "tfds")


@pytest.mark.parametrize(
    ("split", "key", "message"),
    [
        ("train", "images", r"(?s)image folder .*nowhere does not exist.*<images>/"),
        ("validation", "annotations", r"(?s)annotation file .*nowhere does not exist.*\.json"),
    ],
)
def test_missing_folder_or_file_is_named_with_the_layout(tmp_path, source, split, key, message):
    splits = make_source_splits(source)
    splits[split][key] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=message):
        _prepare(splits, tmp_path / "tfds")


def test_missing_image_is_named(tmp_path, source):
    shutil.copytree(source, tmp_path / "src")
    (tmp_path / "src" / "images" / "train" / "sub" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"sub/b\.jpg, named in .*train\.json \(image id 102"):
        _prepare(make_source_splits(tmp_path / "src"), tmp_path / "tfds")


@pytest.mark.parametrize("name", ["", "my data", "../up", ".hidden"])
def test_data_set_name_must_be_a_folder_name(name):
    with pytest.raises(ValueError, match="expected letters, digits"):
        CocoFolder(config=name)


def test_unknown_builder_kwargs_are_refused(data_dir):
    config = folder_config(data_dir, builder_kwargs={"name": "my_data", "source_dir": "/x"})
    with pytest.raises(ValueError, match=r"has \['source_dir'\], expected some of"):
        data.build(config)


def test_short_training_run_on_the_folder(tmp_path, source):
    train = pytest.importorskip("train.train")
    from configs import shapes_retinanet

    config = shapes_retinanet.get_config()
    config.dataset.name = "coco_folder"
    config.dataset.data_dir = str(tmp_path / "tfds")
    # Not prepared yet in this data_dir: the trainer prepares it from the sources.
    config.dataset.builder_kwargs = {"name": "my_data", "splits": make_source_splits(source)}
    config.dataset.image_size = (32, 32)
    config.dataset.max_boxes = 4
    config.dataset.eval_split = "validation"
    config.model.max_level = 4
    config.model.fpn_channels = 16
    config.model.head_channels = 16
    config.model.head_convs = 1
    config.model.postprocess.pre_nms_topk = 50
    config.model.postprocess.max_detections = 10
    config.schedule.warmup_steps = 1
    config.batch_size = 4
    config.eval_batch_size = 4
    config.num_train_steps = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 0
    config.num_grid_images = 1
    metrics = train.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert 0.0 <= metrics["AP"] <= 1.0
    assert any(p.name.startswith("detections_step_") for p in (tmp_path / "workdir").iterdir())
