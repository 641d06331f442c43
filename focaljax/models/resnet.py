"""ResNet backbones returning the C2..C5 feature maps that an FPN consumes.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. The stride-2 convolution of a
bottleneck block sits in its 3x3 convolution ("ResNet v1.5", as in torchvision), or with
``stride_in_1x1=True`` in its first 1x1 convolution (the original MSRA layout of detectron2's
``R-50.pkl`` and of Keras applications). Every padding is the explicit symmetric padding torchvision
uses, so converted ImageNet weights (:mod:`focaljax.models.pretrained`) give the same features. A
feature map at level ``l`` (stride ``2**l``) has spatial size ``ceil(H / 2**l)``.

Normalization is chosen by name (``norm=``):

* ``"frozen_bn"``: :class:`FrozenBatchNorm`, a fixed affine map whose four arrays live in the
  ``"batch_stats"`` collection, never in ``"params"``. An optimizer built over ``"params"`` alone
  therefore never changes them, and the output is the same in training and evaluation mode.
* ``"bn"``: batch norm with statistics of the batch on each device in training mode.
* ``"sync_bn"``: batch norm whose statistics are averaged over the devices of the ``axis_name``
  mapped axis (``jax.pmap`` / ``shard_map``), i.e. statistics of the global batch.
* ``"gn"``: group norm with 32 groups, or fewer when a layer has too few channels.

Freezing follows detectron2's ``FREEZE_AT``: ``freeze_at=k`` freezes the stem (``k >= 1``) and the
stages C2..C{k}. :func:`freeze_mask` marks their variables, so that an optimizer can leave them
out (of the update and of weight decay, which would move them even with a zero gradient); the
``ResNet(freeze_at=k)`` attribute also stops gradients at the outputs of the frozen parts, so that
their backward pass is not computed, and runs their normalization as in evaluation mode
(detectron2 turns the batch norms of frozen stages into frozen ones).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from focaljax.errors import ConfigError

NORMS = ("frozen_bn", "bn", "sync_bn", "gn")
BLOCKS = ("basic", "bottleneck")
# detectron2's FREEZE_AT: 0 freezes nothing, 1 the stem, k the stem and stages C2..Ck.
MAX_FREEZE_AT = 5

# torchvision's ResNet initialization (He et al., 2015, fan-out mode).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine parameters over the last axis:
    ``y = (x - mean) / sqrt(var + eps) * scale + bias``.

    ``scale``, ``bias``, ``mean`` and ``var`` are variables of the ``"batch_stats"`` collection,
    initialized to the identity map (1, 0, 0, 1) and meant to be overwritten with pretrained values.
    Nothing ever updates them: they are not in ``"params"``, so gradients and optimizers ignore
    them, and this module never writes to them, so ``mutable=["batch_stats"]`` returns them as
    they were.
    """

    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.variable("batch_stats", "scale", jnp.ones, (features,), jnp.float32).value
        bias = self.variable("batch_stats", "bias", jnp.zeros, (features,), jnp.float32).value
        mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32).value
        var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32).value
        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
        offset = bias - mean * multiplier
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * multiplier.astype(dtype) + offset.astype(dtype)


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """The largest number of groups ``<= max_groups`` that divides ``channels``."""
    return math.gcd(channels, max_groups)


def make_norm(
    norm: str,
    channels: int,
    *,
    train: bool,
    axis_name: str | None,
    dtype: Any,
    scale_init: Callable[..., jax.Array] = nn.initializers.ones,
    name: str | None = None,
) -> nn.Module:
    """The normalization layer named ``norm`` for a ``channels``-wide activation.

    Must be called inside the ``nn.compact`` method of the parent module, which then owns the layer.
    ``scale_init`` applies to the trainable variants (``"bn"``, ``"sync_bn"``, ``"gn"``).
    """
    if norm == "frozen_bn":
        return FrozenBatchNorm(dtype=dtype, name=name)
    if norm in ("bn", "sync_bn"):
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            axis_name=axis_name if norm == "sync_bn" else None,
            dtype=dtype,
            param_dtype=jnp.float32,
            scale_init=scale_init,
            name=name,
        )
    if norm == "gn":
        return nn.GroupNorm(
            num_groups=group_norm_groups(channels),
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=jnp.float32,
            scale_init=scale_init,
            name=name,
        )
    raise ConfigError(f"norm is {norm!r}, expected one of {NORMS}")


