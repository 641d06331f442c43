"""`DetectionDataset`: a registered data set with the pipeline settings of its config (what
`focaljax.data.build` returns), and `DatasetInfo`, what the trainer and the evaluators need to
know about it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from focaljax.data.augment import Augmentations
from focaljax.data.ground_truth import coco_ground_truth, voc_ground_truth
from focaljax.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceBatchIterator,
    create_eval_iterator,
    create_train_iterator,
)
from focaljax.data.prepare import prepare
from focaljax.errors import ConfigError

# The fields of `Augmentations`, each a dataset field of the same name.
AUGMENTATION_FIELDS = tuple(field.name for field in dataclasses.fields(Augmentations))


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
        self,
        per_device_batch_size: int,
        seed: int,
        start_step: int = 0,
        *,
        print_fn: Callable[[str], None] = logging.info,
    ) -> DeviceBatchIterator:
        """Infinite training batches of `config.train_split`; see `create_train_iterator`, which
        gives `print_fn` the summary of the repeat factors."""
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
            print_fn=print_fn,
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


def _optional_pair(value) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))
