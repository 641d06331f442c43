"""Detection data: TFDS builders, the tf.data input pipeline and the data set registry.

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
  safe_crop_min_visible
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

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from focaljax.data.augment import Augmentations
from focaljax.data.coco import CATEGORY_IDS as COCO_CATEGORY_IDS
from focaljax.data.coco import Coco2017
from focaljax.data.coco_folder import CocoFolder
from focaljax.data.defaults import default_config
from focaljax.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceBatchIterator,
    coco_ground_truth,
    create_eval_iterator,
    create_train_iterator,
    load_builder,
    preprocess_image,
    to_original_pixels,
)
from focaljax.data.prepare import prepare
from focaljax.data.shapes import Shapes, ShapesConfig, generate_example, shapes_config
from focaljax.data.sources import SplitReport, source_reports
from focaljax.data.voc import VocDetection, voc_ground_truth
from focaljax.errors import ConfigError

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

# A factory makes the (possibly unprepared) TFDS builder from the config, and says which COCO
# category id each contiguous label has (None: the builder's `info.metadata["category_ids"]` once
# prepared, if it records them, else label + 1).
BuilderFactory = Callable[[Mapping], tuple[tfds.core.DatasetBuilder, Sequence[int] | None]]
_FACTORIES: dict[str, BuilderFactory] = {}
# Every field that `build` and the data set's iterators read (module docstring).
# The fields of `Augmentations`, each a dataset field of the same name.
AUGMENTATION_FIELDS = tuple(field.name for field in dataclasses.fields(Augmentations))
FIELDS = (
    "name", "image_size", "max_boxes", "data_dir", "train_split", "eval_split", "horizontal_flip",
    "scale_jitter", "shuffle_buffer_size", "builder_kwargs",
    *AUGMENTATION_FIELDS, "repeat_factor_threshold",
)


def register(name: str) -> Callable[[BuilderFactory], BuilderFactory]:
    """Registers `factory(config) -> (builder, category_ids)` under `name` for `build`."""

    def decorator(factory: BuilderFactory) -> BuilderFactory:
        if name in _FACTORIES:
            raise ValueError(f"a data set named {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return decorator


def registered_names() -> list[str]:
    return sorted(_FACTORIES)


@register("shapes")
def _shapes_builder(config: Mapping) -> tuple[tfds.core.DatasetBuilder, None]:
    kwargs = _to_dict(config["builder_kwargs"] or {})
    if "config" in kwargs:
        if len(kwargs) > 1:
            raise ConfigError(
                f"builder_kwargs {kwargs}: give either 'config' (one of "
                f"{[c.name for c in Shapes.BUILDER_CONFIGS]}) or the settings of shapes_config"
            )
        builder_config = kwargs["config"]
    else:
        builder_config = shapes_config(**kwargs)
    # ml_collections configs spell "TFDS's default" as "", which TFDS would take as the cwd.
    return Shapes(config=builder_config, data_dir=config["data_dir"] or None), None


@register("coco")
def _coco_builder(config: Mapping) -> tuple[tfds.core.DatasetBuilder, tuple[int, ...]]:
    kwargs = _builder_kwargs(config, ("source_dir",))
    return Coco2017(data_dir=config["data_dir"] or None, **kwargs), COCO_CATEGORY_IDS


@register("voc")
def _voc_builder(config: Mapping) -> tuple[tfds.core.DatasetBuilder, None]:
    kwargs = _builder_kwargs(config, ("source_dir", "config"))
    return VocDetection(data_dir=config["data_dir"] or None, **kwargs), None


@register("coco_folder")
def _coco_folder_builder(config: Mapping) -> tuple[tfds.core.DatasetBuilder, None]:
    kwargs = _builder_kwargs(config, ("name", "splits"))
    if "name" not in kwargs:
        raise ConfigError(f"builder_kwargs {kwargs}: a coco_folder data set needs a 'name'")
    # The category ids come from the JSON files, recorded in the builder's metadata.
    return CocoFolder(
        config=kwargs["name"], splits=kwargs.get("splits"), data_dir=config["data_dir"] or None
    ), None


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer and the evaluator need to know about a data set.

    Attributes:
      name: TFDS full name, e.g. "shapes/default/1.0.0".
      num_classes: number of contiguous labels `0..num_classes-1`.
      class_names: name of each label.
      category_ids: COCO category id of each label, as in `coco_ground_truth`.
      num_examples: examples per split.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    num_examples: Mapping[str, int]


class DetectionDataset:
    """A registered data set with the pipeline settings of its config; see `build`.

    Attributes:
      mean, std: per-channel normalization in 0..255 pixel units: batch images are
        `(pixels - mean) / std`.
      augmentations: the `Augmentations` of the config's fields, for the training batches.
    """

    mean = tuple(255.0 * m for m in IMAGENET_MEAN)
    std = tuple(255.0 * s for s in IMAGENET_STD)

    def __init__(
        self, config: Mapping, builder: tfds.core.DatasetBuilder, category_ids: Sequence[int] | None
    ):
        self.config = config
        # Built here, so that a bad setting is reported before anything is read or compiled.
        self.augmentations = Augmentations(**{
            name: (tuple(config[name]) or None) if name in ("jpeg_quality", "safe_crop")
            else config[name]
            for name in AUGMENTATION_FIELDS
        })
        self._builder = builder
        self._category_ids = category_ids
        self._ground_truth: dict[str, dict] = {}

    @functools.cached_property
    def builder(self) -> tfds.core.DatasetBuilder:
        """The TFDS builder, prepared on first access."""
        prepare(self._builder)
        return self._builder

    @functools.cached_property
    def info(self) -> DatasetInfo:
        info = self.builder.info
        class_names = tuple(info.features["objects"]["label"].names)
        category_ids = (
            self._category_ids
            or (info.metadata or {}).get("category_ids")
            or range(1, len(class_names) + 1)
        )
        return DatasetInfo(
            name=info.full_name,
            num_classes=len(class_names),
            class_names=class_names,
            category_ids=tuple(int(c) for c in category_ids),
            num_examples={name: split.num_examples for name, split in info.splits.items()},
        )

    def train_iterator(
        self, per_device_batch_size: int, seed: int, start_step: int = 0
    ) -> DeviceBatchIterator:
        """Infinite training batches of `config.train_split`; see `create_train_iterator`."""
        config = self.config
        return create_train_iterator(
            self.builder,
            split=config["train_split"],
            image_size=config["image_size"],
            max_boxes=config["max_boxes"],
            per_device_batch_size=per_device_batch_size,
            seed=seed,
            start_step=start_step,
            horizontal_flip=config["horizontal_flip"],
            scale_jitter=_optional_pair(config["scale_jitter"]),
            shuffle_buffer_size=config["shuffle_buffer_size"],
            augmentations=self.augmentations,
            repeat_factor_threshold=config["repeat_factor_threshold"],
        )

    def eval_iterator(self, per_device_batch_size: int) -> DeviceBatchIterator:
        """`config.eval_split` once, in order; see `create_eval_iterator`."""
        return create_eval_iterator(
            self.builder,
            split=self.config["eval_split"],
            image_size=self.config["image_size"],
            max_boxes=self.config["max_boxes"],
            per_device_batch_size=per_device_batch_size,
        )

    def coco_ground_truth(self, split: str | None = None) -> dict:
        """COCO-format ground truth of `split` (default `config.eval_split`), computed once."""
        split = split or self.config["eval_split"]
        if split not in self._ground_truth:
            self._ground_truth[split] = coco_ground_truth(
                self.builder, split=split, category_ids=self.info.category_ids
            )
        return self._ground_truth[split]

    def voc_ground_truth(
        self, split: str | None = None
    ) -> tuple[list[int], list[dict[str, np.ndarray]]]:
        """Ground truth of `split` (default `config.eval_split`) with PASCAL VOC's "difficult"
        flags, for `focaljax.evaluation.voc.voc_map`; see `focaljax.data.voc.voc_ground_truth`.

        Only a data set with the feature `objects/is_difficult` has the flags. It must also mark
        those boxes `objects/is_crowd` (ignore regions in training, as `VocDetection` does): the
        flags are read from the COCO-format ground truth, where they are `iscrowd`.

        Returns:
          The image ids, and for each image `{"boxes": float [M, 4] xyxy original pixels,
          "labels": int [M], "difficult": bool [M]}`.

        Raises:
          ValueError: when the data set lacks `objects/is_difficult` or `objects/is_crowd`.
        """
        objects = self.builder.info.features["objects"]
        missing = [f"objects/{k}" for k in ("is_difficult", "is_crowd") if k not in objects]
        if missing:
            raise ConfigError(
                f"{self.info.name} has no VOC 'difficult' flags: it lacks the features {missing}; "
                "VOC's metric needs a data set such as \"voc\" that flags its difficult boxes "
                "objects/is_difficult and objects/is_crowd"
            )
        return voc_ground_truth(self.coco_ground_truth(split), self.info.category_ids)


def build(config: Mapping) -> DetectionDataset:
    """The data set `config.name` with the pipeline settings of `config` (module docstring).

    Nothing is read or generated until the returned data set is first used.

    Raises:
      ValueError: naming every field of `default_config()` that `config` lacks, or for an
        unregistered `config.name`.
    """
    missing = [field for field in FIELDS if field not in config]
    if missing:
        raise ConfigError(
            f"the dataset config lacks {missing}, which focaljax.data.build reads; "
            "focaljax.data.default_config() declares every dataset field: start from it"
        )
    name = config["name"]
    if name not in _FACTORIES:
        raise ConfigError(f"unknown data set {name!r}; registered: {registered_names()}")
    builder, category_ids = _FACTORIES[name](config)
    return DetectionDataset(config, builder, category_ids)


def _to_dict(value) -> dict:
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def _builder_kwargs(config: Mapping, allowed: Sequence[str]) -> dict:
    """`config.builder_kwargs` as a dict, with "" (an unset path in ml_collections) as absent."""
    kwargs = {k: v for k, v in _to_dict(config["builder_kwargs"] or {}).items() if v != ""}
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"builder_kwargs of {config['name']!r} has {unknown}, expected some of {list(allowed)}"
        )
    return kwargs


def _optional_pair(value) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))
