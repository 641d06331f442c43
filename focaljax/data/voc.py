"""PASCAL VOC detection (2007, or 2012), prepared from local files with TFDS's `voc` builder.

`VocDetection` ("voc_detection/2007") is TFDS's `voc` builder reading a local folder instead of
downloading, with the features of TFDS's `voc` (`image`, `image/filename`, `objects/{label, bbox,
pose, is_truncated, is_difficult}`, `labels`, `labels_no_difficult`) and two more for detection:

  image/id          the image's number, "000005" -> 5 ("2008_000008" -> 2008000008)
  objects/is_crowd  the "difficult" flag, read by the input pipeline as an ignore region

"Difficult" objects are treated as the VOC evaluation treats them. In training they are ignore
regions: anchors overlapping them are neither positives nor negatives. In evaluation,
`voc_ground_truth` flags them `difficult` for `focaljax.evaluation.voc.voc_map`, which leaves them
out of the positives and counts detections of them as neither right nor wrong; the COCO-style
evaluation sees them as crowd regions, to the same effect.

Boxes. VOC annotates inclusive 1-based pixel indices; they are stored as the continuous box
[xmin - 1, ymin - 1, xmax, ymax] (as detectron2 reads them; TFDS's `voc` keeps [xmin, ymin, xmax,
ymax]), so that width = xmax - xmin + 1 as in the devkit and `voc_map`'s default continuous
coordinates give the devkit's IoUs. Boxes reaching outside their image are clipped, boxes without
area dropped, counted in each split's `focaljax.data.sources.SplitReport`.

The folder holds the official archives or what they extract to:

  <source_dir>/
    VOCdevkit/VOC2007/                  or  VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar
      Annotations/000005.xml ...
      JPEGImages/000005.jpg ...
      ImageSets/Main/train.txt, val.txt, test.txt

Splits: "train" (train.txt, 2501 images in 2007), "validation" (val.txt, 2510), "test" (test.txt,
4952; VOC2007 only, VOC2012's test set has no annotations). The usual VOC2007 protocol trains on
"train+validation" and evaluates on "test".

Usage::

  builder = VocDetection(config="2007", source_dir="/data/voc", data_dir="~/tensorflow_datasets")
  builder.download_and_prepare()

or `python -m train.prepare_data --dataset voc --source_dir /data/voc`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.object_detection import voc as tfds_voc

from focaljax.data.sources import (
    SplitReport,
    clip_box,
    count_objects,
    log_report,
    missing,
    read_image,
    source_folder,
)
from focaljax.errors import ConfigError

LAYOUT = """\
  <source_dir>/
    VOCdevkit/VOC{year}/                  or  the official archives ({archives})
      Annotations/<image>.xml ...
      JPEGImages/<image>.jpg ...
      ImageSets/Main/train.txt, val.txt[, test.txt]"""

_SPLITS = {"train": "train", "validation": "val", "test": "test"}
_IMAGE_NAME = re.compile(r"^(\d+)(?:_(\d+))?$")


class VocDetection(tfds_voc.Voc):
    """TFDS's `voc` from the files in `source_dir`, for detection; see the module docstring."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put PASCAL VOC in the manual folder like this:\n" + LAYOUT

    def __init__(self, *, source_dir: epath.PathLike | None = None, **kwargs):
        """`source_dir`: the folder of the module docstring, needed only to prepare; default
        TFDS's manual folder, `<data_dir>/downloads/manual`. `kwargs`: `config` ("2007", the
        default, or "2012"), `data_dir` and the other arguments of `tfds.core.DatasetBuilder`."""
        kwargs.setdefault("config", "2007")
        self._source_dir = source_dir
        super().__init__(**kwargs)
        self._original_state["source_dir"] = source_dir

    def _info(self) -> tfds.core.DatasetInfo:
        base = super()._info()
        labels = base.features["objects"]["label"].names
        poses = base.features["objects"]["pose"].names
        return tfds.core.DatasetInfo(
            builder=self,
            description=base.description,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(),
                "image/filename": tfds.features.Text(),
                "image/id": np.int64,
                "objects": tfds.features.Sequence({
                    "label": tfds.features.ClassLabel(names=labels),
                    "bbox": tfds.features.BBoxFeature(),
                    "pose": tfds.features.ClassLabel(names=poses),
                    "is_truncated": np.bool_,
                    "is_difficult": np.bool_,
                    "is_crowd": np.bool_,
                }),
                "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=labels)),
                "labels_no_difficult": tfds.features.Sequence(
                    tfds.features.ClassLabel(names=labels)
                ),
            }),
            homepage=base.homepage,
            citation=base.citation,
            metadata=tfds.core.MetadataDict(),
        )

    @property
    def _layout(self) -> str:
        config = self.builder_config
        return LAYOUT.format(year=config.year, archives=", ".join(config.filenames.values()))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        source = source_folder(self._source_dir, dl_manager, what=f"PASCAL VOC {config.year}",
                               layout=self._layout)
        devkit = f"VOCdevkit/VOC{config.year}"
        roots = [source / devkit] + [
            epath.Path(dl_manager.extract(source / archive)) / devkit
            for archive in config.filenames.values()
            if (source / archive).exists()
        ]
        generators = {}
        for split, set_name in _SPLITS.items():
            if split == "test" and not config.has_test_annotations:
                continue
            lists = [root / "ImageSets" / "Main" / f"{set_name}.txt" for root in roots]
            found = [path for path in lists if path.exists()]
            if found:
                generators[split] = self._generate_examples(split, found[0])
            elif split == "test":
                logging.info("No test split: none of %s exists", [str(p) for p in lists])
            else:
                raise missing(" or ".join(str(p) for p in lists),
                              f"PASCAL VOC {config.year} {split} split:", self._layout)
        return generators

    def _generate_examples(self, split: str, image_list: epath.Path):
        root = image_list.parent.parent.parent
        labels = self.info.features["objects"]["label"].names
        poses = self.info.features["objects"]["pose"].names
        report = SplitReport()
        for name in image_list.read_text().split():
            annotation = root / "Annotations" / f"{name}.xml"
            if not annotation.exists():
                raise missing(annotation, f"annotation of {name} (listed in {image_list})",
                              self._layout)
            width, height, objects = _read_annotation(annotation, labels)
            encoded, (width, height) = read_image(
                root / "JPEGImages" / f"{name}.jpg",
                size=(width, height) if width and height else None,
                referenced_by=str(annotation),
                keep_formats=("JPEG", "PNG"),
                reencode_format="PNG",
                report=report,
            )
            kept = []
            for i, obj in enumerate(objects):
                bbox = clip_box(obj.pop("box"), width, height,
                                where=f"{annotation.name} object {i}", report=report)
                if bbox is not None:
                    kept.append({**obj, "bbox": bbox, "pose": obj["pose"] if obj["pose"] in poses
                                 else "unspecified"})
            count_objects(report, kept)
            yield name, {
                "image": encoded,
                "image/filename": f"{name}.jpg",
                "image/id": _image_id(name, image_list),
                "objects": kept,
                "labels": sorted({o["label"] for o in kept}),
                "labels_no_difficult": sorted({o["label"] for o in kept if not o["is_difficult"]}),
            }
        log_report(self, split, report)


