"""COCO 2017 detection, prepared from local files as TFDS's own `coco/2017`.

`Coco2017` is TFDS's `coco/2017` builder (same name, version, features and label order, so the
prepared data set is the one `tfds.builder("coco/2017")` reads) that takes its files from a local
folder instead of downloading them. The folder holds the official archives or what they extract
to, in any mix:

  <source_dir>/
    annotations/instances_train2017.json    or  annotations_trainval2017.zip
    annotations/instances_val2017.json          (the same archive)
    train2017/000000000009.jpg ...          or  train2017.zip
    val2017/000000000139.jpg ...            or  val2017.zip
    test2017/ + annotations/image_info_test2017.json  or  test2017.zip + image_info_test2017.zip
                                                (optional: the unlabelled "test" split)

Archives are extracted into `<data_dir>/downloads/extracted/` (which may be deleted once the data
set is prepared). Preparing reads every image once: about 25 GB are written to `data_dir`.

Labels are the 80 categories in the order of their COCO ids; `CATEGORY_IDS[label]` is the COCO
category id of a label. Crowd annotations are kept as ignore regions (`objects/is_crowd`), images
without annotations are kept, boxes are clipped to their image and boxes without area dropped,
counted in each split's `focaljax.data.sources.SplitReport`.

Usage::

  builder = Coco2017(source_dir="/data/coco", data_dir="~/tensorflow_datasets")
  builder.download_and_prepare()

or `python -m train.prepare_data --dataset coco --source_dir /data/coco`.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.object_detection import coco as tfds_coco

from focaljax.data.coco_folder import coco_categories, coco_examples, read_coco_json, set_categories
from focaljax.data.sources import SplitReport, log_report, missing, source_folder
from focaljax.errors import ConfigError

# The ids of COCO's 80 detection categories (of 91 defined), the order of the labels.
CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)

LAYOUT = """\
  <source_dir>/
    annotations/instances_train2017.json    or  annotations_trainval2017.zip
    annotations/instances_val2017.json          (the same archive)
    train2017/000000000009.jpg ...          or  train2017.zip
    val2017/000000000139.jpg ...            or  val2017.zip
    test2017/ + annotations/image_info_test2017.json  or  test2017.zip + image_info_test2017.zip
                                                (optional)"""

# split: (image folder, annotation file, archive holding annotations/<annotation file>, required)
_SPLITS = {
    "train": ("train2017", "instances_train2017.json", "annotations_trainval2017.zip", True),
    "validation": ("val2017", "instances_val2017.json", "annotations_trainval2017.zip", True),
    "test": ("test2017", "image_info_test2017.json", "image_info_test2017.zip", False),
}


class Coco2017(tfds_coco.Coco, skip_registration=True):
    """TFDS's `coco/2017`, from the files in `source_dir`; see the module docstring."""

    name = "coco"
    BUILDER_CONFIGS = [c for c in tfds_coco.Coco.BUILDER_CONFIGS if c.name == "2017"]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put COCO 2017 in the manual folder like this:\n{LAYOUT}"

    def __init__(self, *, source_dir: epath.PathLike | None = None, **kwargs):
        """`source_dir`: the folder of the module docstring, needed only to prepare; default
        TFDS's manual folder, `<data_dir>/downloads/manual`. `kwargs`: `data_dir` and the other
        arguments of `tfds.core.DatasetBuilder`."""
        kwargs.setdefault("config", "2017")
        self._source_dir = source_dir
        super().__init__(**kwargs)
        self._original_state["source_dir"] = source_dir

    def _info(self) -> tfds.core.DatasetInfo:
        info = super()._info()
        return tfds.core.DatasetInfo(
            builder=self,
            description=info.description,
            features=info.features,
            homepage=info.homepage,
            citation=info.citation,
            # Where the source report and the category ids are kept.
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source = source_folder(self._source_dir, dl_manager, what="COCO 2017", layout=LAYOUT)
        generators = {}
        for split, (images_name, annotation_name, archive, required) in _SPLITS.items():
            images = _locate(source / images_name, source / f"{images_name}.zip", dl_manager)
            annotation_file = _locate(
                source / "annotations" / annotation_name, source / archive, dl_manager,
                inner=f"annotations/{annotation_name}",
            )
            if images and annotation_file:
                generators[split] = self._generate_examples(split, images, annotation_file)
                continue
            lacking = [
                f"{source / name} (or {source / zip_name})"
                for found, name, zip_name in (
                    (images, images_name, f"{images_name}.zip"),
                    (annotation_file, f"annotations/{annotation_name}", archive),
                )
                if not found
            ]
            if required:
                raise missing(" and ".join(lacking), f"COCO 2017 {split} split:", LAYOUT)
            logging.info("No %s split: %s not found", split, " and ".join(lacking))
        return generators

    def _generate_examples(self, split: str, images: epath.Path, annotation_file: epath.Path):
        data = read_coco_json(annotation_file, layout=LAYOUT)
        ids, names = coco_categories(data, annotation_file)
        if tuple(ids) != CATEGORY_IDS:
            raise ConfigError(
                f"{annotation_file} lists the categories {ids}, expected COCO's 80 "
                f"({list(CATEGORY_IDS)}). For a data set with other categories use "
                "focaljax.data.coco_folder"
            )
        set_categories(self, ids, names, str(annotation_file))
        report = SplitReport()
        yield from coco_examples(
            data, annotation_file, images, category_ids=ids, keep_formats=("JPEG",),
            reencode_format="JPEG", report=report,
        )
        log_report(self, split, report)


def _locate(
    path: epath.Path,
    archive: epath.Path,
    dl_manager: tfds.download.DownloadManager,
    *,
    inner: str | None = None,
) -> epath.Path | None:
    """`path` if it exists, else `inner` (default `path`'s name) inside `archive` extracted."""
    if path.exists():
        return path
    if archive.exists():
        extracted = epath.Path(dl_manager.extract(archive)) / (inner or path.name)
        if not extracted.exists():
            raise missing(extracted, f"{inner or path.name} extracted from {archive},", LAYOUT)
        return extracted
    return None
