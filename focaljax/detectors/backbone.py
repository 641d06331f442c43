"""What a detector with a ResNet backbone does with the backbone fields of its config: ImageNet
weights merged into its initial variables (`backbone_weights`, `backbone_weights_format`; read by
`focaljax.models.weight_readers`, converted by `focaljax.models.pretrained`, merged here at
`BACKBONE_PATH`), the part of the ResNet that `freeze_at` freezes, and the checks of those fields.

RetinaNet and Faster R-CNN put these into their `Detector` (`load_pretrained`, `frozen`), so the
trainer reads none of these fields and knows no ResNet: a detector without one leaves both
`Detector` fields at their defaults (no weights, nothing frozen) and declares none of the fields.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from focaljax.errors import ConfigError
from focaljax.models import pretrained as pretrained_lib
from focaljax.models import resnet as resnet_lib
from focaljax.models import weight_readers

# Where RetinaNet and FasterRCNN keep their ResNet: ResNetFPN "backbone", its ResNet "resnet".
BACKBONE_PATH = ("backbone", "resnet")


def default_config() -> ml_collections.ConfigDict:
    """The backbone fields of a ResNet detector's model config, with their defaults: a ResNet-50
    trained from scratch with GroupNorm. RetinaNet's and Faster R-CNN's `default_config()` start
    from them; for ImageNet weights, set `backbone_weights` and the weights' recipe (detectron2's
    for its MSRA R-50.pkl: `norm="frozen_bn"`, `freeze_at=2`, `stride_in_1x1=True`).

    Examples:
      >>> config = default_config()
      >>> config.backbone, config.norm, config.freeze_at, config.backbone_weights
      ('resnet50', 'gn', 0, '')
    """
    config = ml_collections.ConfigDict()
    # "resnet18", "resnet34", "resnet50", "resnet101" or "resnet_tiny" (focaljax.models.PRESETS).
    config.backbone = "resnet50"
    # ImageNet weights of the ResNet, read at a fresh start (never on resume: they are in the
    # checkpoints): a .safetensors, torch .pth, detectron2 .pkl or Keras .h5 file, "" for none.
    # The format is detected from the file unless backbone_weights_format names one of
    # focaljax.models.weight_readers.FORMATS.
    config.backbone_weights = ""
    config.backbone_weights_format = ""  # Detected from the file.
    # The ResNet's norm: "bn", "sync_bn" (statistics over the devices), "gn" or "frozen_bn" (the
    # weight file's statistics, fixed).
    config.norm = "gn"
    # detectron2's FREEZE_AT: 0 nothing, 1 the stem, k the stem and stages C2..Ck, which then get
    # no gradient, no update and no weight decay, and keep their batch-norm statistics.
    config.freeze_at = 0
    # A bottleneck's stride in its 1x1 conv (True: MSRA and Keras weights) or its 3x3 conv
    # (False: torchvision and timm weights); checked against the weights' layout.
    config.stride_in_1x1 = False
    return config


def check_config(config: Any) -> None:
    """Raises ConfigError, naming the field, for backbone fields of `config` (`config.model`)
    that no ResNet detector can take: an unknown weight format or `freeze_at`. The weight file
    is read by `load_pretrained`, at a fresh start only: a resumed run does not need it."""
    if config.backbone_weights_format not in ("", *weight_readers.FORMATS):
        raise ConfigError(
            f"config.model.backbone_weights_format is {config.backbone_weights_format!r}, "
            f"expected '' (detected from the file) or one of {weight_readers.FORMATS}"
        )
    if not 0 <= config.freeze_at <= resnet_lib.MAX_FREEZE_AT:
        raise ConfigError(
            f"config.model.freeze_at is {config.freeze_at}, expected 0 (nothing frozen), 1 (the "
            f"stem) ... {resnet_lib.MAX_FREEZE_AT} (the stem and stages C2..C"
            f"{resnet_lib.MAX_FREEZE_AT})"
        )


def load_backbone_weights(
    config: Any, axis_name: str | None = None
) -> pretrained_lib.PretrainedResNet | None:
    """The ImageNet weights of the file `config.backbone_weights` (None for ""), converted for
    the ResNet that `config.backbone`, `config.norm` and `config.stride_in_1x1` describe and for
    focaljax's input normalization. The format is `config.backbone_weights_format`, or the one
    `detect_format` finds when that is "" (see `focaljax.models.weight_readers`, and
    `focaljax.models.pretrained` for the conversion).

    Raises:
      ConfigError: naming `config.model.backbone_weights`, the file and what is wrong with it:
        unreadable, truncated or unsafe, another architecture (with every missing and
        mis-shaped array), or weights the configured ResNet cannot take (a norm without
        statistics, such as "gn"; the stride in the other convolution).
    """
    path = config.backbone_weights
    if not path:
        return None
    resnet = resnet_lib.build_resnet(
        config.backbone, norm=config.norm, axis_name=axis_name,
        stride_in_1x1=config.stride_in_1x1,
    )
    try:
        return pretrained_lib.load_resnet_weights(
            path, resnet, format=config.backbone_weights_format or None,
            input_mean=pretrained_lib.IMAGENET_MEAN, input_std=pretrained_lib.IMAGENET_STD,
        )
    except weight_readers.WeightFileError as error:  # Its message starts with the file.
        raise ConfigError(f"config.model.backbone_weights: {error}") from None
    except ConfigError as error:
        raise ConfigError(
            f"config.model.backbone_weights: {path} does not fit config.model (backbone "
            f"{config.backbone!r}, norm {config.norm!r}, stride_in_1x1 {config.stride_in_1x1}): "
            f"{error}"
        ) from None


def file_record(path: str, format: str) -> dict[str, Any]:
    """Which weight file, as plain data: its absolute path, format, size in bytes and sha256."""
    with open(path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    return {"path": os.path.abspath(path), "format": format, "bytes": os.path.getsize(path),
            "sha256": sha256}


def weights_record(weights: pretrained_lib.PretrainedResNet) -> dict[str, Any]:
    """Where converted weights came from, as plain data: the file (`file_record`), the arrays
    left unused (the classifier), the notes of the conversion, and `summary`, the lines a log
    shows."""
    return {
        **file_record(weights.path, weights.format),
        "unused": list(weights.unused),
        "notes": list(weights.notes),
        "summary": weights.report,
    }


def merge_backbone(
    variables: Mapping[str, Any],
    pretrained: pretrained_lib.PretrainedResNet,
    *,
    path: Sequence[str] = BACKBONE_PATH,
) -> dict[str, Any]:
    """``variables`` of a detector (``module.init``'s) with its ResNet replaced by ``pretrained``.

    In each collection of ``pretrained.variables`` the subtree at ``path`` (``BACKBONE_PATH``,
    where RetinaNet and FasterRCNN keep their ResNet; ``()`` for a bare ResNet) is replaced; it
    must have exactly the same arrays with the same shapes, so a detector built with another
    depth or norm than the weights were loaded for fails here. Nothing else changes.

    Examples:
      >>> import numpy as np
      >>> weights = pretrained_lib.PretrainedResNet(
      ...     {"params": {"stem_conv": {"kernel": np.ones(2)}}},
      ...     path="w.pth", format="pth", unused=(), notes=())
      >>> init = {"params": {"backbone": {"resnet": {"stem_conv": {"kernel": np.zeros(2)}},
      ...                                 "fpn": {"kernel": np.zeros(3)}}}}
      >>> merged = merge_backbone(init, weights)
      >>> merged["params"]["backbone"]["resnet"]["stem_conv"]["kernel"].tolist()
      [1.0, 1.0]
      >>> merged["params"]["backbone"]["fpn"]["kernel"].tolist()
      [0.0, 0.0, 0.0]
    """
    variables = flax.core.unfreeze(variables)
    path = tuple(path)
    merged = dict(variables)
    for collection, new in pretrained.variables.items():
        where = "/".join((collection, *path))
        node = variables.get(collection)
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                available = sorted(node) if isinstance(node, Mapping) else []
                raise ConfigError(
                    f"the variables have no {where} for the weights of {pretrained.path}; "
                    f"found {available} at {key!r}'s level"
                )
            node = node[key]
        old_shapes = _flat_shapes(node)
        new_shapes = _flat_shapes(new)
        if old_shapes != new_shapes:
            differences = sorted(
                f"{name}: {old_shapes.get(name, 'absent')} in the variables, "
                f"{new_shapes.get(name, 'absent')} in the weights"
                for name in old_shapes.keys() | new_shapes.keys()
                if old_shapes.get(name) != new_shapes.get(name)
            )
            raise ConfigError(
                f"the weights of {pretrained.path} do not fit {where} ({len(differences)} "
                f"differences; built with another depth or norm?): " + "; ".join(differences)
            )
        merged[collection] = _replace(variables[collection], path, jax.tree.map(jnp.asarray, new))
    return merged


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(k.key for k in path): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _replace(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = _replace(tree[path[0]], path[1:], value)
    return out


def pretrained_loader(
    config: Any, axis_name: str | None = None
) -> Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any] | None]]:
    """`Detector.load_pretrained` of a detector whose ResNet sits at `BACKBONE_PATH`: the
    initial variables with the weights of `config.backbone_weights` in place of the ResNet's
    (`merge_backbone`), and their `weights_record`; the variables unchanged and None without a
    file. The file is read when it is called."""

    def load_pretrained(variables):
        weights = load_backbone_weights(config, axis_name)
        if weights is None:
            return variables, None
        return merge_backbone(variables, weights), weights_record(weights)

    return load_pretrained


def frozen_parts(freeze_at: int) -> Callable[[Any], Any]:
    """`Detector.frozen` for `freeze_at` (detectron2's FREEZE_AT, `resnet.freeze_mask`): True
    for the leaves of the stem and stages the ResNet keeps fixed, in any tree keyed by module
    names (the params, or the batch statistics)."""
    resnet_lib.check_freeze_at(freeze_at)
    if freeze_at == 0:
        return lambda tree: jax.tree.map(lambda _: False, tree)
    return lambda tree: resnet_lib.freeze_mask(tree, freeze_at=freeze_at)

