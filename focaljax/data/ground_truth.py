"""The ground truth of a prepared split in the evaluators' formats: COCO's annotation dict
(`coco_ground_truth`, what pycocotools and every focaljax evaluator read) and PASCAL VOC's
boxes with "difficult" flags (`voc_ground_truth`, for `focaljax.evaluation.voc.voc_map`)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from focaljax.data.pipeline import load_builder, read_records
from focaljax.errors import ConfigError


def coco_ground_truth(
    builder_or_name: str | tfds.core.DatasetBuilder,
    *,
    data_dir: str | None = None,
    split: str,
    category_ids: Sequence[int] | None = None,
) -> dict:
    """The ground truth of the whole `split` as a COCO-format annotation dict.

    Boxes are `[x, y, width, height]` in original image pixels; `area` is `objects/area` when the
    data set has it (the visible pixels for "shapes", the segment area for COCO), else the box
    area. Image ids are those of the batches (`image/id`, or the 1-based position in the split).

    Args:
      builder_or_name, data_dir, split: as `create_eval_iterator`.
      category_ids: COCO category id of each contiguous label; default `label + 1`.

    Returns:
      {"info", "images": [{id, width, height, file_name}], "annotations": [{id, image_id,
      category_id, bbox, area, iscrowd}], "categories": [{id, name}]}, loadable by
      `pycocotools.coco.COCO`.
    """
    builder = load_builder(builder_or_name, data_dir=data_dir)
    class_names = builder.info.features["objects"]["label"].names
    if category_ids is None:
        category_ids = [label + 1 for label in range(len(class_names))]
    if len(category_ids) != len(class_names):
        raise ConfigError(
            f"category_ids has {len(category_ids)} entries, expected one per class "
            f"({len(class_names)}: {class_names})"
        )
    images, annotations = [], []
    records = read_records(builder, split, 0)
    for example in tfds.as_numpy(records):
        image_id = int(example["image_id"])
        with Image.open(io.BytesIO(example["image"])) as image:
            width, height = image.size
        filename = example.get("image/filename", b"").decode() or f"{image_id:012d}.png"
        images.append({"id": image_id, "width": width, "height": height, "file_name": filename})
        objects = example["objects"]
        # float32 normalized coordinates: round to 1/1000 pixel to drop their representation error.
        ymin, xmin, ymax, xmax = (
            np.round(c.astype(np.float64) * s, 3)
            for c, s in zip(objects["bbox"].T, (height, width, height, width), strict=True)
        )
        areas = objects.get("area", (xmax - xmin) * (ymax - ymin))
        is_crowd = objects.get("is_crowd", np.zeros(len(xmin), bool))
        for i, label in enumerate(objects["label"]):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_ids[label]),
                    "bbox": [float(xmin[i]), float(ymin[i]), float(xmax[i] - xmin[i]),
                             float(ymax[i] - ymin[i])],
                    "area": float(areas[i]),
                    "iscrowd": int(is_crowd[i]),
                }
            )
    return {
        "info": {"description": f"{builder.info.full_name} {split}"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": int(c), "name": name} for c, name in zip(category_ids, class_names, strict=True)
        ],
    }


def voc_ground_truth(
    ground_truth: Mapping, category_ids: Sequence[int]
) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """The ground truth of a `VocDetection` split in the format of `voc_map`.

    Args:
      ground_truth: its COCO-format ground truth (`DetectionDataset.coco_ground_truth`), where
        `iscrowd` is the "difficult" flag.
      category_ids: the category id of each label (`DatasetInfo.category_ids`).

    Returns:
      The image ids, and for each image `{"boxes": float [M, 4] xyxy original pixels,
      "labels": int [M], "difficult": bool [M]}`.
    """
    label_of = {int(c): label for label, c in enumerate(category_ids)}
    image_ids = [int(image["id"]) for image in ground_truth["images"]]
    per_image: dict[int, list[Mapping]] = {image_id: [] for image_id in image_ids}
    for annotation in ground_truth["annotations"]:
        per_image[int(annotation["image_id"])].append(annotation)
    entries = []
    for image_id in image_ids:
        annotations = per_image[image_id]
        boxes = np.array([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        entries.append({
            "boxes": boxes,
            "labels": np.array([label_of[int(a["category_id"])] for a in annotations], np.int64),
            "difficult": np.array([bool(a["iscrowd"]) for a in annotations], bool),
        })
    return image_ids, entries
