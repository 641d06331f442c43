"""What a detector does with the model-zoo fields of its config: a COCO-trained detector's file
(`zoo_weights`) converted into its initial variables at a fresh start (by
`focaljax.models.zoo`), the classes it takes from the file (`zoo_classes`), and the architecture
of each zoo's models as config values (`ZOO_PRESETS`, `apply_preset`).

RetinaNet and Faster R-CNN put `pretrained_loader` into their `Detector.load_pretrained`: with
`zoo_weights` "" it is the backbone's loader (`focaljax.detectors.backbone`, ImageNet weights or
nothing), so that a config without a zoo file behaves as before these fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from focaljax.detectors import backbone as backbone_lib
from focaljax.errors import ConfigError
from focaljax.models import zoo as zoo_lib
from focaljax.models.weight_readers import WeightFileError

# The class modes of `zoo_classes` besides a list of names.
CLASS_MODES = ("new", "coco", "file")

# The config values that build each zoo model's architecture in focaljax (`apply_preset`): the
# model name, then dotted fields of the model config. Values not listed are the library's
# defaults, which are the zoos' (FPN channels, anchor sizes and ratios, box coders, RoI sampling;
# v1's FPN, RPN head and box head). `model.norm` is "frozen_bn" in all of them (`apply_preset`).
ZOO_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # torchvision's retinanet_resnet50_fpn (COCO box AP 36.4): P6 from P5, heads without norm,
    # torchvision's anchors. (Its postprocessing keeps 300 detections; COCO's AP counts 100.)
    "torchvision_retinanet": ("retinanet", {
        "stride_in_1x1": False, "p6_input": "p5", "head_norm": "none",
        "anchor_convention": "torchvision",
    }),
    # torchvision's retinanet_resnet50_fpn_v2 (41.5): P6 from C5, heads with GroupNorm(32) after
    # convs without bias. Trained by torchvision with the GIoU box loss (on the decoded boxes),
    # which fine-tuning keeps: focaljax's "giou" box loss.
    "torchvision_retinanet_v2": ("retinanet", {
        "stride_in_1x1": False, "p6_input": "c5", "head_norm": "gn", "head_conv_bias": False,
        "anchor_convention": "torchvision", "loss.box": "giou",
    }),
    # detectron2's retinanet_R_50_FPN_{1x,3x} (37.4 / 38.7): MSRA's R-50, P6 from C5.
    "detectron2_retinanet": ("retinanet", {
        "stride_in_1x1": True, "p6_input": "c5", "head_norm": "none",
        "anchor_convention": "detectron2",
    }),
    # torchvision's fasterrcnn_resnet50_fpn (37.0): the original RoIAlign, 2 samples per bin;
    # proposals narrower than 1e-3 pixels dropped.
    "torchvision_faster_rcnn": ("faster_rcnn", {
        "stride_in_1x1": False, "anchor_convention": "torchvision", "rpn.loss": "sampled",
        "rpn.min_size": 1e-3, "roi.aligned": False, "roi.sampling_ratio": 2,
    }),
    # torchvision's fasterrcnn_resnet50_fpn_v2 (46.7): v1's settings, with batch norm after the
    # FPN's convs (which have no bias then), a 2-conv RPN head and the 4conv1fc box head with
    # batch norm after its convs; every one of those batch norms frozen, as its evaluation mode.
    "torchvision_faster_rcnn_v2": ("faster_rcnn", {
        "stride_in_1x1": False, "anchor_convention": "torchvision", "rpn.loss": "sampled",
        "rpn.min_size": 1e-3, "roi.aligned": False, "roi.sampling_ratio": 2,
        "fpn_norm": "frozen_bn", "rpn.num_convs": 2, "roi.head_num_convs": 4,
        "roi.head_num_fcs": 1, "roi.head_norm": "frozen_bn",
    }),
    # detectron2's faster_rcnn_R_50_FPN_{1x,3x} (37.9 / 40.2): the library's defaults but the
    # standard sampled RPN and the zoo's anchors.
    "detectron2_faster_rcnn": ("faster_rcnn", {
        "stride_in_1x1": True, "anchor_convention": "detectron2", "rpn.loss": "sampled",
    }),
}


def default_config() -> ml_collections.ConfigDict:
    """The model-zoo fields of a ResNet detector's model config, with their defaults: no file.

    Examples:
      >>> config = default_config()
      >>> config.zoo_weights, config.zoo_classes
      ('', 'new')
    """
    config = ml_collections.ConfigDict()
    # A COCO-trained detector of torchvision (.pth, .safetensors) or detectron2's model zoo
    # (.pkl), read at a fresh start into the whole detector: ResNet, FPN and heads (never on
    # resume: they are in the checkpoints); "" for none. The model config must build the file's
    # architecture: `ZOO_PRESETS`. Not with `backbone_weights`, which it replaces.
    config.zoo_weights = ""
    # Which class outputs come from the file: "new" (none: the classifier starts from the prior,
    # Faster R-CNN's box deltas from their initialization; the box regression of RetinaNet and
    # everything else comes from the file), "coco" (the data set's classes are COCO's 80, in id
    # order), "file" (the file's own outputs in order: torchvision RetinaNet's 91 category ids,
    # torchvision Faster R-CNN's 90 ids 1..90, detectron2's 80), or the COCO category names of
    # the data set's classes, comma-separated in its class order, a class named otherwise new.
    config.zoo_classes = "new"
    return config


def check_config(config: Any) -> None:
    """Raises ConfigError, naming the field, for zoo fields of `config` (`config.model`) that no
    detector can take. The file is read by the loader, at a fresh start only."""
    if config.zoo_weights and config.backbone_weights:
        raise ConfigError(
            f"config.model.zoo_weights is {config.zoo_weights!r} and backbone_weights "
            f"{config.backbone_weights!r}: a zoo file holds the backbone too; set one of them"
        )
    if not isinstance(config.zoo_classes, str) or not config.zoo_classes:
        raise ConfigError(
            f"config.model.zoo_classes is {config.zoo_classes!r}, expected one of {CLASS_MODES} "
            "or comma-separated COCO category names"
        )


def class_sources(zoo_classes: str, num_classes: int) -> list[int | None] | None:
    """The COCO category (index into `focaljax.models.zoo.COCO_CATEGORIES`) that each of the
    `num_classes` classes takes from a zoo file, None for a new class; None for "file".

    Examples:
      >>> class_sources("person,tree,car", 3)
      [0, None, 2]
      >>> class_sources("new", 2)
      [None, None]
    """
    if zoo_classes == "file":
        return None
    if zoo_classes == "new":
        return [None] * num_classes
    if zoo_classes == "coco":
        if num_classes != len(zoo_lib.COCO_CATEGORIES):
            raise ConfigError(
                f"config.model.zoo_classes is 'coco', but the data set has {num_classes} "
                f"classes, not COCO's {len(zoo_lib.COCO_CATEGORIES)}"
            )
        return list(range(num_classes))
    names = [name.strip() for name in zoo_classes.split(",")]
    if len(names) != num_classes:
        raise ConfigError(
            f"config.model.zoo_classes names {len(names)} classes, the data set has "
            f"{num_classes}; expected one name per class (a name not in COCO for a new class) or "
            f"one of {CLASS_MODES}"
        )
    return [zoo_lib.coco_category_index(name) for name in names]


def apply_preset(model: ml_collections.ConfigDict, preset: str) -> None:
    """Sets the fields of `model` (a model config of the preset's detector) that build the
    architecture of the zoo model `preset`, one of `ZOO_PRESETS`.

    Examples:
      >>> from focaljax.detectors import retinanet
      >>> model = retinanet.default_config()
      >>> apply_preset(model, "torchvision_retinanet")
      >>> model.p6_input, model.anchor_convention, model.head_norm
      ('p5', 'torchvision', 'none')
    """
    if preset not in ZOO_PRESETS:
        raise ConfigError(f"zoo preset {preset!r}, expected one of {sorted(ZOO_PRESETS)}")
    name, fields = ZOO_PRESETS[preset]
    if model.name != name:
        raise ConfigError(f"zoo preset {preset!r} is a {name}, the model config a {model.name}")
    model.norm = "frozen_bn"
    for dotted, value in fields.items():
        *parents, field = dotted.split(".")
        node = model
        for parent in parents:
            node = node[parent]
        node[field] = value


def weights_record(weights: zoo_lib.ZooWeights) -> dict[str, Any]:
    """Where converted zoo weights came from, as plain data (the backbone's record's fields)."""
    return {
        **backbone_lib.file_record(weights.path, weights.format),
        "family": weights.family,
        "architecture": weights.architecture,
        "notes": list(weights.notes),
        "summary": weights.report,
    }


def pretrained_loader(
    config: Any,
    module: Any,
    *,
    num_classes: int,
    anchor_shape: Sequence[int] = (1, 1),
    axis_name: str | None = None,
) -> Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any] | None]]:
    """`Detector.load_pretrained` of a RetinaNet or Faster R-CNN `module` built from `config`:
    the zoo file `config.zoo_weights` converted into the initial variables (the classes as
    `config.zoo_classes` says) and its record; without one, the backbone's loader
    (`focaljax.detectors.backbone.pretrained_loader`). `anchor_shape` is (scales, aspect
    ratios) per location. The file is read when it is called; a file that does not fit is a
    ConfigError naming `config.model.zoo_weights`, and with it the file's model and what differs."""
    if not config.zoo_weights:
        return backbone_lib.pretrained_loader(config, axis_name)
    classes = class_sources(config.zoo_classes, num_classes)

    def load_pretrained(variables):
        try:
            weights = zoo_lib.load_zoo_weights(
                config.zoo_weights, module, variables, classes=classes,
                anchor_shape=tuple(anchor_shape),
            )
        except WeightFileError as error:  # Its message starts with the file.
            raise ConfigError(f"config.model.zoo_weights: {error}") from None
        return jax.tree.map(jnp.asarray, weights.variables), weights_record(weights)

    return load_pretrained
