"""ImageNet-pretrained ResNet weights: local files converted exactly into focaljax variables.

Nothing is downloaded and torch is not needed. :func:`load_resnet_weights` reads one of
``FORMATS`` with :mod:`focaljax.models.weight_readers` (which says what each format is and what a
file may make the reader do: the pickles are read by unpicklers that accept only the globals an
array needs) and converts its arrays for a focaljax :class:`~focaljax.models.resnet.ResNet`.

What each layout means for the network (Lin et al. and detectron2 start from the MSRA weights;
torchvision's detection models from torchvision's):

* safetensors, pth: the stride in the 3x3 conv (``stride_in_1x1=False``); RGB input with
  torchvision's mean and std; BN eps 1e-5.
* msra_pkl: the stride in the 1x1 conv (``stride_in_1x1=True``); BGR input, mean
  (103.53, 116.28, 123.675), std 1; each BN an affine map (caffe's ``AffineChannel``).
* keras_h5: the stride in the 1x1 conv (``stride_in_1x1=True``); BGR input, mean
  (103.939, 116.779, 123.68), no std (``preprocess_input``'s "caffe" mode); every conv has a
  bias; BN eps 1.001e-5.

Every file is converted for focaljax's input, RGB normalized with ``input_mean`` / ``input_std``
(those of ``focaljax.data``):

* kernels OIHW -> HWIO (transpose ``(2, 3, 1, 0)``);
* the stem kernel takes the input convention into account: for a file that expects
  ``(p - m_f) / s_f`` of pixels ``p`` in its channel order, ``w' = w[..., rgb order, :] * s / s_f``
  and ``delta = sum(w[..., rgb order, :] * (m - m_f) / s_f)`` is subtracted from the stem norm's
  mean, where ``m = 255 * input_mean``, ``s = 255 * input_std``. For MSRA files ``m_f = m``
  (detectron2's mean is 255 x torchvision's), so ``delta = 0`` and the fold is exact everywhere.
  For Keras files ``m - m_f`` is (-0.005, -0.499, -0.409) gray levels: the fold is exact away from
  the image border, but the stem's zero padding stands for pixels of value ``m`` in focaljax and
  ``m_f`` in Keras, so within 3 pixels of the border the features differ from Keras's by those
  fractions of a gray level (measured: 6e-4 to 1e-3 relative on C3-C5 of a 64 x 64 image,
  against 1e-6 away from it);
* a conv bias followed by a BN is folded into it, ``mean' = mean - b`` (Keras);
* BN statistics are stored for focaljax's epsilon (1e-5): a file whose BN used ``eps_f`` gets
  ``var' = var + eps_f - 1e-5`` (Keras: +1e-8), so ``var' + 1e-5 = var + eps_f`` to float32
  rounding; an MSRA affine map ``y = x * s + b`` becomes ``scale=s, bias=b, mean=0,
  var=1 - 1e-5`` (detectron2's ``FrozenBatchNorm2d`` does the same).

The ``"frozen_bn"`` norm keeps all four BN arrays in ``"batch_stats"``; ``"bn"`` and
``"sync_bn"`` keep ``scale`` and ``bias`` in ``"params"``. The classifier (``fc.*``,
``fc1000_*``, Keras ``predictions``) is reported as unused; bookkeeping entries
(``num_batches_tracked``, caffe2's ``*_momentum``) are skipped. Any other missing, unexpected or
mis-shaped array is an error that lists them all, and nothing is returned partially.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from focaljax.errors import ConfigError
from focaljax.models import resnet as resnet_lib
from focaljax.models.weight_readers import FORMATS, WeightFileError, detect_format, read_arrays

# FORMATS, WeightFileError and detect_format are the readers'; they are this module's API too.
__all__ = [
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretrainedResNet",
    "WeightFileError",
    "detect_format",
    "load_resnet_weights",
]

# ImageNet's RGB mean and standard deviation (in [0, 1] units): the input normalization of
# torchvision's and timm's weights, and focaljax's own (focaljax.data normalizes with these), so
# that those weights need no folding. The one home of these numbers.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FOCALJAX_EPS = 1e-5
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_NORMS = ("frozen_bn", "bn", "sync_bn")


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How a family of files names, lays out and preprocesses a ResNet."""

    name: str
    stride_in_1x1: bool | None  # None: the file does not say (a detectron2 model-zoo file)
    kernel_layout: str  # "OIHW" or "HWIO"
    conv_bias: bool
    bn_eps: float
    bgr: bool
    pixel_mean: tuple[float, float, float]  # in the file's channel order, 0..255 scale
    pixel_std: tuple[float, float, float]
    classifier: re.Pattern[str]
    skipped: re.Pattern[str]
    block_key: re.Pattern[str]  # groups: stage, block, conv number or letter


