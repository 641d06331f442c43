"""COCO-trained detectors of the model zoos, converted exactly into focaljax detectors' variables.

Nothing is downloaded and torch is not needed: :func:`load_zoo_weights` reads a local file with
:mod:`focaljax.models.weight_readers` (the same restricted readers, and the same security
boundary, as the ImageNet weights) and maps its arrays onto a :class:`~focaljax.models.RetinaNet`
or :class:`~focaljax.models.FasterRCNN` built with the file's architecture. The files:

* torchvision's ``retinanet_resnet50_fpn`` and ``fasterrcnn_resnet50_fpn`` (``*_coco-*.pth``, or
  the same state dict saved as ``.safetensors``; the key names of torchvision 0.14 and those of
  the older files, ``fpn.inner_blocks.0.weight``, ``head.classification_head.conv.2.weight``,
  ``rpn.head.conv.weight``, alike), and their v2 models ``retinanet_resnet50_fpn_v2`` (P6 from
  C5, heads with GroupNorm after convolutions without bias) and ``fasterrcnn_resnet50_fpn_v2``
  (batch norm after the FPN's convolutions, which have no bias then; a 2-conv RPN head; the
  4-conv, 1-fc box head with batch norm), told from v1 by their key names
  (``head.classification_head.conv.0.1.weight``, ``roi_heads.box_head.0.0.weight``);
* detectron2's model zoo ``retinanet_R_50_FPN_{1x,3x}`` and ``faster_rcnn_R_50_FPN_{1x,3x}``
  ``model_final_*.pkl`` (a pickle of ``{"model": {name: array}}``).

The family and the architecture are told from the key names. The conversion is exact: what a
focaljax detector built as the file's model does (the config fields in
``focaljax.detectors.zoo.ZOO_PRESETS``) gives the reference's outputs to float32 rounding
(tests/models/test_zoo.py, against torchvision itself). What it takes care of:

* the ResNet as :mod:`focaljax.models.pretrained` converts ImageNet weights (frozen batch norm
  with the file's statistics, whether the file's model had frozen batch norm or, as the v2
  models, ``BatchNorm2d``: the same map in evaluation mode; detectron2's BGR 0..255 input
  folded into the stem for focaljax's RGB ImageNet normalization, exactly, since its mean is
  255 times ImageNet's);
* kernels OIHW -> HWIO; the batch norms of the v2 FPN and box head into the ``"batch_stats"``
  of ``"frozen_bn"`` norms, their GroupNorms into ``"gn"`` norms; the box head's first fully
  connected layer, which torch applies to a ``[C, 7, 7]`` RoI (pooled, or after v2's convs)
  flattened channel-major, reordered for focaljax's ``[7, 7, C]`` order;
* torchvision's anchors, ordered aspect-ratio-major within a location, against focaljax's
  scale-major order: the output channels of the RetinaNet heads are permuted (``anchor_shape``);
* the label space: torchvision's outputs are indexed by COCO category id (91 slots: 0 is
  background in Faster R-CNN and unused in RetinaNet, 10 ids are unused by COCO), detectron2's
  by COCO's 80 categories in id order, background last; focaljax's are the data set's classes,
  background last. ``classes`` says which COCO category (an index into ``COCO_CATEGORIES``) each
  focaljax class takes, None for a class that keeps its initial values (a new class: the
  classifier's prior bias); by default the file's own outputs, all of them, in order (for
  parity: torchvision RetinaNet's 91, torchvision Faster R-CNN's 90 foreground ids 1..90,
  detectron2's 80). A softmax classifier (Faster R-CNN) mapped to a subset of its classes
  normalizes over that subset: its scores are those of the file's model only up to the
  probability its dropped classes had (the 10 unused ids of torchvision's, near 0 once trained).

A file that does not fit the detector is refused with a :class:`WeightFileError` of one line
naming the file and every difference (missing, unexpected and mis-shaped arrays, under the file's
names and the detector's).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np

from focaljax.errors import ConfigError
from focaljax.models import pretrained as pretrained_lib
from focaljax.models import resnet as resnet_lib
from focaljax.models.faster_rcnn import FasterRCNN
from focaljax.models.retinanet import RetinaNet
from focaljax.models.weight_readers import FORMATS, WeightFileError, detect_format, read_arrays

__all__ = ["COCO_CATEGORIES", "ZooWeights", "coco_category_index", "load_zoo_weights"]

# COCO 2017's 80 categories, (id, name), in id order: detectron2's contiguous classes, and
# focaljax's COCO data set's (focaljax.data.coco).
COCO_CATEGORIES: tuple[tuple[int, str], ...] = tuple(enumerate((
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "",
    "backpack", "umbrella", "", "", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "", "dining table", "", "", "toilet", "",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)))[1:]
COCO_CATEGORIES = tuple((i, name) for i, name in COCO_CATEGORIES if name)

_ARCHITECTURES = {RetinaNet: "retinanet", FasterRCNN: "faster_rcnn"}
# Arrays that hold no weights: torch's bookkeeping, detectron2's input normalization (checked
# below) and anchors saved by old versions.
_SKIPPED = re.compile(r".*num_batches_tracked|pixel_mean|pixel_std|.*cell_anchors.*")
_DETECTRON2_PIXEL = {"pixel_mean": (103.53, 116.28, 123.675), "pixel_std": (1.0, 1.0, 1.0)}


def coco_category_index(name: str) -> int | None:
    """The index in ``COCO_CATEGORIES`` of the category named ``name``, None for another name.

    Examples:
      >>> [coco_category_index(name) for name in ("person", "toothbrush", "tree")]
      [0, 79, None]
    """
    for index, (_, category) in enumerate(COCO_CATEGORIES):
        if category == name:
            return index
    return None


@dataclasses.dataclass(frozen=True)
class ZooWeights:
    """A detector's variables converted from a model-zoo file, and where they came from.

    Attributes:
      variables: the detector's variables (``module.init``'s tree), NumPy float32 arrays.
      path, format: the file and its format (one of ``FORMATS``).
      family: ``"torchvision"`` or ``"detectron2"``.
      architecture: ``"retinanet"`` or ``"faster_rcnn"``.
      model: the torchvision model whose key layout the file has (``"retinanet_resnet50_fpn"``,
        ``"retinanet_resnet50_fpn_v2"``, ``"fasterrcnn_resnet50_fpn"``,
        ``"fasterrcnn_resnet50_fpn_v2"``); ``""`` for detectron2's.
      notes: what the conversion did beyond renaming.
    """

    variables: dict[str, Any]
    path: str
    format: str
    family: str
    architecture: str
    model: str
    notes: tuple[str, ...]

    @property
    def report(self) -> str:
        """A few lines for a log: the file, what it is, what the conversion did."""
        count = sum(np.size(leaf) for leaf in jax.tree.leaves(self.variables))
        what = _described(self.family, self.architecture, self.model)
        lines = [f"{self.path} ({self.format}): {what}, {count:,} values"]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def load_zoo_weights(
    path: str | os.PathLike[str],
    module: RetinaNet | FasterRCNN,
    variables: Mapping[str, Any],
    *,
    classes: Sequence[int | None] | None = None,
    anchor_shape: tuple[int, int] = (1, 1),
    format: str | None = None,
) -> ZooWeights:
    """Reads a model-zoo file and converts it into ``variables`` of ``module`` (module docstring).

    Args:
      path: a torchvision ``.pth`` / ``.safetensors`` or detectron2 ``.pkl`` detector file.
      module: the focaljax network, built with the file's architecture.
      variables: its initial variables (``module.init``'s), which give the shapes and the
        values of the classes that ``classes`` leaves new.
      classes: for each of the module's classes, the index in ``COCO_CATEGORIES`` of the
        category it takes from the file, or None for one that keeps its initial values; None for
        the file's own outputs, all of them in order.
      anchor_shape: ``(scales, aspect ratios)`` of the module's anchors per location, for
        torchvision's anchor order.
      format: one of ``FORMATS``; None detects it.

    Raises:
      WeightFileError: one line naming the file and what differs.

    Examples:
      >>> import tempfile, pathlib, numpy as np, jax
      >>> from safetensors.numpy import save_file
      >>> file = pathlib.Path(tempfile.mkdtemp()) / "not_a_detector.safetensors"
      >>> save_file({"fc.weight": np.ones((2, 2), np.float32)}, str(file))
      >>> module = RetinaNet(num_classes=3, backbone="resnet_tiny")
      >>> try:
      ...     load_zoo_weights(file, module, {})
      ... except WeightFileError as error:
      ...     print(str(error).split(": ", 1)[1])
      neither torchvision's nor detectron2's detector layout (fc.weight)
    """
    path = os.fspath(path)
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise ConfigError(f"format is {format!r}, expected one of {FORMATS}")
    arrays = read_arrays(path, format)
    family, architecture, model = _identify(path, arrays)
    wanted = _ARCHITECTURES[type(module)]
    if architecture != wanted:
        raise WeightFileError(
            f"{path}: a {family} {architecture} file, but the config builds a {wanted}"
        )
    arrays = _torchvision_names(arrays) if family == "torchvision" else dict(arrays)
    _check_pixels(path, family, arrays)
    if classes is None:
        file_columns = None
        notes = ["classes: the file's own outputs, all of them"]
    else:
        file_columns = [None if c is None else _coco_column(family, architecture, c)
                        for c in classes]
        new = sum(c is None for c in classes)
        notes = [f"classes: {len(classes) - new} of the file's COCO classes, {new} new"]
    mapping = _Mapping(path, _described(family, architecture, model), family, module,
                       flax.core.unfreeze(variables), arrays)
    heads = {"retinanet": _retinanet_heads, "faster_rcnn": _faster_rcnn_heads}[architecture]
    heads(mapping, file_columns, anchor_shape)
    _fpn(mapping)
    mapping.finish()
    backbone = _backbone(path, format, family, module, arrays)
    mapping.merge_backbone(backbone.variables)
    notes += list(backbone.notes)
    return ZooWeights(
        variables=mapping.variables, path=path, format=format, family=family,
        architecture=architecture, model=model, notes=tuple(notes),
    )


# -- What the file is ------------------------------------------------------------------------------


def _identify(path: str, arrays: Mapping[str, np.ndarray]) -> tuple[str, str, str]:
    """(family, architecture, torchvision model or "") of a file, from its key names."""
    keys = set(arrays)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("backbone.body."):
        # v2's heads normalize each hidden conv: Conv2dNormActivation's module 1.
        if has("head.classification_head."):
            v2 = has("head.classification_head.conv.0.1.")
            return "torchvision", "retinanet", "retinanet_resnet50_fpn" + "_v2" * v2
        if has("rpn.head.") and has("roi_heads."):
            v2 = has("roi_heads.box_head.0.")
            return "torchvision", "faster_rcnn", "fasterrcnn_resnet50_fpn" + "_v2" * v2
    if has("backbone.bottom_up."):
        if has("head.cls_subnet."):
            return "detectron2", "retinanet", ""
        if has("proposal_generator.rpn_head.") and has("roi_heads.box_predictor."):
            return "detectron2", "faster_rcnn", ""
    sample = ", ".join(sorted(keys)[:5]) or "no arrays"
    raise WeightFileError(
        f"{path}: neither torchvision's nor detectron2's detector layout ({sample})"
    )


def _described(family: str, architecture: str, model: str) -> str:
    """``"a torchvision retinanet (retinanet_resnet50_fpn_v2)"``, ``"a detectron2 retinanet"``."""
    return f"a {family} {architecture}" + (f" ({model})" if model else "")


def _torchvision_names(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys of torchvision < 0.13's files under today's names (torchvision's own
    ``_load_from_state_dict`` upgrades: ``Conv2dNormActivation`` wraps each conv)."""
    out = {}
    for key, value in arrays.items():
        key = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$",
                     r"\1.0.\2", key)
        key = re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", key)
        match = re.fullmatch(r"(head\.(?:classification|regression)_head\.conv)\.(\d+)\."
                             r"(weight|bias)", key)
        if match:  # nn.Sequential(conv, relu, conv, relu, ...): conv i at 2 i
            key = f"{match[1]}.{int(match[2]) // 2}.0.{match[3]}"
        out[key] = value
    return out


