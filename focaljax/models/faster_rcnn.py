"""The Faster R-CNN (FPN) network: ResNet + FPN P2-P6, an RPN head, proposals, RoIAlign and the
RoI box head; no loss.

Ren et al., "Faster R-CNN", NeurIPS 2015, with the FPN of Lin et al., CVPR 2017, in detectron2's
`faster_rcnn_R_50_FPN` layout. The RPN may be trained with focal loss instead of sampled
cross-entropy (Chen et al., "Focal Loss for Region Proposal Network", PRCV 2018); the losses are
in :mod:`focaljax.detectors.faster_rcnn`. One forward pass:

1. the backbone gives P2-P6 (P6 subsampled from P5, as detectron2's RPN has it);
2. the RPN head, shared by the levels, gives per-anchor objectness and box deltas;
3. :func:`focaljax.ops.rpn_proposals` turns them into at most `post_nms_topk` proposals per image
   (no gradient flows through them);
4. in training, :func:`focaljax.ops.sample_rois` draws the RoIs to train the box head on from the
   proposals and the ground truth (PRNG stream `"roi_sampling"`); at test time the RoIs are the
   proposals;
5. :func:`focaljax.ops.multilevel_roi_align` pools each RoI from P2-P5 and the box head gives
   `C + 1` class logits (background last) and class-specific box deltas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from focaljax import ops
from focaljax.errors import ConfigError
from focaljax.models import fpn as fpn_lib
from focaljax.models import resnet as resnet_lib

RPN_OBJECTNESS = ("sigmoid", "softmax")
ROI_HEAD_NORMS = (None, "gn", "frozen_bn")

# Caffe2's XavierFill (detectron2's c2_xavier_fill) for the box head's hidden layers.
_xavier_fill = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class ProposalSettings(NamedTuple):
    """How many proposals each image gets (see :func:`focaljax.ops.rpn_proposals`)."""

    pre_nms_topk: int = 2000
    post_nms_topk: int = 1000
    nms_iou_threshold: float = 0.7
    min_size: float = 0.0


class RoISamplingSettings(NamedTuple):
    """How the training RoIs are drawn (see :func:`focaljax.ops.sample_rois`)."""

    num_samples: int = 512
    positive_fraction: float = 0.25
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.5
    append_gt: bool = True


class RPNHead(nn.Module):
    """detectron2's `StandardRPNHead`: a 3x3 conv and ReLU shared by all levels (``num_convs`` of
    them: torchvision's ``fasterrcnn_resnet50_fpn_v2`` has 2), then sibling 1x1 convs for
    objectness and box deltas.

    ``levels [B, h_l, w_l, C] -> (objectness [B, A, k], deltas [B, A, 4])``, anchors in the order
    (level, y, x, anchor) of :func:`focaljax.ops.generate_anchors`. ``k`` is 1 for a sigmoid
    objectness and 2 (background, object) for the 2-way softmax form.

    Weights start from a gaussian with sigma 0.01 (detectron2). The objectness bias starts at 0
    for the standard, sampled RPN. With ``prior_prob`` set (the RPNs trained on every anchor, by
    focal loss or cross-entropy), it starts so that every anchor is an object with probability
    ``prior_prob``: the RetinaNet paper's remedy (section 3.3) for the flood of background loss
    in the first iterations, which is what users putting focal loss on an RPN without it
    reported as losses in the thousands and NaNs (mmdetection issues #3107 and #7920;
    mmdetection's RPN head has no such init).

    Attributes:
      num_anchors: anchors per location.
      objectness: ``"sigmoid"`` (one logit per anchor) or ``"softmax"`` (two).
      prior_prob: initial object probability, or None for a zero bias.
      dtype: computation dtype; parameters and outputs are float32.
      num_convs: the 3x3 convs (each with its ReLU), named as detectron2 names them: ``conv``
        for one, ``conv0``, ``conv1`` ... for several.
    """

    num_anchors: int
    objectness: str = "sigmoid"
    prior_prob: float | None = None
    dtype: Any = jnp.float32
    num_convs: int = 1

    def __post_init__(self) -> None:
        if self.num_anchors < 1:
            raise ConfigError(f"num_anchors is {self.num_anchors}, expected >= 1")
        if self.objectness not in RPN_OBJECTNESS:
            raise ConfigError(
                f"objectness is {self.objectness!r}, expected one of {RPN_OBJECTNESS}"
            )
        if self.prior_prob is not None and not 0.0 < self.prior_prob < 1.0:
            raise ConfigError(
                f"prior_prob is {self.prior_prob}, expected None or a probability in (0, 1)"
            )
        if self.num_convs < 1:
            raise ConfigError(f"num_convs is {self.num_convs}, expected >= 1")
        super().__post_init__()

    @property
    def values_per_anchor(self) -> int:
        return 1 if self.objectness == "sigmoid" else 2

    def _objectness_bias(self) -> Any:
        k = self.values_per_anchor
        if self.prior_prob is None:
            return nn.initializers.zeros
        log_odds = math.log(self.prior_prob / (1.0 - self.prior_prob))
        # Sigmoid: the object logit is the log-odds. Softmax (background, object): a background
        # logit of -log-odds against an object logit of 0 gives p(object) = prior_prob.
        per_anchor = [log_odds] if k == 1 else [-log_odds, 0.0]
        return nn.initializers.constant(jnp.tile(jnp.asarray(per_anchor), self.num_anchors))

    @nn.compact
    def __call__(self, levels: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        init = nn.initializers.normal(stddev=0.01)
        channels = levels[0].shape[-1]
        convs = [
            nn.Conv(channels, (3, 3), kernel_init=init, dtype=self.dtype,
                    param_dtype=jnp.float32, name="conv" if self.num_convs == 1 else f"conv{i}")
            for i in range(self.num_convs)
        ]
        k = self.values_per_anchor
        objectness_conv = nn.Conv(
            self.num_anchors * k, (1, 1), kernel_init=init, bias_init=self._objectness_bias(),
            dtype=self.dtype, param_dtype=jnp.float32, name="objectness",
        )
        deltas_conv = nn.Conv(self.num_anchors * 4, (1, 1), kernel_init=init, dtype=self.dtype,
                              param_dtype=jnp.float32, name="deltas")
        objectness, deltas = [], []
        for x in levels:
            for conv in convs:
                x = nn.relu(conv(x))
            batch = x.shape[0]
            # Channels are (anchor, value) within a location: a row-major reshape gives the
            # (y, x, anchor) order of the anchors.
            objectness.append(objectness_conv(x).reshape(batch, -1, k))
            deltas.append(deltas_conv(x).reshape(batch, -1, 4))
        return (jnp.concatenate(objectness, axis=1).astype(jnp.float32),
                jnp.concatenate(deltas, axis=1).astype(jnp.float32))


def objectness_logit(objectness: jax.Array) -> jax.Array:
    """``[..., k] -> [...]`` log-odds of "object": the logit itself for a sigmoid RPN (k = 1),
    ``object - background`` for the 2-way softmax (k = 2, background first), whose
    ``p(object) = sigmoid(object - background)``."""
    if objectness.shape[-1] == 1:
        return objectness[..., 0]
    return objectness[..., 1] - objectness[..., 0]


class RoIBoxHead(nn.Module):
    """The Fast R-CNN box head: ``pooled [N, S, S, C] -> (cls_logits [N, num_classes + 1],
    box_deltas [N, num_classes, 4])``, background the last class (detectron2's convention).

    ``num_convs`` 3x3 convs (optionally normalized, then without bias) then ``num_fcs`` fully
    connected layers with ReLU: detectron2's default is 0 convs and 2 FC of 1024 ("2fc"); 4 convs
    of 256 and 1 FC of 1024 is its "4conv1fc" variant, and torchvision's
    ``fasterrcnn_resnet50_fpn_v2`` box head (``FastRCNNConvFCHead``, with batch norm: here
    ``"frozen_bn"``, its evaluation mode). Class logits start from a gaussian with sigma 0.01, box
    deltas with sigma 0.001, hidden layers from Caffe2's XavierFill (detectron2).

    Attributes:
      num_classes: foreground classes.
      num_convs, conv_dim: the convolutions.
      num_fcs, fc_dim: the fully connected layers.
      norm: ``None``, ``"gn"`` or ``"frozen_bn"`` (a
        :class:`~focaljax.models.resnet.FrozenBatchNorm`, whose four arrays are in
        ``"batch_stats"``) after each convolution.
      dtype: computation dtype; parameters and outputs are float32.
    """

    num_classes: int
    num_convs: int = 0
    conv_dim: int = 256
    num_fcs: int = 2
    fc_dim: int = 1024
    norm: str | None = None
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"num_classes is {self.num_classes}, expected >= 1")
        for name in ("num_convs", "num_fcs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} is {getattr(self, name)}, expected >= 0")
        for name in ("conv_dim", "fc_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}, expected >= 1")
        if self.norm not in ROI_HEAD_NORMS:
            raise ConfigError(f"norm is {self.norm!r}, expected one of {ROI_HEAD_NORMS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = pooled.astype(self.dtype)
        for i in range(self.num_convs):
            x = nn.Conv(self.conv_dim, (3, 3), kernel_init=nn.initializers.he_normal(),
                        use_bias=self.norm is None, dtype=self.dtype, param_dtype=jnp.float32,
                        name=f"conv{i}")(x)
            if self.norm == "gn":
                x = nn.GroupNorm(num_groups=resnet_lib.group_norm_groups(self.conv_dim),
                                 epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                                 name=f"norm{i}")(x)
            elif self.norm == "frozen_bn":
                x = resnet_lib.FrozenBatchNorm(dtype=self.dtype, name=f"norm{i}")(x)
            x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        for i in range(self.num_fcs):
            x = nn.relu(nn.Dense(self.fc_dim, kernel_init=_xavier_fill, dtype=self.dtype,
                                 param_dtype=jnp.float32, name=f"fc{i}")(x))
        cls_logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01),
                              dtype=self.dtype, param_dtype=jnp.float32, name="cls_score")(x)
        box_deltas = nn.Dense(self.num_classes * 4, kernel_init=nn.initializers.normal(0.001),
                              dtype=self.dtype, param_dtype=jnp.float32, name="bbox_pred")(x)
        return (cls_logits.astype(jnp.float32),
                box_deltas.reshape(-1, self.num_classes, 4).astype(jnp.float32))


class FasterRCNN(nn.Module):
    """Faster R-CNN with an FPN, see the module docstring.

    ``images [B, H, W, 3]`` (plus, in training, the padded ground truth ``gt_boxes [B, M, 4]``,
    ``gt_labels [B, M]`` and ``gt_is_crowd [B, M]``) -> a dict of float32 arrays:

    * ``"rpn_objectness"`` ``[B, A, k]`` and ``"rpn_deltas"`` ``[B, A, 4]``, per anchor of
      :meth:`anchors`;
    * ``"proposals"``: ``{"boxes" [B, P, 4], "scores" [B, P], "valid" [B, P]}``;
    * ``"rois"`` ``[B, R, 4]`` and ``"roi_valid"`` ``[B, R]``: the proposals at test time
      (``R = P``), the sampled RoIs in training (``R = roi_sampling.num_samples``), whose targets
      are under ``"roi_targets"`` (the dict of :func:`focaljax.ops.sample_rois`);
    * ``"roi_cls_logits"`` ``[B, R, num_classes + 1]`` and ``"roi_box_deltas"``
      ``[B, R, num_classes, 4]``.

    Attributes:
      num_classes: foreground classes.
      backbone, norm, axis_name, stride_in_1x1, freeze_at: the ResNet (see
        :class:`~focaljax.models.resnet.ResNet`).
      fpn_channels: channels of every pyramid level.
      fpn_norm: the FPN's norm after its lateral and output convolutions, ``None`` or
        ``"frozen_bn"`` (see :mod:`focaljax.models.fpn`).
      anchor_sizes: anchor size of each RPN level P2..P(1 + len), one per level (32..512).
      aspect_ratios: anchor aspect ratios (height / width) at every location.
      anchor_convention: where the anchors sit and how they are rounded, one of
        :data:`focaljax.ops.anchors.CONVENTIONS` (``"torchvision"`` and ``"detectron2"`` for
        their COCO weights).
      rpn_objectness, rpn_prior_prob, rpn_num_convs: see :class:`RPNHead`.
      rpn_box_coder_weights: weights of the RPN's box coding (1, 1, 1, 1).
      train_proposals, test_proposals: :class:`ProposalSettings` of each mode.
      roi_sampling: :class:`RoISamplingSettings`.
      roi_box_coder_weights: weights of the box head's coding (10, 10, 5, 5).
      roi_min_level, roi_max_level: the levels RoIs are pooled from (P2-P5).
      roi_output_size: RoIAlign's output size (7).
      roi_sampling_ratio: RoIAlign's samples per bin and axis, 0 for adaptive.
      roi_max_sampling_ratio: a cap of the adaptive grid, or None.
      roi_aligned: RoIAlign's half-pixel shift (detectron2's ``ROIAlignV2``); False for the
        original RoIAlign of torchvision's Faster R-CNN.
      head_num_convs, head_conv_dim, head_num_fcs, head_fc_dim, head_norm: :class:`RoIBoxHead`.
      dtype: computation dtype; parameters and outputs are float32.
    """

    num_classes: int
    backbone: str = "resnet50"
    norm: str = "frozen_bn"
    axis_name: str | None = None
    fpn_channels: int = 256
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_convention: str = "focaljax"
    rpn_objectness: str = "sigmoid"
    rpn_prior_prob: float | None = None
    rpn_box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    train_proposals: ProposalSettings = ProposalSettings(2000, 1000)
    test_proposals: ProposalSettings = ProposalSettings(1000, 1000)
    roi_sampling: RoISamplingSettings = RoISamplingSettings()
    roi_box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    roi_min_level: int = 2
    roi_max_level: int = 5
    roi_output_size: int = 7
    roi_sampling_ratio: int = 0
    roi_max_sampling_ratio: int | None = None
    roi_aligned: bool = True
    head_num_convs: int = 0
    head_conv_dim: int = 256
    head_num_fcs: int = 2
    head_fc_dim: int = 1024
    head_norm: str | None = None
    dtype: Any = jnp.float32
    stride_in_1x1: bool = False
    freeze_at: int = 0
    fpn_norm: str | None = None
    rpn_num_convs: int = 1

    RPN_MIN_LEVEL = 2

    @property
    def rpn_max_level(self) -> int:
        return self.RPN_MIN_LEVEL + len(self.anchor_sizes) - 1

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"num_classes is {self.num_classes}, expected >= 1")
        if not self.anchor_sizes or any(s <= 0 for s in self.anchor_sizes):
            raise ConfigError(
                f"anchor_sizes is {self.anchor_sizes}, expected one positive size per RPN level"
            )
        if not self.RPN_MIN_LEVEL <= self.roi_min_level <= self.roi_max_level <= 5:
            raise ConfigError(
                f"RoI levels are {self.roi_min_level}..{self.roi_max_level}, expected levels "
                "of P2..P5 with roi_min_level <= roi_max_level"
            )
        super().__post_init__()
        # Builds (and so validates) the parts when the module is constructed, before tracing.
        self._backbone_module(parent=None)
        self._rpn_head(parent=None)
        self._box_head(parent=None)

    def _backbone_module(self, **kwargs: Any) -> fpn_lib.ResNetFPN:
        return fpn_lib.ResNetFPN(
            backbone=self.backbone, channels=self.fpn_channels, min_level=self.RPN_MIN_LEVEL,
            max_level=max(self.rpn_max_level, self.roi_max_level), extra_block="max_pool",
            norm=self.norm, axis_name=self.axis_name, dtype=self.dtype,
            stride_in_1x1=self.stride_in_1x1, freeze_at=self.freeze_at, fpn_norm=self.fpn_norm,
            **kwargs,
        )

    def _rpn_head(self, **kwargs: Any) -> RPNHead:
        return RPNHead(
            num_anchors=len(self.aspect_ratios), objectness=self.rpn_objectness,
            prior_prob=self.rpn_prior_prob, dtype=self.dtype, num_convs=self.rpn_num_convs,
            **kwargs,
        )

    def _box_head(self, **kwargs: Any) -> RoIBoxHead:
        return RoIBoxHead(
            num_classes=self.num_classes, num_convs=self.head_num_convs,
            conv_dim=self.head_conv_dim, num_fcs=self.head_num_fcs, fc_dim=self.head_fc_dim,
            norm=self.head_norm, dtype=self.dtype, **kwargs,
        )

    def anchors(self, image_size: tuple[int, int]) -> tuple[Any, tuple[int, ...]]:
        """The RPN's anchors `[A, 4]` (NumPy) for `image_size` inputs, and their count per level."""
        levels = {"min_level": self.RPN_MIN_LEVEL, "max_level": self.rpn_max_level}
        shape = {"scales": (1.0,), "aspect_ratios": tuple(self.aspect_ratios)}
        anchors = ops.generate_anchors(
            image_size, **levels, anchor_sizes=tuple(self.anchor_sizes), **shape,
            convention=self.anchor_convention,
        )
        return anchors, tuple(ops.num_anchors_per_level(image_size, **levels, **shape))

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        gt_boxes: jax.Array | None = None,
        gt_labels: jax.Array | None = None,
        gt_is_crowd: jax.Array | None = None,
        *,
        train: bool,
    ) -> dict[str, Any]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images has shape {images.shape}, expected [B, H, W, 3]")
        if train and gt_boxes is None:
            raise ValueError("training needs the ground truth (gt_boxes, gt_labels, gt_is_crowd)")
        image_size = tuple(images.shape[1:3])
        features = self._backbone_module(name="backbone")(images, train=train)
        rpn_levels = range(self.RPN_MIN_LEVEL, self.rpn_max_level + 1)
        objectness, rpn_deltas = self._rpn_head(name="rpn_head")(
            [features[f"P{level}"] for level in rpn_levels]
        )

        anchors, anchors_per_level = self.anchors(image_size)
        settings = self.train_proposals if train else self.test_proposals
        proposals = jax.vmap(
            lambda logit, deltas: ops.rpn_proposals(
                logit, deltas, anchors=anchors, anchors_per_level=anchors_per_level,
                image_size=image_size, pre_nms_topk=settings.pre_nms_topk,
                post_nms_topk=settings.post_nms_topk,
                nms_iou_threshold=settings.nms_iou_threshold, min_size=settings.min_size,
                box_coder=ops.BoxCoder(weights=tuple(self.rpn_box_coder_weights)),
            )
        )(objectness_logit(objectness), rpn_deltas)

        outputs: dict[str, Any] = {
            "rpn_objectness": objectness, "rpn_deltas": rpn_deltas, "proposals": proposals,
        }
        if train:
            sampling = self.roi_sampling
            keys = jax.random.split(self.make_rng("roi_sampling"), images.shape[0])
            targets = jax.vmap(
                lambda key, boxes, valid, gt, labels, crowd: ops.sample_rois(
                    key, boxes, valid, gt, labels, crowd,
                    num_samples=sampling.num_samples,
                    positive_fraction=sampling.positive_fraction,
                    fg_iou_threshold=sampling.fg_iou_threshold,
                    bg_iou_threshold=sampling.bg_iou_threshold,
                    append_gt=sampling.append_gt,
                    box_coder=ops.BoxCoder(weights=tuple(self.roi_box_coder_weights)),
                )
            )(keys, proposals["boxes"], proposals["valid"], gt_boxes, gt_labels, gt_is_crowd)
            rois, roi_valid = targets["boxes"], targets["valid"]
            outputs["roi_targets"] = targets
        else:
            rois, roi_valid = proposals["boxes"], proposals["valid"]

        roi_levels = range(self.roi_min_level, self.roi_max_level + 1)
        pooled = jax.vmap(
            lambda maps, boxes: ops.multilevel_roi_align(
                maps, boxes, min_level=self.roi_min_level, max_level=self.roi_max_level,
                output_size=(self.roi_output_size, self.roi_output_size),
                sampling_ratio=self.roi_sampling_ratio,
                max_sampling_ratio=self.roi_max_sampling_ratio, aligned=self.roi_aligned,
            )
        )([features[f"P{level}"] for level in roi_levels], rois)
        batch, num_rois = rois.shape[:2]
        cls_logits, box_deltas = self._box_head(name="box_head")(
            pooled.reshape(batch * num_rois, *pooled.shape[2:])
        )
        outputs.update(
            rois=rois,
            roi_valid=roi_valid,
            roi_cls_logits=cls_logits.reshape(batch, num_rois, -1),
            roi_box_deltas=box_deltas.reshape(batch, num_rois, self.num_classes, 4),
        )
        return outputs
