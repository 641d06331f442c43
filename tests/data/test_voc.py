"""Tests of focaljax/data/voc.py: PASCAL VOC 2007 prepared from a tiny local VOCdevkit (extracted,
and as the official tar archives), read back through the input pipeline and scored by voc_map."""

from __future__ import annotations

import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from focaljax import data
from focaljax.data import VocDetection, create_train_iterator, source_reports, voc_ground_truth
from focaljax.evaluation.voc import voc_map
from tests.data.conftest import dataset_config
from tests.data.fake_sources import VOC2007_DEVKIT as DEVKIT
from tests.data.fake_sources import voc_annotation, write_voc_source

LABELS = VocDetection(config="2007").info.features["objects"]["label"].names
# image: (split list, width, height, [(label, (xmin, ymin, xmax, ymax) as in the XML, difficult)])
IMAGES = {
    "000005": ("train", 64, 48, [("dog", (5, 7, 20, 30), False), ("person", (30, 10, 50, 40), True),
                                 ("car", (40, 20, 70, 48), False)]),  # the car is clipped
    "000007": ("train", 50, 40, [("bird", (60, 5, 70, 20), False)]),  # outside: dropped
    "000009": ("val", 64, 64, [("cat", (1, 1, 64, 64), False)]),
    "000012": ("test", 40, 60, [("dog", (2, 3, 20, 30), False), ("dog", (21, 30, 39, 58), True)]),
}
# What the train split holds: image id -> [(label, continuous xyxy pixels, difficult)].
EXPECTED_TRAIN = {
    5: [("dog", (4, 6, 20, 30), False), ("person", (29, 9, 50, 40), True),
        ("car", (39, 19, 64, 48), False)],
    7: [],
}
DOWNLOAD_CONFIG = tfds.download.DownloadConfig(try_download_gcs=False)


def _prepare(source_dir: Path, data_dir: Path) -> VocDetection:
    builder = VocDetection(config="2007", source_dir=str(source_dir), data_dir=str(data_dir))
    builder.download_and_prepare(download_config=DOWNLOAD_CONFIG)
    return builder


def _records(builder, split: str) -> dict[int, dict]:
    return {int(e["image/id"]): e for e in tfds.as_numpy(builder.as_dataset(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}))}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_voc_source(tmp_path_factory.mktemp("voc"), IMAGES)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, source) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    _prepare(source, data_dir)
    return data_dir


def _dataset(data_dir: Path, **overrides) -> data.DetectionDataset:
    return data.build(dataset_config(**{
        "name": "voc", "image_size": (64, 64), "max_boxes": 4, "data_dir": str(data_dir),
        "builder_kwargs": {"config": "2007"}, "eval_split": "train", **overrides,
    }))


def test_prepared_splits_and_detection_features(data_dir):
    builder = VocDetection(config="2007", data_dir=str(data_dir))
    assert builder.is_prepared()
    assert builder.info.full_name == "voc_detection/2007/5.0.0"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 2, "validation": 1, "test": 1}
    record = _records(builder, "train")[5]
    assert record["image/filename"] == b"000005.jpg"
    objects = record["objects"]
    assert [LABELS[i] for i in objects["label"]] == ["dog", "person", "car"]
    assert objects["is_difficult"].tolist() == [False, True, False]
    np.testing.assert_array_equal(objects["is_crowd"], objects["is_difficult"])
    assert objects["is_truncated"].all()
    assert [LABELS[i] for i in record["labels_no_difficult"]] == ["car", "dog"]


def test_report_counts_clipped_dropped_and_difficult(data_dir):
    train = source_reports(VocDetection(config="2007", data_dir=str(data_dir)))["train"]
    assert (train.images, train.images_without_objects, train.objects, train.ignore_regions) == (
        2, 1, 3, 1)
    assert (train.clipped_boxes, train.dropped_boxes) == (1, 1)
    assert any("000005.xml object 2" in n and "clipped" in n for n in train.notes)
    assert any("000007.xml object 0" in n and "dropped" in n for n in train.notes)


def test_batches_hold_continuous_boxes_and_difficult_as_ignore_regions(data_dir):
    dataset = _dataset(data_dir)
    assert dataset.info.num_classes == 20
    (batch,) = list(dataset.eval_iterator(per_device_batch_size=1))
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
    assert sorted(flat["image_id"][flat["valid"]].tolist()) == [5, 7]
    for i in np.flatnonzero(flat["valid"]):
        expected = EXPECTED_TRAIN[int(flat["image_id"][i])]
        real = flat["labels"][i] >= 0
        np.testing.assert_allclose(
            flat["boxes"][i][real] / flat["scale"][i],
            np.array([box for _, box, _ in expected], np.float32).reshape(-1, 4), atol=1e-3,
        )
        assert [LABELS[j] for j in flat["labels"][i][real]] == [label for label, _, _ in expected]
        assert flat["is_crowd"][i][real].tolist() == [d for _, _, d in expected]


