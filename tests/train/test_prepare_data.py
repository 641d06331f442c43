"""Tests of train/prepare_data.py: the command that prepares real data sets ahead of training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from focaljax.data import CocoFolder
from tests.data.test_coco_folder import make_source
from train.prepare_data import make_builder, parse_splits, prepare

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train.prepare_data", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_command_prepares_a_folder_and_prints_what_it_changed(tmp_path):
    splits = make_source(tmp_path / "src")
    result = _run(
        "--dataset=coco_folder", "--name=cli_data", f"--data_dir={tmp_path / 'tfds'}",
        f"--images=train={splits['train'][0]}", f"--annotations=train={splits['train'][1]}",
        f"--images=validation={splits['validation'][0]}",
        f"--annotations=validation={splits['validation'][1]}",
    )
    assert result.returncode == 0, result.stderr
    assert "train: 3 images (1 without objects), 3 objects (1 ignore regions); 1 boxes clipped" \
        in result.stdout
    assert "sub/b.jpg annotation 3: box [-5, 4, 15, 14] (xyxy) clipped" in result.stdout
    assert "c.png annotation 4: box [5, 5, 15, 5] (xyxy) has no area" in result.stdout
    assert CocoFolder(config="cli_data", data_dir=str(tmp_path / "tfds")).is_prepared()


def test_command_reports_a_missing_source_folder_without_a_traceback(tmp_path):
    result = _run("--dataset=coco", f"--source_dir={tmp_path / 'nowhere'}",
                  f"--data_dir={tmp_path / 'tfds'}")
    assert result.returncode == 1
    assert "error: COCO 2017 folder" in result.stderr
    assert "annotations/instances_train2017.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_returns_the_reports_and_leaves_a_prepared_data_set_alone(tmp_path):
    splits = make_source(tmp_path / "src")
    builder = make_builder("coco_folder", data_dir=str(tmp_path / "tfds"), name="again",
                           splits=splits)
    first = prepare(builder)
    assert (first["train"].clipped_boxes, first["train"].dropped_boxes) == (1, 1)
    prepared = make_builder("coco_folder", data_dir=str(tmp_path / "tfds"), name="again",
                            splits={"train": ("/gone", "/gone.json")})
    assert prepare(prepared) == first


def test_splits_pair_images_and_annotations_by_name():
    assert parse_splits(["train=/i/t", "validation=/i/v=1"], ["validation=/a/v.json",
                                                              "train=/a/t.json"]) == {
        "train": ("/i/t", "/a/t.json"), "validation": ("/i/v=1", "/a/v.json")}


@pytest.mark.parametrize(
    ("images", "annotations", "message"),
    [
        (["train"], [], r"--images=train: expected SPLIT=PATH"),
        (["train=/i"], [], r"splits with only \{'train': \['images'\]\}"),
    ],
)
def test_bad_split_flags_are_explained(images, annotations, message):
    with pytest.raises(ValueError, match=message):
        parse_splits(images, annotations)


@pytest.mark.parametrize(
    ("dataset", "kwargs", "message"),
    [
        ("coco", {}, "needs --source_dir"),
        ("voc", {"source_dir": ""}, "needs --source_dir"),
        ("coco_folder", {"name": "x"}, "needs --name and, per split"),
    ],
)
def test_missing_flags_are_explained(dataset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_builder(dataset, **kwargs)