def check_norm(norm: str, axis_name: str | None) -> None:
    """Raises ValueError unless ``norm`` is a known name with the ``axis_name`` it needs."""
    if norm not in NORMS:
        raise ConfigError(f"norm is {norm!r}, expected one of {NORMS}")
    if norm == "sync_bn" and axis_name is None:
        raise ConfigError("norm='sync_bn' needs axis_name, the name of the mapped device axis")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity (or 1x1 projection) shortcut; ``filters`` out."""

    filters: int
    strides: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(
            nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        y = conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(self.norm(self.filters, name="norm1")(y))
        y = conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        # A zero-initialized last scale makes each block start as the identity (Goyal et al., 2017).
        y = self.norm(self.filters, scale_init=nn.initializers.zeros, name="norm2")(y)
        if x.shape[-1] != self.filters or self.strides != 1:
            x = conv(self.filters, (1, 1), self.strides, padding="VALID", name="proj_conv")(x)
            x = self.norm(self.filters, name="proj_norm")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand to ``4 * filters``, plus the shortcut.

    The stride is in the 3x3 convolution (torchvision), or in the first 1x1 convolution with
    ``stride_in_1x1`` (MSRA, detectron2's ``STRIDE_IN_1X1``, Keras applications).
    """

    filters: int
    strides: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    stride_in_1x1: bool = False

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(
            nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        out = self.filters * self.expansion
        stride_1x1, stride_3x3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        y = conv(self.filters, (1, 1), stride_1x1, padding="VALID", name="conv1")(x)
        y = nn.relu(self.norm(self.filters, name="norm1")(y))
        y = conv(self.filters, (3, 3), stride_3x3, padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(self.norm(self.filters, name="norm2")(y))
        y = conv(out, (1, 1), name="conv3")(y)
        y = self.norm(out, scale_init=nn.initializers.zeros, name="norm3")(y)
        if x.shape[-1] != out or self.strides != 1:
            x = conv(out, (1, 1), self.strides, padding="VALID", name="proj_conv")(x)
            x = self.norm(out, name="proj_norm")(x)
        return nn.relu(x + y)


_BLOCK_MODULES = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """A ResNet without its classifier: ``images [B, H, W, C] -> {"C2": ..., "C5": ...}``.

    ``C{l}`` has stride ``2**l``, spatial size ``ceil(H / 2**l) x ceil(W / 2**l)`` and
    ``width * 2**(l - 2) * expansion`` channels (expansion 1 for ``"basic"``, 4 for
    ``"bottleneck"``). Features are in ``dtype``; parameters are float32.

    Attributes:
      stage_sizes: number of blocks in each of the four stages (C2..C5).
      block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101).
      width: channels of the stem and of the first stage's blocks (64 in the paper).
      norm: ``"frozen_bn"``, ``"bn"``, ``"sync_bn"`` or ``"gn"``; see the module docstring.
      axis_name: the mapped device axis over which ``"sync_bn"`` averages statistics.
      dtype: computation dtype, e.g. ``jnp.bfloat16``.
      stride_in_1x1: put a bottleneck's stride in its first 1x1 convolution (MSRA / Keras
        weights) instead of its 3x3 convolution (torchvision weights); ``"bottleneck"`` only.
      freeze_at: detectron2's ``FREEZE_AT``, 0..5: the stem (``>= 1``) and stages C2..C{k}
        get no gradient (it stops at their outputs) and normalize as in evaluation mode. Their
        variables are still parameters: leave them out of the optimizer with
        :func:`freeze_mask`.
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    width: int = 64
    norm: str = "frozen_bn"
    axis_name: str | None = None
    dtype: Any = jnp.float32
    stride_in_1x1: bool = False
    freeze_at: int = 0

    def __post_init__(self) -> None:
        if len(self.stage_sizes) != 4 or min(self.stage_sizes) < 1:
            raise ConfigError(
                f"stage_sizes is {tuple(self.stage_sizes)}, expected four block counts >= 1"
            )
        if self.block not in BLOCKS:
            raise ConfigError(f"block is {self.block!r}, expected one of {BLOCKS}")
        if self.width < 1:
            raise ConfigError(f"width is {self.width}, expected a positive channel count")
        check_norm(self.norm, self.axis_name)
        if self.stride_in_1x1 and self.block != "bottleneck":
            raise ConfigError(
                f"stride_in_1x1 is True with block {self.block!r}: only a bottleneck block has "
                "a 1x1 convolution to put the stride in"
            )
        check_freeze_at(self.freeze_at)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        def norm_of(part: int) -> Callable[..., nn.Module]:
            frozen = part <= self.freeze_at
            return functools.partial(
                make_norm, self.norm, train=False if frozen else train, axis_name=self.axis_name,
                dtype=self.dtype,
            )

        # Every frozen part's output, not only the last one's: C2 may feed an FPN level.
        def end_of(part: int, x: jax.Array) -> jax.Array:
            return jax.lax.stop_gradient(x) if part <= self.freeze_at else x

        x = nn.Conv(
            self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
            kernel_init=_conv_init, dtype=self.dtype, param_dtype=jnp.float32, name="stem_conv",
        )(images)
        x = nn.relu(norm_of(1)(self.width, name="stem_norm")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = end_of(1, x)
        block = functools.partial(_BLOCK_MODULES[self.block], dtype=self.dtype)
        if self.block == "bottleneck":
            block = functools.partial(block, stride_in_1x1=self.stride_in_1x1)
        features = {}
        for stage, num_blocks in enumerate(self.stage_sizes):
            level = stage + 2
            for i in range(num_blocks):
                x = block(
                    filters=self.width * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    norm=norm_of(level),
                    name=f"stage{level}_block{i}",
                )(x)
            x = end_of(level, x)
            features[f"C{level}"] = x
        return features


def check_freeze_at(freeze_at: int) -> None:
    """Raises ValueError unless ``freeze_at`` is one of detectron2's ``FREEZE_AT`` values."""
    if not 0 <= freeze_at <= MAX_FREEZE_AT:
        raise ConfigError(
            f"freeze_at is {freeze_at}, expected 0 (nothing frozen), 1 (the stem) ... "
            f"{MAX_FREEZE_AT} (the stem and stages C2..C{MAX_FREEZE_AT})"
        )


# The top-level module names of a ResNet and the part each belongs to: 1 the stem, l stage C_l.
_STEM_NAMES = ("stem_conv", "stem_norm")
_STAGE_NAME = re.compile(r"stage(\d+)_block\d+")


def _resnet_part(path: tuple[Any, ...]) -> int | None:
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "name", None))
        if key in _STEM_NAMES:
            return 1
        match = _STAGE_NAME.fullmatch(str(key))
        if match:
            return int(match.group(1))
    return None


