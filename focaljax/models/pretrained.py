"""ImageNet-pretrained ResNet weights: local files converted exactly into focaljax variables.

Nothing is downloaded and torch is not needed. :func:`load_resnet_weights` reads one of
``FORMATS``:

* ``"safetensors"``: a torchvision / timm state dict saved as ``.safetensors`` (timm's and the
  Hugging Face hub's format), read with ``safetensors.numpy``.
* ``"pth"``: a torchvision / timm state dict saved by ``torch.save`` (torch >= 1.6 zip
  archive: ``<name>/data.pkl`` and raw little-endian storages under ``<name>/data/``).
  ``data.pkl`` is read by an unpickler that accepts only the globals a tensor needs
  (``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter``, the ``torch.*Storage`` types,
  ``collections.OrderedDict``); any other global, which is how a pickle runs code, is refused
  before it is called.
* ``"msra_pkl"``: detectron2's ImageNet ``R-50.pkl`` / ``R-101.pkl`` (the MSRA caffe weights, a
  latin1 pickle of NumPy arrays, possibly under ``"blobs"`` or ``"model"``), read by an
  unpickler that accepts only NumPy array reconstruction.
* ``"keras_h5"``: Keras applications ``ResNet50`` / ``ResNet101`` weights in the ``.h5`` layout of
  the files Keras downloads (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``), of
  ``model.save_weights`` in Keras 2, or of a whole model saved as ``.h5``. (Keras 3's
  ``.weights.h5`` names layers by class and position, ``conv2d_12``, not by layer name, so it
  cannot be matched safely: load it into ``keras.applications.ResNet50`` and save that as ``.h5``.)

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
import io
import math
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from focaljax.errors import ConfigError
from focaljax.models import resnet as resnet_lib

FORMATS = ("safetensors", "pth", "msra_pkl", "keras_h5")
# The RGB input normalization of torchvision's and timm's weights, which focaljax.data uses too.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
# Where RetinaNet and FasterRCNN keep their ResNet: ResNetFPN "backbone", its ResNet "resnet".
BACKBONE_PATH = ("backbone", "resnet")

_FOCALJAX_EPS = 1e-5
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_EXTENSIONS = {
    ".safetensors": "safetensors",
    ".pth": "pth",
    ".pt": "pth",
    ".bin": "pth",
    ".pkl": "msra_pkl",
    ".h5": "keras_h5",
    ".hdf5": "keras_h5",
}
_NORMS = ("frozen_bn", "bn", "sync_bn")


class WeightFileError(ConfigError):
    """A weight file that cannot be read, or whose arrays do not fit the network."""


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How a family of files names, lays out and preprocesses a ResNet."""

    name: str
    stride_in_1x1: bool
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
    pixel_mean=tuple(255.0 * m for m in TORCHVISION_MEAN),
    pixel_std=tuple(255.0 * s for s in TORCHVISION_STD),
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


