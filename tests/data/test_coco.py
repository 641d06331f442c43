"""Tests of focaljax/data/coco.py: COCO 2017 prepared from a tiny local copy of its official layout
(extracted folders, and the official zip archives), read back through the input pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from pycocotools.coco import COCO

from focaljax import data
from focaljax.data import COCO_CATEGORY_IDS, Coco2017, source_reports
from tests.data.conftest import dataset_config
from tests.data.fake_sources import coco_annotation, write_image, write_json, zip_folder

NAMES = [f"category{c}" for c in COCO_CATEGORY_IDS]
# image id: (file name, width, height, PIL mode)
TRAIN_IMAGES = {
    9: ("000000000009.jpg", 64, 48, "RGB"),
    25: ("000000000025.jpg", 40, 56, "RGB"),  # no annotation: kept, without objects
    30: ("000000000030.jpg", 32, 32, "CMYK"),  # TensorFlow cannot decode CMYK JPEG: re-encoded
}
TRAIN_ANNOTATIONS = [
    coco_annotation(1, 9, 1, [4, 6, 20, 10]),
    coco_annotation(2, 9, 90, [30, 20, 10, 10], iscrowd=1),
    coco_annotation(3, 9, 18, [50, 40, 30, 20]),  # reaches past the 64x48 image: clipped
    coco_annotation(4, 9, 3, [10, 10, 0, 5]),  # no width: dropped
    coco_annotation(5, 30, 44, [2, 3, 20, 25]),
]
VALIDATION_IMAGES = {
    139: ("000000000139.jpg", 48, 64, "RGB"),
    285: ("000000000285.jpg", 64, 64, "RGB"),
}
VALIDATION_ANNOTATIONS = [
    coco_annotation(6, 139, 62, [1, 2, 30, 40]),
    coco_annotation(7, 285, 1, [0, 0, 64, 64], iscrowd=1),
]
# What the train split holds: image id -> [(category id, xyxy original pixels, is_crowd)].
EXPECTED_TRAIN = {
    9: [(1, (4, 6, 24, 16), False), (90, (30, 20, 40, 30), True), (18, (50, 40, 64, 48), False)],
    25: [],
    30: [(44, (2, 3, 22, 28), False)],
}
DOWNLOAD_CONFIG = tfds.download.DownloadConfig(try_download_gcs=False)


def _write_split(root: Path, folder: str, json_name: str, images: dict, annotations: list):
    for seed, (file_name, width, height, mode) in enumerate(images.values()):
        write_image(root / folder / file_name, width, height, seed=seed, mode=mode)
    write_json(root / "annotations" / json_name, {
        "info": {}, "licenses": [],
        "images": [{"id": i, "file_name": f, "width": w, "height": h}
                   for i, (f, w, h, _) in images.items()],
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": "s"}
                       for c, n in zip(COCO_CATEGORY_IDS, NAMES, strict=True)],
    })


def make_source(root: Path, train_images=TRAIN_IMAGES, train_annotations=TRAIN_ANNOTATIONS) -> Path:
    _write_split(root, "train2017", "instances_train2017.json", train_images, train_annotations)
    _write_split(root, "val2017", "instances_val2017.json", VALIDATION_IMAGES,
                 VALIDATION_ANNOTATIONS)
    return root


def _prepare(source_dir: Path, data_dir: Path) -> Coco2017:
    builder = Coco2017(source_dir=str(source_dir), data_dir=str(data_dir))
    builder.download_and_prepare(download_config=DOWNLOAD_CONFIG)
    return builder


def _records(builder, split: str) -> dict[int, dict]:
    return {int(e["image/id"]): e for e in tfds.as_numpy(builder.as_dataset(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}))}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, source) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    _prepare(source, data_dir)
    return data_dir


def _dataset(data_dir: Path, source: Path | str = "", **overrides) -> data.DetectionDataset:
    return data.build(dataset_config(**{
        "name": "coco", "image_size": (64, 64), "max_boxes": 4, "data_dir": str(data_dir),
        "builder_kwargs": {"source_dir": str(source)}, "eval_split": "train", **overrides,
    }))


def test_prepared_data_set_is_tfds_coco_2017(data_dir):
    builder = tfds.builder("coco/2017", data_dir=str(data_dir))  # TFDS's own builder reads it
    assert builder.info.full_name == "coco/2017/1.1.0"
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 2
    assert "test" not in builder.info.splits  # no test2017 in the source: no test split
    assert builder.info.features["objects"]["label"].names == NAMES
    records = _records(builder, "train")
    assert sorted(records) == sorted(TRAIN_IMAGES)
    assert records[9]["image/filename"] == b"000000000009.jpg"


def test_report_counts_clipped_dropped_crowd_and_reencoded(data_dir):
    reports = source_reports(Coco2017(data_dir=str(data_dir)))
    train, validation = reports["train"], reports["validation"]
    assert (train.images, train.images_without_objects, train.objects, train.ignore_regions) == (
        3, 1, 4, 1)
    assert (train.clipped_boxes, train.dropped_boxes, train.reencoded_images) == (1, 1, 1)
    assert any("000000000009.jpg annotation 3" in n and "clipped" in n for n in train.notes)
    assert any("000000000009.jpg annotation 4" in n and "dropped" in n for n in train.notes)
    assert (validation.images, validation.objects, validation.ignore_regions) == (2, 2, 1)
    assert (validation.clipped_boxes, validation.dropped_boxes) == (0, 0)


def test_batches_hold_boxes_labels_and_crowd_regions_of_the_annotations(data_dir):
    dataset = _dataset(data_dir)
    assert dataset.info.category_ids == COCO_CATEGORY_IDS
    assert dataset.info.num_classes == 80
    (batch,) = list(dataset.eval_iterator(per_device_batch_size=1))
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
    assert flat["image"].shape == (4, 64, 64, 3)
    assert flat["valid"].tolist().count(True) == 3
    for i in np.flatnonzero(flat["valid"]):
        expected = EXPECTED_TRAIN[int(flat["image_id"][i])]
        real = flat["labels"][i] >= 0
        assert real.sum() == len(expected)
        np.testing.assert_allclose(
            flat["boxes"][i][real] / flat["scale"][i],
            np.array([box for _, box, _ in expected], np.float32).reshape(-1, 4),
            atol=1e-3,
        )
        assert flat["labels"][i][real].tolist() == [COCO_CATEGORY_IDS.index(c) for c, _, _ in
                                                   expected]
        assert flat["is_crowd"][i][real].tolist() == [crowd for _, _, crowd in expected]


def test_ground_truth_has_the_original_category_ids(data_dir):
    ground_truth = _dataset(data_dir).coco_ground_truth("train")
    assert [c["id"] for c in ground_truth["categories"]] == list(COCO_CATEGORY_IDS)
    found = sorted(
        (a["image_id"], a["category_id"], tuple(np.round(a["bbox"], 2)), bool(a["iscrowd"]))
        for a in ground_truth["annotations"]
    )
    expected = sorted(
        (image_id, c, (x1, y1, x2 - x1, y2 - y1), crowd)
        for image_id, objects in EXPECTED_TRAIN.items()
        for c, (x1, y1, x2, y2), crowd in objects
    )
    assert found == expected
    sizes = {i["id"]: (i["width"], i["height"]) for i in ground_truth["images"]}
    assert sizes == {i: (w, h) for i, (_, w, h, _) in TRAIN_IMAGES.items()}
    coco = COCO()
    coco.dataset = ground_truth
    coco.createIndex()
    assert coco.getCatIds() == list(COCO_CATEGORY_IDS)


def test_official_archives_give_the_same_data_set(tmp_path, source, data_dir):
    archives = tmp_path / "archives"
    archives.mkdir()
    for folder, archive in (("train2017", "train2017.zip"), ("val2017", "val2017.zip"),
                            ("annotations", "annotations_trainval2017.zip")):
        zip_folder(source / folder, archives / archive)
    from_archives = _prepare(archives, tmp_path / "tfds")
    from_folders = tfds.builder("coco/2017", data_dir=str(data_dir))
    for split in ("train", "validation"):
        expected, found = _records(from_folders, split), _records(from_archives, split)
        assert sorted(found) == sorted(expected)
        for image_id, record in found.items():
            assert record["image"] == expected[image_id]["image"]
            for key in ("bbox", "label", "is_crowd", "area", "id"):
                np.testing.assert_array_equal(record["objects"][key],
                                              expected[image_id]["objects"][key])


def test_missing_source_folder_names_it_and_shows_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"(?s)nowhere does not exist.*instances_train2017"):
        _prepare(tmp_path / "nowhere", tmp_path / "tfds")


def test_missing_split_names_the_folder_and_archive_looked_for(tmp_path, source):
    shutil.copytree(source, tmp_path / "coco")
    shutil.rmtree(tmp_path / "coco" / "val2017")
    with pytest.raises(FileNotFoundError, match=r"validation split: .*val2017 \(or .*val2017\.zip"):
        _prepare(tmp_path / "coco", tmp_path / "tfds")


def test_annotation_of_a_missing_image_names_the_image_and_the_annotation_file(tmp_path):
    images = {**TRAIN_IMAGES}
    make_source(tmp_path / "coco", train_images=images)
    (tmp_path / "coco" / "train2017" / "000000000025.jpg").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"000000000025\.jpg, named in .*instances_train2017\.json"):
        _prepare(tmp_path / "coco", tmp_path / "tfds")


def test_unreadable_image_is_named(tmp_path):
    make_source(tmp_path / "coco")
    (tmp_path / "coco" / "train2017" / "000000000025.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode the image .*000000000025\.jpg"):
        _prepare(tmp_path / "coco", tmp_path / "tfds")


def test_image_of_another_size_than_annotated_is_named(tmp_path):
    make_source(tmp_path / "coco")
    write_image(tmp_path / "coco" / "train2017" / "000000000009.jpg", 48, 64)
    with pytest.raises(ValueError, match=r"000000000009\.jpg is 48x64 .* says 64x48 .*swapped"):
        _prepare(tmp_path / "coco", tmp_path / "tfds")


def test_other_categories_than_cocos_are_refused(tmp_path):
    make_source(tmp_path / "coco")
    path = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    write_json(path, {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    with pytest.raises(ValueError, match=r"expected COCO's 80 .*coco_folder"):
        _prepare(tmp_path / "coco", tmp_path / "tfds")


def test_without_source_dir_tfds_manual_folder_is_read(tmp_path):
    make_source(tmp_path / "tfds" / "downloads" / "manual")
    builder = Coco2017(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=DOWNLOAD_CONFIG)
    assert builder.info.splits["train"].num_examples == 3


def test_without_source_dir_or_manual_folder_the_error_says_what_to_set(tmp_path):
    dataset = _dataset(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match=r"(?s)no source folder was given: set "
                       r"dataset\.builder_kwargs\.source_dir.*downloads/manual.*instances_train2017"):
        dataset.builder  # noqa: B018 (prepares on first access)
