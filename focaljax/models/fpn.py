"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

:class:`FPN` turns backbone maps ``{"C2": ..., "C5": ...}`` into ``{"P{min_level}": ...,
"P{max_level}": ...}``, all with ``channels`` channels. P2..P5 come from the top-down path over
C2..C5; levels above 5 come from an extra block:

* ``"conv_c5"`` (the default): P6 = 3x3/2 conv of C5, P(l+1) = 3x3/2 conv of relu(P(l)), as in
  RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, section 4: "P6 is
  obtained via a 3x3 stride-2 conv on C5") and detectron2's RetinaNet (``LastLevelP6P7`` on
  ``"res5"``).
* ``"conv_p5"``: the same with P6 computed from P5, as in FCOS (Tian et al., ICCV 2019).
* ``"max_pool"``: P(l+1) = P(l) subsampled with stride 2 (Faster R-CNN's P6).

Level ``l`` has spatial size ``ceil(H / 2**l) x ceil(W / 2**l)`` for an ``H x W`` input image, odd
sizes included.

With ``norm="frozen_bn"`` every lateral and output convolution loses its bias and is followed by
a :class:`~focaljax.models.resnet.FrozenBatchNorm` (the ``"batch_stats"`` of ``lateral{l}_norm``
and ``output{l}_norm``): torchvision's ``fasterrcnn_resnet50_fpn_v2``, whose FPN has a
``BatchNorm2d`` there, in evaluation mode. The extra blocks have no norm in any of them.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from focaljax.errors import ConfigError
from focaljax.models import resnet as resnet_lib

EXTRA_BLOCKS = ("conv_c5", "conv_p5", "max_pool")
# The norm after the lateral and output convolutions: none (the paper's) or a fixed affine map.
FPN_NORMS = (None, "frozen_bn")
MIN_BACKBONE_LEVEL, MAX_BACKBONE_LEVEL = 2, 5

# Caffe2's XavierFill, the FPN initialization of the paper's implementation.
_fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Nearest-neighbour 2x upsampling of ``x [B, h, w, C]`` cropped to ``shape[1:3]``.

    Pixel ``i`` of a level sees the same image location as pixel ``i // 2`` of the level above
    (stride-2 convolutions padded by 1, or by ``ceil`` rounding), so repeating and cropping keeps
    the two aligned when a level's size is odd; a generic resize to the odd size would not.
    """
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, : shape[1], : shape[2]]


def check_levels(min_level: int, max_level: int) -> None:
    """Raises ValueError unless an FPN over C2..C5 can make levels ``min_level..max_level``."""
    if not MIN_BACKBONE_LEVEL <= min_level <= MAX_BACKBONE_LEVEL:
        raise ConfigError(
            f"min_level is {min_level}, expected {MIN_BACKBONE_LEVEL}..{MAX_BACKBONE_LEVEL}: "
            f"P{MIN_BACKBONE_LEVEL}-P{MAX_BACKBONE_LEVEL} come from backbone maps "
            f"C{MIN_BACKBONE_LEVEL}-C{MAX_BACKBONE_LEVEL}, higher levels only from extra blocks"
        )
    if max_level < min_level:
        raise ConfigError(f"max_level is {max_level}, expected >= min_level ({min_level})")


class FPN(nn.Module):
    """``{"C2".."C5"} -> {"P{min_level}".."P{max_level}"}``, see the module docstring.

    Attributes:
      channels: channels of every output level (256 in the paper).
      min_level: lowest output level, 2..5; backbone maps below it are not used.
      max_level: highest output level, ``>= min_level``; levels above 5 come from ``extra_block``.
      extra_block: ``"conv_c5"``, ``"conv_p5"`` or ``"max_pool"``.
      dtype: computation dtype; parameters are float32.
      norm: ``None`` or ``"frozen_bn"`` after the lateral and output convolutions, which then
        have no bias (see the module docstring).
    """

    channels: int = 256
    min_level: int = 3
    max_level: int = 7
    extra_block: str = "conv_c5"
    dtype: Any = jnp.float32
    norm: str | None = None

    def __post_init__(self) -> None:
        check_levels(self.min_level, self.max_level)
        if self.extra_block not in EXTRA_BLOCKS:
            raise ConfigError(
                f"extra_block is {self.extra_block!r}, expected one of {EXTRA_BLOCKS}"
            )
        if self.channels < 1:
            raise ConfigError(f"channels is {self.channels}, expected a positive channel count")
        if self.norm not in FPN_NORMS:
            raise ConfigError(f"norm is {self.norm!r}, expected one of {FPN_NORMS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, features: dict[str, jax.Array]) -> dict[str, jax.Array]:
        conv = functools.partial(
            nn.Conv, self.channels, kernel_init=_fpn_init, dtype=self.dtype,
            param_dtype=jnp.float32,
        )

        def conv_norm(x: jax.Array, name: str, **kwargs: Any) -> jax.Array:
            if self.norm is None:
                return conv(name=name, **kwargs)(x)
            x = conv(use_bias=False, name=name, **kwargs)(x)
            return resnet_lib.FrozenBatchNorm(dtype=self.dtype, name=f"{name}_norm")(x)

        top = MAX_BACKBONE_LEVEL
        inner = None
        outputs = {}
        for level in range(top, self.min_level - 1, -1):
            lateral = conv_norm(features[f"C{level}"], f"lateral{level}", kernel_size=(1, 1))
            inner = lateral if inner is None else lateral + upsample_to(inner, lateral.shape)
            if level <= self.max_level:
                outputs[level] = conv_norm(inner, f"output{level}", kernel_size=(3, 3),
                                           padding=((1, 1), (1, 1)))
        for level in range(top + 1, self.max_level + 1):
            previous = outputs[level - 1]
            if self.extra_block == "max_pool":
                # A 1x1 max-pool with stride 2, i.e. every other pixel.
                outputs[level] = previous[:, ::2, ::2]
                continue
            if level > top + 1:
                source = nn.relu(previous)
            elif self.extra_block == "conv_c5":
                source = features[f"C{top}"]
            else:
                source = previous
            outputs[level] = conv((3, 3), (2, 2), padding=((1, 1), (1, 1)), name=f"extra{level}")(
                source
            )
        return {f"P{level}": outputs[level] for level in range(self.min_level, self.max_level + 1)}


class ResNetFPN(nn.Module):
    """A ResNet and an FPN over it: ``images [B, H, W, 3] -> {"P{min_level}".."P{max_level}"}``.

    RetinaNet uses P3-P7 with ``extra_block="conv_c5"``; Faster R-CNN uses P2-P6 with
    ``extra_block="max_pool"``.

    Attributes:
      backbone: a ResNet preset name (``"resnet50"``, ``"resnet_tiny"`` ...; see
        ``resnet.PRESETS``).
      channels, min_level, max_level, extra_block: as in :class:`FPN`.
      norm, axis_name: the ResNet's normalization, see :mod:`focaljax.models.resnet`.
      dtype: computation dtype; parameters are float32.
      stride_in_1x1, freeze_at: the ResNet's stride layout and frozen part, see
        :class:`~focaljax.models.resnet.ResNet`.
      fpn_norm: the FPN's ``norm``.
    """

    backbone: str = "resnet50"
    channels: int = 256
    min_level: int = 3
    max_level: int = 7
    extra_block: str = "conv_c5"
    norm: str = "frozen_bn"
    axis_name: str | None = None
    dtype: Any = jnp.float32
    stride_in_1x1: bool = False
    freeze_at: int = 0
    fpn_norm: str | None = None

    def __post_init__(self) -> None:
        # Builds (and so validates) both parts when the module is constructed, before any tracing.
        self._resnet(parent=None)
        self._fpn(parent=None)
        super().__post_init__()

    def _resnet(self, **kwargs: Any) -> resnet_lib.ResNet:
        return resnet_lib.build_resnet(
            self.backbone, norm=self.norm, axis_name=self.axis_name, dtype=self.dtype,
            stride_in_1x1=self.stride_in_1x1, freeze_at=self.freeze_at, **kwargs,
        )

    def _fpn(self, **kwargs: Any) -> FPN:
        return FPN(
            channels=self.channels, min_level=self.min_level, max_level=self.max_level,
            extra_block=self.extra_block, dtype=self.dtype, norm=self.fpn_norm, **kwargs,
        )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        features = self._resnet(name="resnet")(images, train=train)
        return self._fpn(name="fpn")(features)