@dataclasses.dataclass(frozen=True)
class PretrainedResNet:
    """Converted weights of a :class:`~focaljax.models.resnet.ResNet` and where they came from.

    Attributes:
      variables: ``{"params": ..., "batch_stats": ...}``, float32 NumPy arrays in the tree of
        ``resnet.init`` for the ResNet they were loaded for (apply them to it directly, or put
        them into a detector with :func:`merge_backbone`).
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


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of the weight file at ``path``, one of ``FORMATS``, from its first bytes.

    The extension decides only when the bytes are not recognized (``.safetensors``, ``.pth`` /
    ``.pt`` / ``.bin``, ``.pkl``, ``.h5`` / ``.hdf5``).

    Examples:
      >>> import tempfile, pathlib
      >>> file = pathlib.Path(tempfile.mkdtemp()) / "weights"
      >>> _ = file.write_bytes(b"\\x89HDF\\r\\n\\x1a\\n" + bytes(8))
      >>> detect_format(file)
      'keras_h5'
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = os.path.getsize(path)
    except OSError as error:
        raise WeightFileError(f"{path}: cannot be read ({error})") from None
    if not head:
        raise WeightFileError(f"{path}: the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "pth"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras_h5"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head[:1] == b"\x80":
        if head[2:4] == b"\x8a\x0a":  # the pickled magic number that opens a torch < 1.6 file
            raise WeightFileError(
                f"{path}: a torch file in the pre-1.6 serialization (not a zip archive), which "
                "is not read here; save its state dict again with a recent torch "
                "(torch.save, or safetensors.torch.save_file)"
            )
        return "msra_pkl"
    extension = os.path.splitext(path)[1].lower()
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    raise WeightFileError(
        f"{path}: unknown weight file (first bytes {head[:8]!r}); expected a .safetensors, "
        f"torch .pth zip, detectron2 .pkl or Keras .h5 file, or pass format= one of {FORMATS}"
    )


def load_resnet_weights(
    path: str | os.PathLike[str],
    resnet: resnet_lib.ResNet,
    *,
    format: str | None = None,
    input_mean: Sequence[float] = TORCHVISION_MEAN,
    input_std: Sequence[float] = TORCHVISION_STD,
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
    arrays = _READERS[format](path)
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


def merge_backbone(
    variables: Mapping[str, Any],
    pretrained: PretrainedResNet,
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
      >>> weights = PretrainedResNet({"params": {"stem_conv": {"kernel": np.ones(2)}}},
      ...                            path="w.pth", format="pth", unused=(), notes=())
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


# -- Conversion ------------------------------------------------------------------------------------


def _check_network(resnet: resnet_lib.ResNet, layout: _Layout) -> None:
    if resnet.norm not in _NORMS:
        raise ConfigError(
            f"the ResNet has norm={resnet.norm!r}, which has no place for the batch norm "
            f"statistics of pretrained weights; expected one of {_NORMS} (detectron2 and the "
            "paper fine-tune with 'frozen_bn')"
        )
    if resnet.block == "bottleneck" and resnet.stride_in_1x1 != layout.stride_in_1x1:
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


# -- Readers: path -> {name: np.ndarray}; every failure is a WeightFileError naming the file. ------


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise WeightFileError(
            f"{path}: not a readable .safetensors file, truncated or corrupt? ({error})"
        ) from None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``allowed``; any other one is refused before it is used."""

    allowed: Mapping[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a weight file needs only "
                + ", ".join(sorted({f"{m}.{n}" for m, n in self.allowed}))
            ) from None


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3's protocol-2 pickles use it for bytes, latin1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# The functions NumPy's own pickles of arrays and scalars call, named by NumPy 1 or 2.
_NUMPY_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]


class _NumpyUnpickler(_RestrictedUnpickler):
    allowed = {
        **{
            (module, name): value
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name, value in (("_reconstruct", _NUMPY_RECONSTRUCT), ("scalar", _NUMPY_SCALAR))
        },
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }


def _unpickle(
    path: str, unpickler: Callable[[Any], pickle.Unpickler], data: io.BufferedIOBase
) -> Any:
    try:
        return unpickler(data).load()
    except WeightFileError:
        raise
    except pickle.UnpicklingError as error:
        raise WeightFileError(f"{path}: unsafe or corrupt pickle: {error}") from None
    except EOFError:
        raise WeightFileError(f"{path}: the pickle ends early; the file is truncated") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            MemoryError, UnicodeDecodeError) as error:
        raise WeightFileError(f"{path}: corrupt pickle ({type(error).__name__}: {error})") from None


def _state_dict(path: str, obj: Any, wrappers: Sequence[str]) -> dict[str, np.ndarray]:
    """The ``{name: array}`` dict in ``obj``, possibly under one of the ``wrappers`` keys."""
    if isinstance(obj, Mapping):
        for key in wrappers:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a dict of arrays")
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, np.ndarray))
    if others:
        raise WeightFileError(
            f"{path}: not a dict of arrays: {len(others)} entries are not arrays "
            f"({', '.join(others[:10])}{', ...' if len(others) > 10 else ''})"
        )
    return {str(k): v for k, v in obj.items()}


