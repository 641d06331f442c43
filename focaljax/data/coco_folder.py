"""A detection data set of your own: a folder of images and a COCO-format annotation JSON per split.

`CocoFolder` is a TFDS builder; `coco_examples` reads one split of COCO-format annotations (it
also reads COCO 2017 itself, see `focaljax.data.coco`).

The categories are those of the JSON files, any number of them and any ids: contiguous label `i`
is the `i`-th category in the order of their ids. Every split must list the same categories. The
category id of each label is kept in the prepared data set's `info.metadata["category_ids"]`, so
that the ground truth and the detections of evaluation carry the JSON's own ids.

Usage::

  builder = CocoFolder(
      config="my_data",  # names the prepared data set: <data_dir>/coco_folder/my_data/1.0.0
      splits={"train": ("images/train", "annotations/train.json"),
              "validation": ("images/val", "annotations/val.json")},
      data_dir="~/tensorflow_datasets",
  )
  builder.download_and_prepare()

or `python -m train.prepare_data --dataset coco_folder --name my_data --images train=... ...`.
Once prepared, `CocoFolder(config="my_data", data_dir=...)` reads it without the sources.

What is read from the JSON (other fields are ignored):

  images       [{"id": int, "file_name": path relative to the image folder, "width", "height"}]
  annotations  [{"id", "image_id", "category_id", "bbox": [x, y, width, height] in pixels,
                 "iscrowd": 0 | 1 (default 0), "area" (default: the box area)}]; may be absent
                 for a split without labels
  categories   [{"id": int, "name": str}]

Crowd annotations become ignore regions (`is_crowd`); images without annotations are kept; boxes
are clipped to their image and boxes without area dropped, as counted in the split's
`focaljax.data.sources.SplitReport`.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from focaljax.data.sources import (
    SplitReport,
    clip_box,
    count_objects,
    log_report,
    missing,
    read_image,
)
from focaljax.errors import ConfigError

LAYOUT = """\
  <images>/                 one folder per split, e.g. images/train/
    <file_name> ...         as the JSON's images[].file_name (may contain sub-folders)
  <annotations>.json        one COCO-format JSON per split, e.g. annotations/train.json:
                            {"images": [...], "annotations": [...], "categories": [...]}"""

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MAX_IMAGE_ID = 2**31 - 1  # Batches carry image ids as int32.


def read_coco_json(path: epath.PathLike, *, layout: str = LAYOUT) -> dict:
    """The parsed COCO-format JSON `path`, checked to hold what `coco_examples` reads."""
    path = epath.Path(path)
    if not path.exists():
        raise missing(path, "annotation file", layout)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot parse the annotation file {path} as JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, expected a COCO-format object "
                         '{"images": [...], "annotations": [...], "categories": [...]}')
    lacking = [key for key in ("images", "categories") if key not in data]
    if lacking:
        raise ConfigError(f"{path} lacks {lacking}; it has {sorted(data)}. Expected a COCO-format "
                         'object {"images": [...], "annotations": [...], "categories": [...]}')
    return data


def coco_categories(data: Mapping, path: epath.PathLike) -> tuple[list[int], list[str]]:
    """Category ids, in increasing order, and their names, of a `read_coco_json` result."""
    categories = sorted(data["categories"], key=lambda c: _int(c, "id", path, "category"))
    ids = [int(c["id"]) for c in categories]
    names = [str(c.get("name", c["id"])) for c in categories]
    if not ids:
        raise ConfigError(f"{path} lists no categories")
    for kind, values in (("ids", ids), ("names", names)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"{path} repeats the category {kind} {repeated}: expected unique "
                              "ones")
    return ids, names


def coco_examples(
    data: Mapping,
    annotation_path: epath.PathLike,
    image_dir: epath.PathLike,
    *,
    category_ids: Sequence[int],
    keep_formats: tuple[str, ...],
    reencode_format: str,
    report: SplitReport,
) -> Iterator[tuple[int, dict]]:
    """(key, example) of each image of one split in COCO format, in order of image id.

    Examples have the features of TFDS's `coco/2017`: `image` (encoded bytes), `image/filename`,
    `image/id` and `objects` with `id`, `area`, `bbox` (normalized tfds BBox), `label` (index in
    `category_ids`) and `is_crowd`.

    Args:
      data: `read_coco_json(annotation_path)`.
      annotation_path: the JSON, for messages.
      image_dir: the folder that the images' `file_name`s are relative to.
      category_ids: the category id of each label.
      keep_formats, reencode_format: see `focaljax.data.sources.read_image`.
      report: counts what is written, clipped and dropped.
    """
    image_dir = epath.Path(image_dir)
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    images: dict[int, Mapping] = {}
    for image in data["images"]:
        image_id = _int(image, "id", annotation_path, "image")
        if not 0 <= image_id <= _MAX_IMAGE_ID:
            raise ConfigError(f"{annotation_path}: image id {image_id} is outside [0, 2**31 - 1]")
        if image_id in images:
            raise ConfigError(f"{annotation_path}: image id {image_id} is listed twice")
        for key in ("file_name", "width", "height"):
            if key not in image:
                raise ConfigError(f"{annotation_path}: image {image_id} lacks {key!r}")
        images[image_id] = image
    instances: dict[int, list[Mapping]] = defaultdict(list)
    for annotation in data.get("annotations", []):
        image_id = _int(annotation, "image_id", annotation_path, "annotation")
        if image_id not in images:
            raise ConfigError(f"{annotation_path}: annotation {annotation.get('id')} is of image "
                             f"{image_id}, which is not in its images")
        category_id = _int(annotation, "category_id", annotation_path, "annotation")
        if category_id not in label_of:
            raise ConfigError(f"{annotation_path}: annotation {annotation.get('id')} has "
                             f"category_id {category_id}, not one of {list(category_ids)}")
        instances[image_id].append(annotation)

    for image_id in sorted(images):
        image = images[image_id]
        file_name = image["file_name"]
        width, height = int(image["width"]), int(image["height"])
        encoded, _ = read_image(
            image_dir / file_name,
            size=(width, height),
            referenced_by=f"{annotation_path} (image id {image_id})",
            keep_formats=keep_formats,
            reencode_format=reencode_format,
            report=report,
        )
        objects = []
        for annotation in sorted(instances[image_id], key=lambda a: a.get("id", 0)):
            where = f"{file_name} annotation {annotation.get('id')}"
            x, y, w, h = _bbox(annotation, annotation_path)
            bbox = clip_box((x, y, x + w, y + h), width, height, where=where, report=report)
            if bbox is None:
                continue
            objects.append({
                "id": int(annotation.get("id", 0)),
                "area": float(annotation.get("area", w * h)),
                "bbox": bbox,
                "label": label_of[int(annotation["category_id"])],
                "is_crowd": bool(annotation.get("iscrowd", 0)),
            })
        count_objects(report, objects)
        yield image_id, {
            "image": encoded,
            "image/filename": file_name,
            "image/id": image_id,
            "objects": objects,
        }


def set_categories(
    builder: tfds.core.DatasetBuilder, ids: Sequence[int], names: Sequence[str], source: str
) -> None:
    """Gives `builder`'s labels these categories, once; the next split must list the same."""
    metadata = builder.info.metadata
    if "category_ids" in metadata:
        known = (metadata["category_ids"], builder.info.features["objects"]["label"].names)
        if (list(ids), list(names)) != (list(known[0]), list(known[1])):
            raise ConfigError(
                f"{source} lists the categories {dict(zip(ids, names, strict=True))}, but the "
                f"split before listed {dict(zip(*known, strict=True))}: every split must list "
                "the same categories"
            )
        return
    builder.info.features["objects"]["label"].names = list(names)
    metadata["category_ids"] = [int(i) for i in ids]
    metadata["source_categories"] = source


