"""Tiny source files in the official layouts, for the tests of the real-data builders."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int, height: int, *, seed: int = 0, mode: str = "RGB") -> None:
    """A random-noise image of `width` x `height`, in the format of `path`'s extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def coco_annotation(ann_id: int, image_id: int, category_id: int, bbox, iscrowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": iscrowd,
        "segmentation": [],
    }


def zip_folder(folder: Path, archive: Path) -> None:
    """`archive` holding `folder` under its own name, as the official archives do."""
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(folder.parent).as_posix())