def _read_msra_pkl(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        obj = _unpickle(path, lambda data: _NumpyUnpickler(data, encoding="latin1"), f)
    return _state_dict(path, obj, ("blobs", "model"))


_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    data: np.ndarray  # one-dimensional, native byte order


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


def _rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for NumPy: a copy of the strided view of a storage."""
    del requires_grad, backward_hooks, metadata
    if not (isinstance(storage, _Storage) and isinstance(storage_offset, int)
            and storage_offset >= 0 and _is_int_tuple(size) and _is_int_tuple(stride)
            and len(size) == len(stride)):
        raise pickle.UnpicklingError("a tensor with malformed storage, offset, size or stride")
    if math.prod(size) == 0:
        return np.zeros(size, storage.data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.data.size:
        raise pickle.UnpicklingError(
            f"a tensor of size {size} reaches element {last} of a storage of {storage.data.size}"
        )
    itemsize = storage.data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.data[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> np.ndarray:
    del requires_grad, backward_hooks
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError("a parameter whose data is not a tensor")
    return data


class _TorchUnpickler(_RestrictedUnpickler):
    """Unpickles a torch zip archive's ``data.pkl``, reading storages from the archive."""

    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        **{("torch", name): _StorageType(np.dtype(dtype))
           for name, dtype in _TORCH_STORAGE_DTYPES.items()},
    }

    def __init__(self, data: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str,
                 byteorder: str) -> None:
        super().__init__(data, encoding="utf-8")
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages: dict[str, _Storage] = {}

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"refused persistent id {pid!r:.100}, expected a storage")
        _, storage_type, key, _, numel = pid
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"the storage {name} is not in the archive") from None
            dtype = storage_type.dtype.newbyteorder(self._byteorder)
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"the storage {name} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}"
                )
            data = np.frombuffer(raw, dtype).astype(storage_type.dtype.newbyteorder("="))
            self._storages[key] = _Storage(data)
        return self._storages[key]


def _read_pth(path: str) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise WeightFileError(
            f"{path}: not a readable zip archive, truncated? ({error})"
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(pickles) != 1:
            raise WeightFileError(
                f"{path}: a zip archive but not a torch.save file: expected one <name>/data.pkl, "
                f"found {pickles or 'none'}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}constants.pkl" in archive.namelist():
            raise WeightFileError(
                f"{path}: a TorchScript archive (torch.jit.save), not a state dict; save "
                "model.state_dict() with torch.save"
            )
        try:
            byteorder = (
                archive.read(f"{prefix}byteorder").decode()
                if f"{prefix}byteorder" in archive.namelist() else "little"
            )
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
            raise WeightFileError(f"{path}: corrupt zip archive ({error})") from None
        if byteorder not in ("little", "big"):
            raise WeightFileError(f"{path}: unknown byteorder record {byteorder!r}")
        obj = _unpickle(
            path,
            lambda f: _TorchUnpickler(f, archive, prefix, "<" if byteorder == "little" else ">"),
            io.BytesIO(data),
        )
    return _state_dict(path, obj, ("state_dict", "model"))


def _read_keras_h5(path: str) -> dict[str, np.ndarray]:
    import h5py

    def text(value: Any) -> str:
        return value.decode("utf8") if isinstance(value, bytes) else str(value)

    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            if "layer_names" not in root.attrs:
                if "layers" in f and "vars" in f:
                    raise WeightFileError(
                        f"{path}: a Keras 3 .weights.h5 file, whose layers are named by class "
                        "and position (conv2d_12), not by layer name; load it into "
                        "keras.applications.ResNet50 and save that with model.save('x.h5')"
                    )
                raise WeightFileError(
                    f"{path}: an HDF5 file without Keras weights (no 'layer_names' attribute)"
                )
            arrays = {}
            for layer in map(text, root.attrs["layer_names"]):
                group = root[layer]
                for weight in map(text, group.attrs.get("weight_names", [])):
                    name = weight.split("/")[-1].split(":")[0]
                    arrays[f"{layer}/{name}"] = np.asarray(group[weight])
            return arrays
    except WeightFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise WeightFileError(
            f"{path}: not a readable Keras .h5 file, truncated or corrupt? ({error})"
        ) from None


_READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
    "safetensors": _read_safetensors,
    "pth": _read_pth,
    "msra_pkl": _read_msra_pkl,
    "keras_h5": _read_keras_h5,
}
