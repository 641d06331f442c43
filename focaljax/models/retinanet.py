"""The RetinaNet network: ResNet + FPN + classification and box subnets, no loss.

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. The loss is in
:mod:`focaljax.losses`, the anchors in :mod:`focaljax.ops.anchors`, and the detector that joins
them in :mod:`focaljax.detectors`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from focaljax.errors import ConfigError
from focaljax.models import fpn as fpn_lib
from focaljax.models import resnet as resnet_lib

HEAD_NORMS = (None, "gn")
# What P6 is computed from: C5 (the paper, detectron2, torchvision's v2 RetinaNet) or P5
# (torchvision's v1 RetinaNet).
P6_INPUTS = {"c5": "conv_c5", "p5": "conv_p5"}

# The paper's head initialization: gaussian weights with sigma = 0.01, zero bias.
_head_init = nn.initializers.normal(stddev=0.01)


class Subnet(nn.Module):
    """``num_convs`` x (3x3 conv, optional group norm, ReLU), then a 3x3 conv to ``outputs``.

    One instance is applied to every pyramid level, so all levels share its parameters.

    Attributes:
      outputs: channels of the final convolution (``num_anchors * values_per_anchor``).
      num_convs: hidden 3x3 convolutions (4 in the paper).
      channels: channels of the hidden convolutions (256 in the paper).
      norm: ``None`` or ``"gn"`` (group norm after each hidden convolution).
      output_bias: initial value of the final convolution's bias.
      dtype: computation dtype; parameters are float32.
      conv_bias: whether the hidden convolutions have a bias: detectron2's GN heads have one,
        torchvision's (``retinanet_resnet50_fpn_v2``) have none before their group norm.
    """

    outputs: int
    num_convs: int = 4
    channels: int = 256
    norm: str | None = None
    output_bias: float = 0.0
    dtype: Any = jnp.float32
    conv_bias: bool = True

    def __post_init__(self) -> None:
        if self.outputs < 1:
            raise ConfigError(f"outputs is {self.outputs}, expected >= 1")
        if self.num_convs < 0:
            raise ConfigError(f"num_convs is {self.num_convs}, expected >= 0")
        if self.channels < 1:
            raise ConfigError(f"channels is {self.channels}, expected >= 1")
        if self.norm not in HEAD_NORMS:
            raise ConfigError(f"norm is {self.norm!r}, expected one of {HEAD_NORMS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_convs):
            x = nn.Conv(
                self.channels, (3, 3), kernel_init=_head_init, use_bias=self.conv_bias,
                dtype=self.dtype, param_dtype=jnp.float32, name=f"conv{i}",
            )(x)
            if self.norm == "gn":
                x = nn.GroupNorm(
                    num_groups=resnet_lib.group_norm_groups(self.channels), epsilon=1e-5,
                    dtype=self.dtype, param_dtype=jnp.float32, name=f"norm{i}",
                )(x)
            x = nn.relu(x)
        return nn.Conv(
            self.outputs, (3, 3), kernel_init=_head_init,
            bias_init=nn.initializers.constant(self.output_bias), dtype=self.dtype,
            param_dtype=jnp.float32, name="output",
        )(x)


class RetinaNet(nn.Module):
    """RetinaNet: ``images [B, H, W, 3] -> {"cls_logits": [B, A, num_classes],
    "box_deltas": [B, A, 4]}``, both float32.

    The anchor axis ``A = sum_l ceil(H / 2**l) * ceil(W / 2**l) * num_anchors`` over levels
    ``l = min_level..max_level`` is flattened in the order (level, y, x, anchor), the order of
    ``focaljax.ops.anchors.generate_anchors``. ``box_deltas`` are the box coder's encoded
    ``(dx, dy, dw, dh)`` of each anchor. The FPN makes P6 from C5, as the paper does, or from P5
    with ``p6_input="p5"`` (see :mod:`focaljax.models.fpn`). The outputs are cast to float32
    whatever ``dtype`` is, so that the loss sees full-precision logits.

    Attributes:
      num_classes: foreground classes (no background class: sigmoid classification).
      backbone: a ResNet preset name, see ``focaljax.models.resnet.PRESETS``.
      min_level, max_level: pyramid levels, ``2 <= min_level <= 5``, ``max_level >= min_level``.
      fpn_channels: channels of every pyramid level.
      head_convs: hidden 3x3 convolutions of each subnet.
      head_channels: channels of those convolutions.
      head_norm: ``None`` or ``"gn"`` (group norm in the subnets).
      head_conv_bias: whether the subnets' hidden convolutions have a bias (False in
        torchvision's ``retinanet_resnet50_fpn_v2``).
      num_anchors: anchors per location (3 scales x 3 aspect ratios in the paper).
      prior_prob: initial foreground probability of every anchor, ``pi`` in the paper.
      norm: backbone normalization, ``"frozen_bn"``, ``"bn"``, ``"sync_bn"`` or ``"gn"``.
      axis_name: the mapped device axis over which ``"sync_bn"`` averages statistics.
      dtype: computation dtype, e.g. ``jnp.bfloat16``; parameters and outputs are float32.
      stride_in_1x1, freeze_at: the backbone's stride layout (True for MSRA / Keras weights) and
        frozen part (detectron2's ``FREEZE_AT``), see :class:`~focaljax.models.resnet.ResNet`.
      p6_input: ``"c5"`` (the paper's, detectron2's, torchvision's
        ``retinanet_resnet50_fpn_v2``) or ``"p5"`` (torchvision's ``retinanet_resnet50_fpn``):
        what the FPN's P6 convolution takes.
    """

    num_classes: int
    backbone: str = "resnet50"
    min_level: int = 3
    max_level: int = 7
    fpn_channels: int = 256
    head_convs: int = 4
    head_channels: int = 256
    head_norm: str | None = None
    num_anchors: int = 9
    prior_prob: float = 0.01
    norm: str = "frozen_bn"
    axis_name: str | None = None
    dtype: Any = jnp.float32
    stride_in_1x1: bool = False
    freeze_at: int = 0
    p6_input: str = "c5"
    head_conv_bias: bool = True

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"num_classes is {self.num_classes}, expected >= 1")
        if self.p6_input not in P6_INPUTS:
            raise ConfigError(f"p6_input is {self.p6_input!r}, expected one of {tuple(P6_INPUTS)}")
        if self.num_anchors < 1:
            raise ConfigError(f"num_anchors is {self.num_anchors}, expected >= 1")
        if not 0.0 < self.prior_prob < 1.0:
            raise ConfigError(f"prior_prob is {self.prior_prob}, expected a probability in (0, 1)")
        if self.head_convs < 0:
            raise ConfigError(f"head_convs is {self.head_convs}, expected >= 0")
        if self.head_channels < 1:
            raise ConfigError(f"head_channels is {self.head_channels}, expected >= 1")
        if self.head_norm not in HEAD_NORMS:
            raise ConfigError(f"head_norm is {self.head_norm!r}, expected one of {HEAD_NORMS}")
        super().__post_init__()
        # Builds (and so validates) the backbone when the module is constructed, before tracing.
        self._backbone_module(parent=None)

    def _subnet(self, values_per_anchor: int, output_bias: float, **kwargs: Any) -> Subnet:
        return Subnet(
            outputs=self.num_anchors * values_per_anchor,
            num_convs=self.head_convs,
            channels=self.head_channels,
            norm=self.head_norm,
            output_bias=output_bias,
            dtype=self.dtype,
            conv_bias=self.head_conv_bias,
            **kwargs,
        )

    def _backbone_module(self, **kwargs: Any) -> fpn_lib.ResNetFPN:
        return fpn_lib.ResNetFPN(
            backbone=self.backbone,
            channels=self.fpn_channels,
            min_level=self.min_level,
            max_level=self.max_level,
            extra_block=P6_INPUTS[self.p6_input],
            norm=self.norm,
            axis_name=self.axis_name,
            dtype=self.dtype,
            stride_in_1x1=self.stride_in_1x1,
            freeze_at=self.freeze_at,
            **kwargs,
        )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images has shape {images.shape}, expected [B, H, W, 3]")
        features = self._backbone_module(name="backbone")(images, train=train)
        # Every anchor starts with foreground probability sigmoid(bias) = prior_prob (section 4.1).
        prior_bias = -math.log((1.0 - self.prior_prob) / self.prior_prob)
        cls_subnet = self._subnet(self.num_classes, prior_bias, name="cls_subnet")
        box_subnet = self._subnet(4, 0.0, name="box_subnet")
        batch = images.shape[0]
        levels = [features[f"P{level}"] for level in range(self.min_level, self.max_level + 1)]
        # Channels are (anchor, value) within a location, so a row-major reshape of
        # [B, h, w, anchors * values] gives the (y, x, anchor) order.
        cls_logits = [cls_subnet(p).reshape(batch, -1, self.num_classes) for p in levels]
        box_deltas = [box_subnet(p).reshape(batch, -1, 4) for p in levels]
        return {
            "cls_logits": jnp.concatenate(cls_logits, axis=1).astype(jnp.float32),
            "box_deltas": jnp.concatenate(box_deltas, axis=1).astype(jnp.float32),
        }