_TORCHVISION = _Layout(
    name="torchvision",
    stride_in_1x1=False,
    kernel_layout="OIHW",
    conv_bias=False,
    bn_eps=1e-5,
    bgr=False,
    pixel_mean=tuple(255.0 * m for m in IMAGENET_MEAN),
    pixel_std=tuple(255.0 * s for s in IMAGENET_STD),
    classifier=re.compile(r"fc\.(weight|bias)"),
    skipped=re.compile(r".*\.num_batches_tracked"),
    block_key=re.compile(r"layer(\d)\.(\d+)\.conv(\d)\.weight"),
)
_MSRA = _Layout(
    name="msra",
    stride_in_1x1=True,
    kernel_layout="OIHW",
    conv_bias=False,
    bn_eps=1e-5,  # caffe2's SpatialBN default, for the statistics form; the affine form has none
    bgr=True,
    pixel_mean=(103.53, 116.28, 123.675),
    pixel_std=(1.0, 1.0, 1.0),
    classifier=re.compile(r"(fc1000|pred)_[wb]"),
    skipped=re.compile(r".*_momentum"),
    block_key=re.compile(r"res(\d)_(\d+)_branch2([abc])_w"),
)
_KERAS = _Layout(
    name="keras",
    stride_in_1x1=True,
    kernel_layout="HWIO",
    conv_bias=True,
    bn_eps=1.001e-5,
    bgr=True,
    pixel_mean=(103.939, 116.779, 123.68),
    pixel_std=(1.0, 1.0, 1.0),
    classifier=re.compile(r"predictions/(kernel|bias)"),
    skipped=re.compile(r"$^"),
    block_key=re.compile(r"conv(\d)_block(\d+)_(\d)_conv/kernel"),
)
_LAYOUTS = {"safetensors": _TORCHVISION, "pth": _TORCHVISION, "msra_pkl": _MSRA,
            "keras_h5": _KERAS}
# The ResNets inside COCO detectors (focaljax.models.zoo), by their names in MSRA's or
# torchvision's layout: torchvision's detectors start from torchvision's ImageNet weights;
# detectron2's from MSRA's R-50.pkl (stride in the 1x1 conv) or, in some projects, from
# torchvision's (stride in the 3x3 conv), which its model-zoo files cannot tell apart.
RESNET_LAYOUTS = {"torchvision": _TORCHVISION,
                  "detectron2": dataclasses.replace(_MSRA, stride_in_1x1=None)}


@dataclasses.dataclass(frozen=True)
class PretrainedResNet:
    """Converted weights of a :class:`~focaljax.models.resnet.ResNet` and where they came from.

    Attributes:
      variables: ``{"params": ..., "batch_stats": ...}``, float32 NumPy arrays in the tree of
        ``resnet.init`` for the ResNet they were loaded for (apply them to it directly, or put
        them into a detector with
        :func:`focaljax.detectors.backbone.merge_backbone`).
      path: the file.
      format: one of ``FORMATS``.
      unused: arrays of the file that are not part of the backbone (the classifier).
      notes: what the conversion did beyond renaming (input folding, BN epsilon).
    """

    variables: dict[str, Any]
    path: str
    format: str
    unused: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def report(self) -> str:
        """A few lines for a log, naming the file, its format, what was folded, what was unused."""
        count = sum(leaf.size for leaf in jax.tree.leaves(self.variables))
        lines = [f"{self.path} ({self.format}): {count:,} backbone values loaded"]
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"  unused: {', '.join(self.unused) if self.unused else 'nothing'}")
        return "\n".join(lines)