def _check_pixels(path: str, family: str, arrays: Mapping[str, np.ndarray]) -> None:
    """detectron2's files may hold the input normalization they were trained with: it must be
    the MSRA one that the stem conversion folds."""
    if family != "detectron2":
        return
    for name, expected in _DETECTRON2_PIXEL.items():
        if name in arrays and not np.allclose(np.ravel(arrays[name]), expected, atol=1e-3):
            raise WeightFileError(
                f"{path}: {name} is {np.ravel(arrays[name]).tolist()}, expected {list(expected)} "
                "(BGR, 0..255: the MSRA R-50's, which the conversion folds into the stem)"
            )


def _coco_column(family: str, architecture: str, category: int) -> int:
    """The file's output of COCO category ``category`` (an index into ``COCO_CATEGORIES``),
    counted among its foreground outputs (torchvision Faster R-CNN's start at id 1)."""
    if family == "detectron2":
        return category
    coco_id = COCO_CATEGORIES[category][0]
    return coco_id - 1 if architecture == "faster_rcnn" else coco_id


# -- The mapping -----------------------------------------------------------------------------------


class _Mapping:
    """Fills a detector's variables from a file's arrays, and collects every difference."""

    def __init__(self, path: str, described: str, family: str, module: Any,
                 variables: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.path, self.described, self.family, self.module = path, described, family, module
        self.variables = jax.tree.map(np.asarray, variables)
        self.arrays = arrays
        self.used: set[str] = set()
        self.filled: set[tuple[str, ...]] = set()  # where a file array went, fitting or not
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def get(self, key: str) -> np.ndarray | None:
        if key not in self.arrays:
            self.missing.append(key)
            return None
        self.used.add(key)
        return np.asarray(self.arrays[key], np.float64)

    def put(self, where: tuple[str, ...], key: str, value: np.ndarray,
            rows: np.ndarray | None = None) -> None:
        """``value`` (from file array ``key``) at ``where`` (collection, module path..., leaf);
        with ``rows``, only there along the last axis, the rest keeps its initial values."""
        node = self.variables
        for name in where[:-1]:
            node = node.get(name) if isinstance(node, dict) else None
        target = node.get(where[-1]) if isinstance(node, dict) else None
        if target is None:
            self.misshaped.append(f"{key} has no place {'/'.join(where)} in the detector")
            return
        self.filled.add(where)
        shape = target.shape if rows is None else (*target.shape[:-1], int(np.sum(rows)))
        if value.shape != shape:
            self.misshaped.append(
                f"{key} gives {'/'.join(where)} {value.shape}, the detector's is {shape}"
            )
            return
        if rows is None:
            node[where[-1]] = value.astype(np.float32)
        else:
            updated = np.array(target, np.float32)
            updated[..., rows] = value
            node[where[-1]] = updated

    def conv(self, where: tuple[str, ...], prefix: str, bias: bool = True) -> None:
        weight = self.get(prefix + ".weight")
        if weight is not None:
            self.put(("params", *where, "kernel"), prefix + ".weight",
                     weight.transpose(2, 3, 1, 0))
        if bias:
            value = self.get(prefix + ".bias")
            if value is not None:
                self.put(("params", *where, "bias"), prefix + ".bias", value)

    def norm(self, where: tuple[str, ...], prefix: str, kind: str) -> None:
        """The norm at ``where`` from torch's ``prefix.{weight,bias}`` (a GroupNorm's, into the
        params of a ``"gn"`` norm) and ``prefix.running_{mean,var}`` (a BatchNorm2d's, into the
        ``"batch_stats"`` of a ``"frozen_bn"``, which is its evaluation mode: same epsilon)."""
        if kind == "gn":
            names = {"weight": ("params", "scale"), "bias": ("params", "bias")}
        else:
            names = {"weight": ("batch_stats", "scale"), "bias": ("batch_stats", "bias"),
                     "running_mean": ("batch_stats", "mean"),
                     "running_var": ("batch_stats", "var")}
        for name, (collection, leaf) in names.items():
            value = self.get(f"{prefix}.{name}")
            if value is not None:
                self.put((collection, *where, leaf), f"{prefix}.{name}", value)

    def finish(self) -> None:
        """Raises WeightFileError for every difference: missing, unexpected and mis-shaped file
        arrays, and variables of the detector (outside the ResNet) that nothing filled."""
        outside = [
            tuple(k.key for k in p)
            for p, _ in jax.tree_util.tree_leaves_with_path(self.variables)
            if tuple(k.key for k in p)[1:3] != ("backbone", "resnet")
        ]
        unfilled = sorted("/".join(w) for w in outside if w not in self.filled)
        resnet_prefix = ("backbone.body." if self.family == "torchvision"
                         else "backbone.bottom_up.")
        unexpected = sorted(
            k for k in self.arrays
            if k not in self.used and not k.startswith(resnet_prefix)
            and not _SKIPPED.fullmatch(k)
        )
        problems = [(title, items) for title, items in (
            ("missing", self.missing), ("unexpected", unexpected), ("mis-shaped", self.misshaped),
            ("not in the file", unfilled)) if items]
        if problems:
            raise WeightFileError(
                f"{self.path}: {self.described} file does not fit the configured "
                f"{_ARCHITECTURES[type(self.module)]}: "
                + "; ".join(f"{title} ({len(items)}): {_listing(items)}"
                            for title, items in problems)
            )

    def merge_backbone(self, backbone: Mapping[str, Any]) -> None:
        for collection, tree in backbone.items():
            self.variables[collection]["backbone"]["resnet"] = tree


def _listing(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# -- The parts -------------------------------------------------------------------------------------


def _fpn(mapping: _Mapping) -> None:
    module = mapping.module
    fpn = ("backbone", "fpn")
    min_level = 3 if isinstance(module, RetinaNet) else 2
    norm = getattr(module, "fpn_norm", None)
    for level in range(min_level, 6):
        if mapping.family == "torchvision":
            i = level - min_level
            for name, blocks in ((f"lateral{level}", "inner_blocks"),
                                 (f"output{level}", "layer_blocks")):
                prefix = f"backbone.fpn.{blocks}.{i}"
                mapping.conv((*fpn, name), f"{prefix}.0", bias=norm is None)
                if norm is not None:
                    mapping.norm((*fpn, f"{name}_norm"), f"{prefix}.1", norm)
        else:
            mapping.conv((*fpn, f"lateral{level}"), f"backbone.fpn_lateral{level}")
            mapping.conv((*fpn, f"output{level}"), f"backbone.fpn_output{level}")
    if isinstance(module, RetinaNet):
        for level in range(6, module.max_level + 1):
            name = f"p{level}"
            prefix = (f"backbone.fpn.extra_blocks.{name}" if mapping.family == "torchvision"
                      else f"backbone.top_block.{name}")
            mapping.conv((*fpn, f"extra{level}"), prefix)


def _retinanet_heads(
    mapping: _Mapping, file_columns: list[int | None] | None, anchor_shape: tuple[int, int]
) -> None:
    module = mapping.module
    tv = mapping.family == "torchvision"
    # Hidden layer i: torchvision's Conv2dNormActivation i (conv 0, norm 1); detectron2's conv at
    # 2 i of an nn.Sequential(conv, relu, ...), whose heads have no norm in its model zoo.
    if tv:
        names = {"cls": ("head.classification_head.conv.{}.{}",
                         "head.classification_head.cls_logits"),
                 "box": ("head.regression_head.conv.{}.{}", "head.regression_head.bbox_reg")}
    else:
        names = {"cls": ("head.cls_subnet.{}", "head.cls_score"),
                 "box": ("head.bbox_subnet.{}", "head.bbox_pred")}
    num_scales, num_ratios = anchor_shape
    for kind, subnet in (("cls", "cls_subnet"), ("box", "box_subnet")):
        hidden, output = names[kind]
        for i in range(module.head_convs):
            conv = hidden.format(i, 0) if tv else hidden.format(2 * i)
            mapping.conv((subnet, f"conv{i}"), conv, bias=module.head_conv_bias)
            if tv and module.head_norm is not None:
                mapping.norm((subnet, f"norm{i}"), hidden.format(i, 1), module.head_norm)
        weight, bias = mapping.get(output + ".weight"), mapping.get(output + ".bias")
        if weight is None or bias is None:
            continue
        anchors = num_scales * num_ratios
        per_anchor = weight.shape[0] // anchors
        if weight.shape[0] != anchors * per_anchor or anchors != module.num_anchors:
            mapping.misshaped.append(
                f"{output}.weight has {weight.shape[0]} outputs, not {module.num_anchors} anchors "
                "times the values of one"
            )
            continue

        shape = (num_ratios, num_scales) if mapping.family == "torchvision" else None
        weight, bias = (_anchor_major(v, anchors, per_anchor, shape) for v in (weight, bias))
        rows = None
        if kind == "cls":
            columns = _class_columns(file_columns, per_anchor)
            if max((c for c in columns if c is not None), default=0) >= per_anchor:
                mapping.misshaped.append(f"{output}.weight has {per_anchor} classes per anchor")
                continue
            known = np.array([c is not None for c in columns])
            picked = [c for c in columns if c is not None]
            weight, bias = weight[:, picked], bias[:, picked]
            if not known.all():
                rows = np.tile(known, anchors)
        kernel = weight.reshape(-1, *weight.shape[2:]).transpose(2, 3, 1, 0)
        mapping.put(("params", subnet, "output", "kernel"), output + ".weight", kernel,
                    rows=rows)
        mapping.put(("params", subnet, "output", "bias"), output + ".bias", bias.reshape(-1),
                    rows=rows)


def _anchor_major(
    value: np.ndarray, anchors: int, per_anchor: int, ratio_major: tuple[int, int] | None
) -> np.ndarray:
    """A head output's ``[A * K, ...]`` weights as ``[A, K, ...]`` in focaljax's anchor order
    (scale-major), from torchvision's aspect-ratio-major ``(ratios, scales)`` order if given."""
    value = value.reshape(anchors, per_anchor, *value.shape[1:])
    if ratio_major is None:
        return value
    value = value.reshape(*ratio_major, *value.shape[1:]).swapaxes(0, 1)
    return value.reshape(anchors, *value.shape[2:])


def _class_columns(
    file_columns: list[int | None] | None, num_file_classes: int
) -> list[int | None]:
    """The file's class output for each class of the detector: all of them for None."""
    return list(range(num_file_classes)) if file_columns is None else file_columns


def _faster_rcnn_heads(
    mapping: _Mapping, file_columns: list[int | None] | None, anchor_shape: tuple[int, int]
) -> None:
    del anchor_shape  # One scale per level: torchvision's order is focaljax's.
    module = mapping.module
    tv = mapping.family == "torchvision"
    rpn = ("rpn.head.conv.0.0", "rpn.head.cls_logits", "rpn.head.bbox_pred") if tv else (
        "proposal_generator.rpn_head.conv", "proposal_generator.rpn_head.objectness_logits",
        "proposal_generator.rpn_head.anchor_deltas")
    for name, prefix in zip(("conv", "objectness", "deltas"), rpn, strict=True):
        if name == "conv" and tv and module.rpn_num_convs > 1:  # v2: conv i at rpn.head.conv.i
            for i in range(module.rpn_num_convs):
                mapping.conv(("rpn_head", f"conv{i}"), f"rpn.head.conv.{i}.0")
        else:
            mapping.conv(("rpn_head", name), prefix)

    box_head = "roi_heads.box_head."
    fcs = ("fc6", "fc7") if tv else ("fc1", "fc2")
    if tv and module.head_num_convs:
        # v2's FastRCNNConvFCHead, an nn.Sequential: the convs (each conv, norm, ReLU) at
        # 0..n-1, a Flatten at n, each fc and its ReLU from n + 1.
        for i in range(module.head_num_convs):
            mapping.conv(("box_head", f"conv{i}"), f"{box_head}{i}.0",
                         bias=module.head_norm is None)
            if module.head_norm is not None:
                mapping.norm(("box_head", f"norm{i}"), f"{box_head}{i}.1", module.head_norm)
        fcs = tuple(str(module.head_num_convs + 1 + 2 * i) for i in range(module.head_num_fcs))
    for i, fc in enumerate(fcs):
        weight, bias = mapping.get(f"{box_head}{fc}.weight"), mapping.get(f"{box_head}{fc}.bias")
        if weight is None or bias is None:
            continue
        if i == 0:  # torch flattens [C, S, S], focaljax [S, S, C]
            size = mapping.module.roi_output_size
            channels = weight.shape[1] // (size * size)
            if channels * size * size == weight.shape[1]:
                weight = weight.reshape(-1, channels, size, size).transpose(0, 2, 3, 1)
                weight = weight.reshape(weight.shape[0], -1)
        mapping.put(("params", "box_head", f"fc{i}", "kernel"), f"{box_head}{fc}.weight",
                    weight.T)
        mapping.put(("params", "box_head", f"fc{i}", "bias"), f"{box_head}{fc}.bias", bias)

    predictor = "roi_heads.box_predictor."
    cls_w, cls_b, box_w, box_b = (mapping.get(predictor + name) for name in (
        "cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"))
    if cls_w is None or cls_b is None or box_w is None or box_b is None:
        return
    num_file = cls_w.shape[0] - 1
    # torchvision: background row 0, foreground rows 1..K, box deltas for all K + 1 rows;
    # detectron2: foreground rows 0..K-1, background row K, box deltas for the K foreground.
    first, background = (1, 0) if tv else (0, num_file)
    columns = _class_columns(file_columns, num_file)
    picked = [c for c in columns if c is not None]
    deltas_classes = num_file + 1 if tv else num_file
    if max(picked, default=0) >= num_file or box_w.shape[0] != 4 * deltas_classes:
        mapping.misshaped.append(
            f"{predictor}cls_score.weight has {num_file} classes and background, "
            f"{predictor}bbox_pred.weight {box_w.shape[0]} outputs: not 4 per class"
        )
        return
    known = np.array([c is not None for c in columns])
    rows = None if known.all() else np.append(known, True)
    cls_rows = [first + c for c in picked] + [background]
    mapping.put(("params", "box_head", "cls_score", "kernel"), predictor + "cls_score.weight",
                cls_w[cls_rows].T, rows=rows)
    mapping.put(("params", "box_head", "cls_score", "bias"), predictor + "cls_score.bias",
                cls_b[cls_rows], rows=rows)
    box_rows = [first + c for c in picked]
    box_w = box_w.reshape(deltas_classes, 4, -1)[box_rows]
    box_b = box_b.reshape(deltas_classes, 4)[box_rows]
    rows = None if known.all() else np.repeat(known, 4)
    mapping.put(("params", "box_head", "bbox_pred", "kernel"), predictor + "bbox_pred.weight",
                box_w.reshape(-1, box_w.shape[-1]).T, rows=rows)
    mapping.put(("params", "box_head", "bbox_pred", "bias"), predictor + "bbox_pred.bias",
                box_b.reshape(-1), rows=rows)


# -- The ResNet ------------------------------------------------------------------------------------

# detectron2's ResNet names -> MSRA's (focaljax.models.pretrained's "msra" layout).
_D2_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean",
            "running_var": "running_var"}


def _detectron2_resnet_name(key: str) -> str | None:
    rest = key[len("backbone.bottom_up."):]
    match = re.fullmatch(r"stem\.conv1\.(weight|norm\.(\w+))", rest)
    if match:
        if match[2] is None:
            return "conv1_w"
        return f"res_conv1_bn_{_D2_NORM.get(match[2], match[2])}"
    match = re.fullmatch(r"res(\d)\.(\d+)\.(conv[123]|shortcut)\.(weight|norm\.(\w+))", rest)
    if match:
        branch = ("branch1" if match[3] == "shortcut"
                  else "branch2" + "abc"[int(match[3][-1]) - 1])
        base = f"res{match[1]}_{match[2]}_{branch}"
        return f"{base}_w" if match[5] is None else f"{base}_bn_{_D2_NORM.get(match[5], match[5])}"
    return None


def _backbone(path: str, format: str, family: str, module: Any,
              arrays: Mapping[str, np.ndarray]) -> pretrained_lib.PretrainedResNet:
    resnet = resnet_lib.build_resnet(module.backbone, norm=module.norm,
                                     stride_in_1x1=module.stride_in_1x1)
    if family == "torchvision":
        prefix = "backbone.body."
        names = {k[len(prefix):]: k for k in arrays if k.startswith(prefix)}
    else:
        names = {}
        for key in arrays:
            if key.startswith("backbone.bottom_up."):
                names[_detectron2_resnet_name(key) or key] = key
    renamed = {new: arrays[old] for new, old in names.items()}
    try:
        return pretrained_lib.convert_resnet_arrays(
            renamed, resnet, layout=pretrained_lib.RESNET_LAYOUTS[family], path=path,
            format=format,
        )
    except WeightFileError as error:  # in the file's own names, on one line
        message = re.sub(r"[\w.]+", lambda m: names.get(m[0], m[0]), str(error))
        raise WeightFileError(message.replace("\n", "; ")) from None
    except ConfigError as error:
        raise WeightFileError(f"{path}: {error}") from None