def test_difficult_objects_are_left_out_of_voc_map(data_dir):
    dataset = _dataset(data_dir)
    image_ids, truths = voc_ground_truth(dataset.coco_ground_truth("test"),
                                        dataset.info.category_ids)
    assert image_ids == [12]
    (truth,) = truths
    np.testing.assert_allclose(truth["boxes"], [[1, 2, 20, 30], [20, 29, 39, 58]], atol=1e-3)
    dog = LABELS.index("dog")
    assert truth["labels"].tolist() == [dog, dog]
    assert truth["difficult"].tolist() == [False, True]

    def ap(detected_rows, scores, truths=truths):
        detections = [{"boxes": truth["boxes"][detected_rows], "scores": np.array(scores),
                       "classes": np.full(len(scores), dog)}]
        return voc_map(truths, detections)["per_class_AP"][dog]

    # Missing the difficult dog costs nothing, and detecting it first is no false positive.
    assert ap([0], [0.9]) == 1.0
    assert ap([1, 0], [0.95, 0.9]) == 1.0
    counted = [{**truth, "difficult": np.zeros(2, bool)}]
    assert math.isclose(ap([0], [0.9], counted), 0.5)


def test_train_plus_validation_split_is_read(data_dir):
    builder = VocDetection(config="2007", data_dir=str(data_dir))
    batch = next(create_train_iterator(builder, split="train+validation", image_size=64,
                                       max_boxes=4, per_device_batch_size=1, seed=0))
    assert set(batch["image_id"].ravel().tolist()) <= {5, 7, 9}


def test_official_archives_give_the_same_data_set(tmp_path, source, data_dir):
    archives = tmp_path / "archives"
    archives.mkdir()
    for archive, splits in (("VOCtrainval_06-Nov-2007.tar", ("train", "val")),
                            ("VOCtest_06-Nov-2007.tar", ("test",))):
        with tarfile.open(archives / archive, "w") as tar:
            for split in splits:
                image_list = source / DEVKIT / "ImageSets" / "Main" / f"{split}.txt"
                tar.add(image_list, f"{DEVKIT}/ImageSets/Main/{split}.txt")
                for name in image_list.read_text().split():
                    for folder, ext in (("Annotations", "xml"), ("JPEGImages", "jpg")):
                        tar.add(source / DEVKIT / folder / f"{name}.{ext}",
                                f"{DEVKIT}/{folder}/{name}.{ext}")
    from_archives = _prepare(archives, tmp_path / "tfds")
    from_folders = VocDetection(config="2007", data_dir=str(data_dir))
    for split in ("train", "validation", "test"):
        expected, found = _records(from_folders, split), _records(from_archives, split)
        assert sorted(found) == sorted(expected)
        for image_id, record in found.items():
            assert record["image"] == expected[image_id]["image"]
            for key in ("bbox", "label", "is_crowd"):
                np.testing.assert_array_equal(record["objects"][key],
                                              expected[image_id]["objects"][key])


def test_missing_source_folder_names_it_and_shows_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"(?s)nowhere does not exist.*VOCdevkit/VOC2007/.*ImageSets/Main"):
        _prepare(tmp_path / "nowhere", tmp_path / "tfds")


def test_missing_image_list_is_named(tmp_path, source):
    shutil.copytree(source, tmp_path / "voc")
    (tmp_path / "voc" / DEVKIT / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"validation split: .*ImageSets/Main/val\.txt"):
        _prepare(tmp_path / "voc", tmp_path / "tfds")


@pytest.mark.parametrize(
    ("folder", "file", "error", "message"),
    [
        ("Annotations", "000009.xml", FileNotFoundError,
         r"annotation of 000009 \(listed in .*val\.txt\) .*000009\.xml does not exist"),
        ("JPEGImages", "000009.jpg", FileNotFoundError,
         r"image .*000009\.jpg, named in .*000009\.xml, does not exist"),
    ],
)
def test_missing_file_of_a_listed_image_is_named(tmp_path, source, folder, file, error, message):
    shutil.copytree(source, tmp_path / "voc")
    (tmp_path / "voc" / DEVKIT / folder / file).unlink()
    with pytest.raises(error, match=message):
        _prepare(tmp_path / "voc", tmp_path / "tfds")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("<annotation><size>", r"cannot parse the annotation .*000009\.xml"),
        (voc_annotation("000009", 64, 64, [("unicorn", (1, 1, 5, 5), False)]),
         r"000009\.xml: object 0 is a 'unicorn', expected one of \['aeroplane'"),
    ],
)
def test_bad_annotation_is_named(tmp_path, source, content, message):
    shutil.copytree(source, tmp_path / "voc")
    (tmp_path / "voc" / DEVKIT / "Annotations" / "000009.xml").write_text(content)
    with pytest.raises(ValueError, match=message):
        _prepare(tmp_path / "voc", tmp_path / "tfds")