def load_resnet_weights(
    path: str | os.PathLike[str],
    resnet: resnet_lib.ResNet,
    *,
    format: str | None = None,
    input_mean: Sequence[float] = IMAGENET_MEAN,
    input_std: Sequence[float] = IMAGENET_STD,
) -> PretrainedResNet:
    """Reads ImageNet ResNet weights from ``path`` and converts them for ``resnet``.

    See the module docstring for the formats and the exact conversion. ``resnet`` must have the
    file's architecture (block type, stage sizes, width 64), ``stride_in_1x1`` as the file's
    layout puts it (False for torchvision / timm, True for MSRA and Keras) and a batch norm
    (``"frozen_bn"``, ``"bn"`` or ``"sync_bn"``); its other attributes (``dtype``,
    ``freeze_at``) do not matter.

    Args:
      path: the weight file.
      resnet: the network the weights are for.
      format: one of ``FORMATS``; None detects it with :func:`detect_format`.
      input_mean, input_std: the RGB normalization ``(pixel / 255 - mean) / std`` of the
        network's input (``focaljax.data``'s); the stem kernel is converted for it.

    Returns:
      A :class:`PretrainedResNet` whose ``variables`` ``resnet.apply`` takes.

    Raises:
      WeightFileError: naming the file and what was wrong (unreadable, truncated, a refused
        pickle global, or every missing, unexpected and mis-shaped array).
      ValueError: ``resnet`` cannot take the file's weights (a norm without statistics, the
        other stride layout).

    Examples:
      >>> import tempfile, pathlib, numpy as np, jax
      >>> from safetensors.numpy import save_file
      >>> from focaljax.models import build_resnet
      >>> resnet = build_resnet("resnet18")
      >>> state = {"conv1.weight": np.ones((64, 3, 7, 7), np.float32)}
      >>> for key in ("weight", "bias", "running_mean", "running_var"):
      ...     state[f"bn1.{key}"] = np.ones(64, np.float32)
      >>> file = pathlib.Path(tempfile.mkdtemp()) / "stem_only.safetensors"
      >>> save_file(state, str(file))
      >>> try:
      ...     load_resnet_weights(file, resnet)
      ... except WeightFileError as error:
      ...     print(str(error).splitlines()[1][:64])
      missing (95): layer1.0.conv1.weight, layer1.0.bn1.weight, layer1
    """
    path = os.fspath(path)
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise ConfigError(f"format is {format!r}, expected one of {FORMATS}")
    if len(input_mean) != 3 or len(input_std) != 3 or min(input_std) <= 0:
        raise ValueError(
            f"input_mean is {tuple(input_mean)} and input_std {tuple(input_std)}, expected "
            "three RGB values each, std > 0"
        )
    layout = _LAYOUTS[format]
    _check_network(resnet, layout)
    return convert_resnet_arrays(
        read_arrays(path, format), resnet, layout=layout, path=path, format=format,
        input_mean=input_mean, input_std=input_std,
    )


def convert_resnet_arrays(
    arrays: Mapping[str, np.ndarray],
    resnet: resnet_lib.ResNet,
    *,
    layout: _Layout,
    path: str,
    format: str,
    input_mean: Sequence[float] = IMAGENET_MEAN,
    input_std: Sequence[float] = IMAGENET_STD,
) -> PretrainedResNet:
    """The conversion of :func:`load_resnet_weights` on arrays already read, named as ``layout``
    (one of ``RESNET_LAYOUTS`` for a detector's ResNet) names them; ``path`` and ``format`` are
    the file's, for the messages and the record."""
    _check_network(resnet, layout)
    shapes = jax.eval_shape(
        lambda: resnet.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    modules = _modules(shapes)
    names, bn_form = _file_names(layout, modules, arrays)
    unused = tuple(sorted(k for k in arrays if layout.classifier.fullmatch(k)))
    _check_arrays(path, layout, resnet, arrays, names, _module_shapes(shapes), unused)
    converted, notes = _convert(layout, bn_form, modules, names, arrays, input_mean, input_std)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, _: converted[tuple(k.key for k in p[1:-1])][p[-1].key], shapes
    )
    return PretrainedResNet(
        variables=flax.core.unfreeze(variables), path=path, format=format, unused=unused,
        notes=tuple(notes),
    )


# -- Conversion ------------------------------------------------------------------------------------


