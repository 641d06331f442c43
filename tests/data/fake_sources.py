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


VOC2007_DEVKIT = "VOCdevkit/VOC2007"


def voc_annotation(name: str, width: int, height: int, objects) -> str:
    """A VOC annotation XML; `objects`: `[(label, (xmin, ymin, xmax, ymax), difficult)]` in VOC's
    inclusive 1-based pixel indices."""
    parts = [f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>"
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for label, (xmin, ymin, xmax, ymax), difficult in objects:
        parts.append(
            f"<object><name>{label}</name><pose>Left</pose><truncated>1</truncated>"
            f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_voc_source(root: Path, images: dict) -> Path:
    """`root` holding a VOCdevkit/VOC2007 folder of `images`: `{name: (image list ("train", "val"
    or "test"), width, height, objects as in voc_annotation)}`."""
    devkit = root / VOC2007_DEVKIT
    (devkit / "Annotations").mkdir(parents=True)
    (devkit / "ImageSets" / "Main").mkdir(parents=True)
    lists: dict[str, list[str]] = {}
    for seed, (name, (split, width, height, objects)) in enumerate(images.items()):
        write_image(devkit / "JPEGImages" / f"{name}.jpg", width, height, seed=seed)
        (devkit / "Annotations" / f"{name}.xml").write_text(
            voc_annotation(name, width, height, objects)
        )
        lists.setdefault(split, []).append(name)
    for split, names in lists.items():
        image_list = devkit / "ImageSets" / "Main" / f"{split}.txt"
        image_list.write_text("".join(f"{n}\n" for n in names))
    return root