def _read_annotation(path: epath.Path, labels: Sequence[str]) -> tuple[int, int, list[dict]]:
    """(width, height, objects) of a VOC annotation XML; a size of 0 when it gives none. Each
    object has its `label`, `pose`, flags and `box`: continuous xyxy pixels."""
    try:
        root = ElementTree.fromstring(path.read_bytes())
    except ElementTree.ParseError as error:
        raise ConfigError(f"cannot parse the annotation {path}: {error}") from None
    size = root.find("size")
    width = int(float(size.findtext("width", "0"))) if size is not None else 0
    height = int(float(size.findtext("height", "0"))) if size is not None else 0
    objects = []
    for i, obj in enumerate(root.findall("object")):
        label = (obj.findtext("name") or "").strip().lower()
        if label not in labels:
            raise ConfigError(f"{path}: object {i} is a {label!r}, expected one of {list(labels)}")
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax",
                                                                        "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise ConfigError(f"{path}: object {i} ({label}) lacks a bndbox with numeric xmin, "
                             "ymin, xmax, ymax") from None
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append({
            "label": label,
            # Inclusive 1-based pixel indices -> continuous coordinates.
            "box": (xmin - 1.0, ymin - 1.0, xmax, ymax),
            "pose": (obj.findtext("pose") or "unspecified").strip().lower(),
            "is_truncated": (obj.findtext("truncated") or "0").strip() == "1",
            "is_difficult": difficult,
            "is_crowd": difficult,
        })
    return width, height, objects


def _image_id(name: str, image_list: epath.Path) -> int:
    match = _IMAGE_NAME.match(name)
    image_id = int("".join(g for g in match.groups() if g)) if match else -1
    if not 0 <= image_id < 2**31:
        raise ConfigError(f"{image_list} lists the image {name!r}: expected VOC's numbered names "
                         "like 000005 or 2008_000008 (for other data, write a COCO-format JSON "
                         "and use focaljax.data.coco_folder)")
    return image_id