def _check_network(resnet: resnet_lib.ResNet, layout: _Layout) -> None:
    if resnet.norm not in _NORMS:
        raise ConfigError(
            f"the ResNet has norm={resnet.norm!r}, which has no place for the batch norm "
            f"statistics of pretrained weights; expected one of {_NORMS} (detectron2 and the "
            "paper fine-tune with 'frozen_bn')"
        )
    if (resnet.block == "bottleneck" and layout.stride_in_1x1 is not None
            and resnet.stride_in_1x1 != layout.stride_in_1x1):
        raise ConfigError(
            f"{layout.name} weights put a bottleneck's stride in its "
            f"{'1x1' if layout.stride_in_1x1 else '3x3'} convolution: build the ResNet with "
            f"stride_in_1x1={layout.stride_in_1x1}"
        )


def _modules(shapes: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Module paths of the ResNet's convolutions, each followed by its norm, in network order."""
    modules = []
    for path, _ in jax.tree_util.tree_leaves_with_path(shapes["params"]):
        if path[-1].key == "kernel":
            conv = tuple(k.key for k in path[:-1])
            modules += [conv, (*conv[:-1], _norm_of(conv[-1]))]
    return sorted(modules, key=_module_order)


def _norm_of(conv: str) -> str:
    return {"stem_conv": "stem_norm", "proj_conv": "proj_norm"}.get(conv) or conv.replace(
        "conv", "norm"
    )


def _module_order(module: tuple[str, ...]) -> tuple[int, ...]:
    if module[0].startswith("stem"):
        return (0, 0, 0, module[0] != "stem_conv")
    stage, block = map(int, re.fullmatch(r"stage(\d+)_block(\d+)", module[0]).groups())
    layer = module[1]
    number = 9 if layer.startswith("proj") else int(layer[-1])
    return (stage, block, number, "norm" in layer)


def _file_prefix(layout: _Layout, module: tuple[str, ...]) -> str:
    """The file's name of a focaljax conv or norm module, up to the array's own name."""
    is_norm = "norm" in module[-1]
    if module[0].startswith("stem"):
        return {
            "torchvision": "bn1." if is_norm else "conv1.",
            "msra": "res_conv1_bn_" if is_norm else "conv1_",
            "keras": "conv1_bn/" if is_norm else "conv1_conv/",
        }[layout.name]
    stage, block = map(int, re.fullmatch(r"stage(\d+)_block(\d+)", module[0]).groups())
    layer = module[1]
    number = 0 if layer.startswith("proj") else int(layer[-1])
    if layout.name == "torchvision":
        part = (f"downsample.{int(is_norm)}." if number == 0
                else f"{'bn' if is_norm else 'conv'}{number}.")
        return f"layer{stage - 1}.{block}.{part}"
    if layout.name == "msra":
        branch = "branch1" if number == 0 else "branch2" + "abc"[number - 1]
        return f"res{stage}_{block}_{branch}_{'bn_' if is_norm else ''}"
    return f"conv{stage}_block{block + 1}_{number}_{'bn' if is_norm else 'conv'}/"


# The arrays of a conv or norm module: focaljax role -> the file's own name, per layout and form.
_ARRAY_NAMES = {
    ("torchvision", "conv"): {"kernel": "weight"},
    ("torchvision", "stats"): {
        "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var",
    },
    ("msra", "conv"): {"kernel": "w"},
    ("msra", "affine"): {"scale": "s", "bias": "b"},
    ("msra", "stats"): {
        "scale": "gamma", "bias": "beta", "mean": "running_mean", "var": "running_var",
    },
    ("keras", "conv"): {"kernel": "kernel", "conv_bias": "bias"},
    ("keras", "stats"): {
        "scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance",
    },
}


def _file_names(
    layout: _Layout, modules: list[tuple[str, ...]], arrays: Mapping[str, np.ndarray]
) -> tuple[dict[tuple[str, ...], dict[str, str]], str]:
    """The file key of each array of each module, and the BN form ("stats" or "affine")."""
    affine = layout.name == "msra" and any(k.endswith("_bn_s") for k in arrays)
    bn_form = "affine" if affine else "stats"
    names = {}
    for module in modules:
        prefix = _file_prefix(layout, module)
        kind = bn_form if "norm" in module[-1] else "conv"
        names[module] = {
            role: prefix + name for role, name in _ARRAY_NAMES[(layout.name, kind)].items()
        }
    return names, bn_form


def _expected_shape(
    layout: _Layout, role: str, module_shapes: Mapping[str, Any]
) -> tuple[int, ...]:
    if role == "kernel":
        h, w, i, o = module_shapes["kernel"]
        return (o, i, h, w) if layout.kernel_layout == "OIHW" else (h, w, i, o)
    if role == "conv_bias":
        return (module_shapes["kernel"][-1],)
    return tuple(module_shapes["channels"])


def _check_arrays(
    path: str,
    layout: _Layout,
    resnet: resnet_lib.ResNet,
    arrays: Mapping[str, np.ndarray],
    names: Mapping[tuple[str, ...], Mapping[str, str]],
    shapes: Mapping[tuple[str, ...], Mapping[str, Any]],
    unused: Sequence[str],
) -> None:
    """Raises WeightFileError listing every missing, unexpected and mis-shaped array."""
    expected = {key: (module, role) for module, roles in names.items()
                for role, key in roles.items()}
    missing = [k for k in expected if k not in arrays]
    skipped = {k for k in arrays if layout.skipped.fullmatch(k)}
    unexpected = sorted(set(arrays) - set(expected) - set(unused) - skipped)
    misshaped = []
    for key, (module, role) in expected.items():
        if key in arrays:
            want = _expected_shape(layout, role, shapes[module])
            if tuple(arrays[key].shape) != want:
                misshaped.append(f"{key} {tuple(arrays[key].shape)}, expected {want}")
    non_numeric = sorted(
        k for k in expected
        if k in arrays and not (arrays[k].dtype.kind in "iuf" or arrays[k].dtype == _BFLOAT16)
    )
    if len(missing) == len(expected):
        sample = ", ".join(sorted(arrays)[:5]) or "no arrays at all"
        raise WeightFileError(
            f"{path}: holds no {layout.name}-layout ResNet weights: none of the {len(expected)} "
            f"arrays it should have (e.g. {next(iter(expected))}) is there; it has "
            f"{len(arrays)} arrays ({sample}{', ...' if len(arrays) > 5 else ''})"
        )
    if missing or unexpected or misshaped or non_numeric:
        lines = [
            f"{path}: the file holds {_describe(_file_architecture(layout, arrays))}, the "
            f"network is {_describe((resnet.block, tuple(resnet.stage_sizes)))}"
        ]
        for title, items in (
            ("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
            ("not numeric", non_numeric),
        ):
            if items:
                lines.append(f"{title} ({len(items)}): " + ", ".join(items))
        raise WeightFileError("\n".join(lines))


def _module_shapes(shapes: Mapping[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Kernel shape of each conv and channel count of each norm, from the network's variables."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for collection in shapes.values():
        for path, leaf in jax.tree_util.tree_leaves_with_path(collection):
            module, name = tuple(k.key for k in path[:-1]), path[-1].key
            if name == "kernel":
                out[module] = {"kernel": leaf.shape}
            elif name == "mean":
                out[module] = {"channels": leaf.shape}
    return out


def _file_architecture(
    layout: _Layout, arrays: Mapping[str, np.ndarray]
) -> tuple[str, tuple[int, ...]] | None:
    """(block type, blocks per stage) that the file's key names show, or None."""
    blocks: dict[int, set[int]] = collections.defaultdict(set)
    third_conv = False
    for key in arrays:
        match = layout.block_key.fullmatch(key)
        if match:
            stage, block, conv = match.groups()
            blocks[int(stage)].add(int(block))
            third_conv |= conv in ("3", "c")
    if len(blocks) != 4:
        return None
    return ("bottleneck" if third_conv else "basic", tuple(len(blocks[s]) for s in sorted(blocks)))


def _describe(architecture: tuple[str, tuple[int, ...]] | None) -> str:
    if architecture is None:
        return "no recognizable ResNet"
    block, stages = architecture
    for name, preset in resnet_lib.PRESETS.items():
        if (preset["block"], tuple(preset["stage_sizes"]), preset.get("width", 64)) == (
            block, stages, 64
        ):
            return f"a {name} ({block} blocks, stages {stages})"
    return f"a ResNet with {block} blocks and stages {stages}"


def _convert(
    layout: _Layout,
    bn_form: str,
    modules: list[tuple[str, ...]],
    names: Mapping[tuple[str, ...], Mapping[str, str]],
    arrays: Mapping[str, np.ndarray],
    input_mean: Sequence[float],
    input_std: Sequence[float],
) -> tuple[dict[tuple[str, ...], dict[str, np.ndarray]], list[str]]:
    """Each module's focaljax arrays (float32), computed in float64; and notes for the report."""

    def get(module: tuple[str, ...], role: str) -> np.ndarray:
        return np.asarray(arrays[names[module][role]], np.float64)

    notes = []
    converted = {}
    conv_bias = {}
    for module in modules:
        if "norm" in module[-1]:
            continue
        kernel = get(module, "kernel")
        if layout.kernel_layout == "OIHW":
            kernel = kernel.transpose(2, 3, 1, 0)
        converted[module] = {"kernel": kernel}
        if layout.conv_bias:
            conv_bias[(*module[:-1], _norm_of(module[-1]))] = get(module, "conv_bias")

    stem, delta, shift = _fold_input(
        layout, converted[("stem_conv",)]["kernel"], input_mean, input_std
    )
    if layout.bgr or not np.array_equal(stem, converted[("stem_conv",)]["kernel"]):
        notes.append(
            f"stem_conv: the file's input, {'BGR' if layout.bgr else 'RGB'} pixels - "
            f"{layout.pixel_mean} / {layout.pixel_std}, folded in for RGB (pixels / 255 - "
            f"{tuple(input_mean)}) / {tuple(input_std)}"
        )
    if np.max(np.abs(shift)) > 1e-6:
        notes.append(
            f"stem_norm: mean - conv(mean difference {tuple(np.round(shift, 4))} gray levels); "
            "exact except within 3 pixels of the image border, where the zero padding stands "
            "for other pixel values"
        )
    converted[("stem_conv",)]["kernel"] = stem

    for module in modules:
        if "norm" not in module[-1]:
            continue
        if bn_form == "affine":
            scale, bias = get(module, "scale"), get(module, "bias")
            mean, var = np.zeros_like(scale), np.full_like(scale, 1.0 - _FOCALJAX_EPS)
        else:
            scale, bias = get(module, "scale"), get(module, "bias")
            mean = get(module, "mean")
            var = get(module, "var") + (layout.bn_eps - _FOCALJAX_EPS)
        if module in conv_bias:
            mean = mean - conv_bias[module]
        if module == ("stem_norm",):
            mean = mean - delta
        converted[module] = {"scale": scale, "bias": bias, "mean": mean, "var": var}
    if bn_form == "affine":
        notes.append("BN: caffe affine maps (s, b) as scale=s, bias=b, mean=0, var=1-1e-5")
    elif layout.bn_eps != _FOCALJAX_EPS:
        notes.append(f"BN: var + {layout.bn_eps - _FOCALJAX_EPS:.3g} for the file's eps "
                     f"{layout.bn_eps} (focaljax's is {_FOCALJAX_EPS})")
    if layout.conv_bias:
        notes.append("conv biases folded into the following BN: mean - b")
    as_float32 = {
        module: {name: value.astype(np.float32) for name, value in leaves.items()}
        for module, leaves in converted.items()
    }
    return as_float32, notes


def _fold_input(
    layout: _Layout, kernel: np.ndarray, input_mean: Sequence[float], input_std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stem kernel (HWIO, float64) for focaljax's input, the shift of the stem's output
    (``delta``), and the pixel mean difference in RGB order that causes it."""
    order = slice(None, None, -1) if layout.bgr else slice(None)
    kernel = kernel[:, :, order, :]
    file_mean = np.asarray(layout.pixel_mean, np.float64)[order]
    file_std = np.asarray(layout.pixel_std, np.float64)[order]
    mean = 255.0 * np.asarray(input_mean, np.float64)
    std = 255.0 * np.asarray(input_std, np.float64)
    # The file's input in RGB order is (p - file_mean) / file_std with p = std * x + mean.
    delta = np.einsum("hwio,i->o", kernel, (mean - file_mean) / file_std)
    return kernel * (std / file_std)[None, None, :, None], delta, mean - file_mean
