"""Detection data: TFDS builders, the tf.data input pipeline and the data set registry (this file
is their face: `registry.build`, `dataset.DetectionDataset`, `pipeline`, `ground_truth` ...).

`build(config)` turns the `dataset` part of a training config into a `DetectionDataset`. Every
field below is required (`default_config()` declares them all, with their defaults: start from it):

  name                 registered name: "shapes", "coco", "voc" or "coco_folder"
  image_size           (height, width) of the batch images, or one int
  max_boxes            box rows per image in the batches
  data_dir             TFDS data directory; None or "" for TFDS's default (~/tensorflow_datasets)
  train_split          the split trained on, e.g. "train"
  eval_split           the split evaluated on, e.g. "validation"
  horizontal_flip      random horizontal flips in training, e.g. True
  scale_jitter         (low, high) random resize factor for training, or None for none
  shuffle_buffer_size  examples in the shuffle buffer, e.g. 10_000 (capped at the size of the split)
  vertical_flip, rotate90, brightness, contrast, saturation, hue, jpeg_quality, safe_crop,
  safe_crop_min_visible, mosaic
                       more training augmentations, those of `focaljax.data.augment.Augmentations`
                       (a (low, high) range written () for off, as the config does)
  repeat_factor_threshold
                       t of repeat-factor sampling (`focaljax.data.sampling`); 0 is off
  builder_kwargs       what to build; for "shapes" either {"config": "default" | "tiny"} or the
                       arguments of `shapes_config` (image_size, num_train, num_validation, seed);
                       {} (or None) is "shapes/default";
                       for "coco" {"source_dir": folder of COCO 2017's files (focaljax.data.coco)};
                       for "voc" {"source_dir": folder of VOCdevkit (focaljax.data.voc),
                       "config": "2007" (default) | "2012"};
                       for "coco_folder" {"name": data set name, "splits": {split: {"images":
                       image folder, "annotations": COCO-format JSON}}} (focaljax.data.coco_folder)

The data set is prepared (generated, for "shapes") in `data_dir` the first time it is used; the
sources of real data sets are needed only then (`python -m train.prepare_data` prepares them ahead).
"""

from __future__ import annotations

from focaljax.data.augment import Augmentations
from focaljax.data.coco import CATEGORY_IDS as COCO_CATEGORY_IDS
from focaljax.data.coco import Coco2017
from focaljax.data.coco_folder import CocoFolder
from focaljax.data.dataset import AUGMENTATION_FIELDS, DatasetInfo, DetectionDataset
from focaljax.data.defaults import default_config
from focaljax.data.ground_truth import coco_ground_truth, voc_ground_truth
from focaljax.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceBatchIterator,
    create_eval_iterator,
    create_train_iterator,
    load_builder,
    preprocess_image,
    to_original_pixels,
)
from focaljax.data.prepare import prepare
from focaljax.data.registry import FIELDS, build, register, registered_names
from focaljax.data.shapes import Shapes, ShapesConfig, generate_example, shapes_config
from focaljax.data.sources import SplitReport, source_reports
from focaljax.data.voc import VocDetection

__all__ = [
    "AUGMENTATION_FIELDS",
    "COCO_CATEGORY_IDS",
    "FIELDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augmentations",
    "Coco2017",
    "CocoFolder",
    "DatasetInfo",
    "DetectionDataset",
    "DeviceBatchIterator",
    "Shapes",
    "ShapesConfig",
    "SplitReport",
    "VocDetection",
    "build",
    "coco_ground_truth",
    "create_eval_iterator",
    "create_train_iterator",
    "default_config",
    "generate_example",
    "load_builder",
    "prepare",
    "preprocess_image",
    "to_original_pixels",
    "register",
    "registered_names",
    "shapes_config",
    "source_reports",
    "voc_ground_truth",
]
