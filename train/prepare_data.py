"""Prepares a real data set from local files into a TFDS data directory, ahead of training.

  python -m train.prepare_data --dataset coco --source_dir /data/coco
  python -m train.prepare_data --dataset voc --source_dir /data/voc [--voc_year 2007]
  python -m train.prepare_data --dataset coco_folder --name my_data \\
      --images train=/data/my_data/images/train --annotations train=/data/my_data/train.json \\
      --images validation=/data/my_data/images/val --annotations validation=/data/my_data/val.json

  python -m train.prepare_data --config configs/shapes_retinanet.py   # the config's data set

`--data_dir` (default TFDS's, ~/tensorflow_datasets) is where the prepared data set goes; give the
same `config.dataset.data_dir` to the trainer. The expected layouts of `--source_dir` are in
`focaljax.data.coco` and `focaljax.data.voc`, and printed when a path is missing. Nothing is
downloaded. For every split it prints what was read, and every box clipped or dropped and image
re-encoded on the way (the first ones by name); the same counts stay in the prepared data set's
metadata. A data set already prepared is left as it is, and its report printed again.

With `--config` (a configs/*.py file, fields overridable as `--config.model.anchor_base_scale=1.5`)
it then prints the anchor-coverage report (`focaljax.detectors.anchor_coverage`) of the config's
anchors and image size over the first `--report_images` images of the config's training split:
object sizes and aspect ratios, the share of objects with an anchor at the foreground IoU (and at
0.4 and 0.5), positives per object, a suggestion for the anchor fields that covers 95% of the
objects, and a picture (its path is printed). Without `--dataset` the config's own data set is
prepared (e.g. the synthetic shapes data); with it, the data set prepared from `--dataset`'s
sources is reported on. """

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import tensorflow_datasets as tfds
from absl import app, flags
from ml_collections import config_flags

from focaljax import data
from focaljax.data import (
    Coco2017,
    CocoFolder,
    SplitReport,
    VocDetection,
    source_reports,
)
from focaljax.detectors import anchor_coverage
from train import cli

FLAGS = flags.FLAGS



def define_flags() -> None:
    """The command line's flags, defined only when run as a program: the `train` entry points
    share absl's global flag registry, and `prepare()` is also imported as a library."""
    flags.DEFINE_enum("dataset", None, ["coco", "voc", "coco_folder"], "The kind of data set.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory; default ~/tensorflow_datasets.")
    flags.DEFINE_string("source_dir", None, "coco, voc: the folder holding the official files.")
    flags.DEFINE_enum("voc_year", "2007", ["2007", "2012"], "voc: which PASCAL VOC.")
    flags.DEFINE_string("name", None, "coco_folder: the data set's name (folder in --data_dir).")
    flags.DEFINE_multi_string("images", [], "coco_folder: SPLIT=FOLDER, the images of a split.")
    flags.DEFINE_multi_string(
        "annotations", [], "coco_folder: SPLIT=FILE, the COCO-format JSON of a split."
    )
    config_flags.DEFINE_config_file(
        "config", None, "A configs/*.py file: report how its anchors cover the objects (and, "
        "without --dataset, prepare its data set).", lock_config=True,
    )
    flags.DEFINE_integer("report_images", 500, "--config: the training images reported on.")
    flags.DEFINE_string("picture", None, "--config: where the anchor-coverage picture goes; "
                        "default anchor_coverage.png in the prepared data set's folder.")


def make_builder(
    dataset: str,
    *,
    data_dir: str | None = None,
    source_dir: str | None = None,
    voc_year: str = "2007",
    name: str | None = None,
    splits: Mapping[str, tuple[str, str]] | None = None,
) -> tfds.core.DatasetBuilder:
    """The builder of `dataset` ("coco", "voc" or "coco_folder") from these sources."""
    if dataset in ("coco", "voc") and not source_dir:
        raise cli.ConfigError(f"--dataset={dataset} needs --source_dir, the folder of its files")
    if dataset == "coco":
        return Coco2017(source_dir=source_dir, data_dir=data_dir)
    if dataset == "voc":
        return VocDetection(config=voc_year, source_dir=source_dir, data_dir=data_dir)
    if dataset == "coco_folder":
        if not name or not splits:
            raise cli.ConfigError("--dataset=coco_folder needs --name and, per split, --images "
                             "SPLIT=FOLDER and --annotations SPLIT=FILE")
        return CocoFolder(config=name, splits=splits, data_dir=data_dir)
    raise cli.ConfigError(f"unknown dataset {dataset!r}, expected coco, voc or coco_folder")


def prepare(builder: tfds.core.DatasetBuilder) -> dict[str, SplitReport]:
    """Prepares `builder` unless it is prepared; returns its `SplitReport` per split."""
    if builder.is_prepared():
        print(f"{builder.info.full_name} is already prepared in {builder.data_dir}", flush=True)
    else:
        data.prepare(builder)
    return print_reports(builder)


def print_reports(builder: tfds.core.DatasetBuilder) -> dict[str, SplitReport]:
    """Prints and returns the `SplitReport` of each split of the prepared `builder`."""
    reports = source_reports(builder)
    for split, report in reports.items():
        print(f"  {split}: {report.summary()}")
        for line in report.notes:
            print(f"    {line}")
    return reports


def parse_splits(images: list[str], annotations: list[str]) -> dict[str, tuple[str, str]]:
    """{split: (image folder, JSON)} from the values of --images and --annotations."""
    pairs = {}
    for flag, values in (("images", images), ("annotations", annotations)):
        for value in values:
            split, sep, path = value.partition("=")
            if not sep or not split or not path:
                raise cli.ConfigError(
                    f"--{flag}={value}: expected SPLIT=PATH, e.g. train=/data/train"
                )
            pairs.setdefault(split, {})[flag] = path
    unpaired = {split: sorted(paths) for split, paths in pairs.items() if len(paths) != 2}
    if unpaired:
        raise cli.ConfigError(f"splits with only {unpaired}: give both --images and --annotations")
    return {split: (paths["images"], paths["annotations"]) for split, paths in pairs.items()}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_libraries()
    config = FLAGS.config
    if FLAGS.dataset is None and config is None:
        cli.fail("give --dataset (and its sources) or --config (its data set and anchors)")
    try:
        if FLAGS.dataset is not None:
            builder = make_builder(
                FLAGS.dataset,
                data_dir=FLAGS.data_dir,
                source_dir=FLAGS.source_dir,
                voc_year=FLAGS.voc_year,
                name=FLAGS.name,
                splits=parse_splits(FLAGS.images, FLAGS.annotations),
            )
            prepare(builder)
        else:
            if FLAGS.data_dir is not None:
                config.dataset.data_dir = FLAGS.data_dir
            builder = data.build(config.dataset).builder  # Prepared on this first access.
            print_reports(builder)
        if config is not None:
            anchor_coverage.report_anchor_coverage(
                config, builder, max_images=FLAGS.report_images,
                picture=FLAGS.picture or os.path.join(builder.data_dir, "anchor_coverage.png"),
            )
    except cli.ConfigError as error:
        # Bad flags and bad or missing source files are the user's; a bug keeps its traceback.
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