class CocoFolder(tfds.core.GeneratorBasedBuilder):
    """Images in a folder and a COCO-format JSON per split; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}

    def __init__(
        self,
        *,
        config: str | tfds.core.BuilderConfig,
        splits: Mapping[str, Sequence[str] | Mapping[str, str]] | None = None,
        **kwargs,
    ):
        """A `CocoFolder` named `config`.

        Args:
          config: the data set's name, which names its folder in `data_dir` (letters, digits,
            "_", "-", "."); reusing a name reads the data set prepared under it.
          splits: {split: (image folder, annotation JSON)} or {split: {"images": ...,
            "annotations": ...}}; needed only to prepare.
          **kwargs: `data_dir` and the other arguments of `tfds.core.DatasetBuilder`.
        """
        if isinstance(config, str):
            if not _NAME.match(config):
                raise ConfigError(f"data set name {config!r}: expected letters, digits, '_', '-' "
                                 "and '.', not starting with '.' or '-'")
            config = tfds.core.BuilderConfig(name=config, description="A COCO-format folder.")
        self._splits = _split_paths(splits or {})
        super().__init__(config=config, **kwargs)
        self._original_state["splits"] = splits

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n", 1)[0],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(),
                "image/filename": tfds.features.Text(),
                "image/id": np.int64,
                "objects": tfds.features.Sequence({
                    "id": np.int64,
                    "area": np.float32,
                    "bbox": tfds.features.BBoxFeature(),
                    # The names (and their category ids, in `metadata`) come from the JSON.
                    "label": tfds.features.ClassLabel(),
                    "is_crowd": np.bool_,
                }),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Everything is local.
        if not self._splits:
            raise ConfigError(
                f"{self.info.full_name} is not prepared in {self.data_dir_root} and no source "
                "splits were given: pass splits={split: (image folder, annotation JSON)}"
            )
        for images, annotation_file in self._splits.values():
            if not images.is_dir():
                raise missing(images, "image folder", LAYOUT)
            if not annotation_file.exists():
                raise missing(annotation_file, "annotation file", LAYOUT)
        return {
            split: self._generate_examples(split, images, annotation_file)
            for split, (images, annotation_file) in self._splits.items()
        }

    def _generate_examples(self, split: str, images: epath.Path, annotation_file: epath.Path):
        data = read_coco_json(annotation_file)
        ids, names = coco_categories(data, annotation_file)
        set_categories(self, ids, names, str(annotation_file))
        report = SplitReport()
        yield from coco_examples(
            data, annotation_file, images, category_ids=ids, keep_formats=("JPEG", "PNG"),
            reencode_format="PNG", report=report,
        )
        log_report(self, split, report)


def _split_paths(splits: Mapping) -> dict[str, tuple[epath.Path, epath.Path]]:
    paths = {}
    for split, value in splits.items():
        if isinstance(value, Mapping):
            unknown = set(value) - {"images", "annotations"}
            if unknown or len(value) != 2:
                raise ConfigError(f"split {split!r}: {dict(value)}, expected "
                                 '{"images": image folder, "annotations": JSON file}')
            value = (value["images"], value["annotations"])
        if isinstance(value, str) or len(value) != 2:
            raise ConfigError(f"split {split!r}: {value!r}, expected (image folder, JSON file)")
        paths[split] = (epath.Path(value[0]).expanduser(), epath.Path(value[1]).expanduser())
    return paths


def _int(entry: Mapping, key: str, path, what: str) -> int:
    value = entry.get(key) if isinstance(entry, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ConfigError(f"{path}: {what} {_describe(entry)} has {key}={value!r}, expected an int")
    return int(value)


def _bbox(annotation: Mapping, path) -> tuple[float, float, float, float]:
    bbox = annotation.get("bbox")
    if (
        not isinstance(bbox, list | tuple)
        or len(bbox) != 4
        or not all(isinstance(c, int | float) and math.isfinite(c) for c in bbox)
    ):
        raise ConfigError(f"{path}: annotation {annotation.get('id')} has bbox={bbox!r}, expected "
                         "[x, y, width, height] of finite numbers")
    return tuple(float(c) for c in bbox)


def _describe(entry) -> str:
    text = json.dumps(entry) if isinstance(entry, Mapping) else repr(entry)
    return text if len(text) <= 80 else text[:77] + "..."