def freeze_mask(tree: Any, *, freeze_at: int) -> Any:
    """A pytree of bools like ``tree``: True for the leaves of the parts ``freeze_at`` freezes.

    ``freeze_at`` is detectron2's ``FREEZE_AT``: 0 nothing, 1 the stem (``stem_conv``,
    ``stem_norm``), ``k`` the stem and the blocks of stages C2..C{k} (``stage2_block0`` ...),
    5 the whole ResNet. ``tree`` is anything keyed by module names: a ResNet's variables or
    ``params``, or those of a detector whose backbone holds the ResNet (a leaf is judged by the
    ResNet module names on its path, e.g. ``("backbone", "resnet", "stem_conv", "kernel")``);
    leaves outside the ResNet are never frozen. For ``optax.masked(tx, mask)``, which updates
    where the mask is True, pass the negation, ``jax.tree.map(operator.not_, freeze_mask(...))``.

    Examples:
      >>> params = {"stem_conv": {"kernel": 0.0}, "stage2_block0": {"kernel": 0.0},
      ...           "stage3_block0": {"kernel": 0.0}}
      >>> freeze_mask({"resnet": params, "head": {"bias": 0.0}}, freeze_at=2)
      {'head': {'bias': False}, 'resnet': {'stage2_block0': {'kernel': True},
       'stage3_block0': {'kernel': False}, 'stem_conv': {'kernel': True}}}
    """
    check_freeze_at(freeze_at)

    def frozen(path: tuple[Any, ...], _: Any) -> bool:
        part = _resnet_part(path)
        return part is not None and part <= freeze_at

    return jax.tree_util.tree_map_with_path(frozen, tree)


PRESETS: dict[str, dict[str, Any]] = {
    "resnet18": {"block": "basic", "stage_sizes": (2, 2, 2, 2)},
    "resnet34": {"block": "basic", "stage_sizes": (3, 4, 6, 3)},
    "resnet50": {"block": "bottleneck", "stage_sizes": (3, 4, 6, 3)},
    "resnet101": {"block": "bottleneck", "stage_sizes": (3, 4, 23, 3)},
    # 0.3M parameters (ResNet-18 has 11.2M): the backbone of tests and of CPU training runs.
    "resnet_tiny": {"block": "basic", "stage_sizes": (1, 1, 1, 1), "width": 16},
}


def build_resnet(depth_or_name: int | str, **kwargs: Any) -> ResNet:
    """The ResNet preset named ``depth_or_name`` (``"resnet50"`` or ``50``; see ``PRESETS``).

    ``kwargs`` are :class:`ResNet` attributes and override the preset's (``width=32``,
    ``stage_sizes=(1, 1, 1, 1)``, ``norm="gn"``, ``dtype=jnp.bfloat16`` ...).
    """
    name = f"resnet{depth_or_name}" if isinstance(depth_or_name, int) else depth_or_name
    if name not in PRESETS:
        raise ConfigError(
            f"unknown ResNet {depth_or_name!r}, expected one of {sorted(PRESETS)} "
            "or a depth in (18, 34, 50, 101)"
        )
    return ResNet(**{**PRESETS[name], **kwargs})

