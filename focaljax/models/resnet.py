"""ResNet backbones returning the C2..C5 feature maps that an FPN consumes.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. The stride-2 convolution of a
bottleneck block sits in its 3x3 convolution ("ResNet v1.5", as in torchvision), and every padding
is the explicit symmetric padding torchvision uses, so converted ImageNet weights give the same
features. A feature map at level ``l`` (stride ``2**l``) has spatial size ``ceil(H / 2**l)``.

Normalization is chosen by name (``norm=``):

* ``"frozen_bn"``: :class:`FrozenBatchNorm`, a fixed affine map whose four arrays live in the
  ``"batch_stats"`` collection, never in ``"params"``. An optimizer built over ``"params"`` alone
  therefore never changes them, and the output is the same in training and evaluation mode.
* ``"bn"``: batch norm with statistics of the batch on each device in training mode.
* ``"sync_bn"``: batch norm whose statistics are averaged over the devices of the ``axis_name``
  mapped axis (``jax.pmap`` / ``shard_map``), i.e. statistics of the global batch.
* ``"gn"``: group norm with 32 groups, or fewer when a layer has too few channels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("frozen_bn", "bn", "sync_bn", "gn")
BLOCKS = ("basic", "bottleneck")

# torchvision's ResNet initialization (He et al., 2015, fan-out mode).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine parameters: ``y = (x - mean) / sqrt(var + eps)
    * scale + bias`` over the last axis.

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
    raise ValueError(f"norm is {norm!r}, expected one of {NORMS}")


def check_norm(norm: str, axis_name: str | None) -> None:
    """Raises ValueError unless ``norm`` is a known name with the ``axis_name`` it needs."""
    if norm not in NORMS:
        raise ValueError(f"norm is {norm!r}, expected one of {NORMS}")
    if norm == "sync_bn" and axis_name is None:
        raise ValueError("norm='sync_bn' needs axis_name, the name of the mapped device axis")


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
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * filters``, plus the shortcut."""

    filters: int
    strides: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(
            nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        out = self.filters * self.expansion
        y = conv(self.filters, (1, 1), name="conv1")(x)
        y = nn.relu(self.norm(self.filters, name="norm1")(y))
        y = conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)), name="conv2")(y)
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
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    width: int = 64
    norm: str = "frozen_bn"
    axis_name: str | None = None
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if len(self.stage_sizes) != 4 or min(self.stage_sizes) < 1:
            raise ValueError(
                f"stage_sizes is {tuple(self.stage_sizes)}, expected four block counts >= 1"
            )
        if self.block not in BLOCKS:
            raise ValueError(f"block is {self.block!r}, expected one of {BLOCKS}")
        if self.width < 1:
            raise ValueError(f"width is {self.width}, expected a positive channel count")
        check_norm(self.norm, self.axis_name)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        norm = functools.partial(
            make_norm, self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype
        )
        x = nn.Conv(
            self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
            kernel_init=_conv_init, dtype=self.dtype, param_dtype=jnp.float32, name="stem_conv",
        )(images)
        x = nn.relu(norm(self.width, name="stem_norm")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block = _BLOCK_MODULES[self.block]
        features = {}
        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                x = block(
                    filters=self.width * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    norm=norm,
                    dtype=self.dtype,
                    name=f"stage{stage + 2}_block{i}",
                )(x)
            features[f"C{stage + 2}"] = x
        return features


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
        raise ValueError(
            f"unknown ResNet {depth_or_name!r}, expected one of {sorted(PRESETS)} "
            "or a depth in (18, 34, 50, 101)"
        )
    return ResNet(**{**PRESETS[name], **kwargs})

