"""RetinaNet as a `Detector`: the network, the focal loss (or a baseline loss) and its inference.

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. The anchors of the (padded) input
size are computed once, as a NumPy constant. The loss of one image is built from
`focaljax.ops.matching.build_targets`::

    L = (1 / N) * [ sum_{anchors a not ignored} sum_c  L_cls(x_ac, t_ac)
                    + box_weight * sum_{positive a} L_box(a) ],   N = max(1, #positive anchors),

with `N` counted over the whole global batch (`focaljax.losses.positive_normalizer`), so the
pmapped loss equals the loss of the global batch on one device. With `config.loss.normalizer` set
to `"ema"`, `N` is instead detectron2's moving average of that count
(`focaljax.losses.ema_normalizer`, momentum `ema_momentum`, starting at 100), kept in the loss
state between steps. The loss terms are `{"cls": ..., "box": ...}`. `L_cls` is chosen by
`config.loss.cls`:

* `"focal"`: `sigmoid_focal_loss(alpha, gamma)`, the paper's loss (alpha 0.25, gamma 2).
* `"ce"`: plain sigmoid cross-entropy; `"alpha_ce"`: alpha-balanced cross-entropy (Table 1a).
* `"fl_star"`: `focal_loss_star(gamma, fl_star_beta)` (appendix A), on FL's model: the same
  prior bias (`sigmoid(x) = prior_prob` at the start) and the same scores `sigmoid(x)`. With
  `fl_star_beta != 0` FL*'s positive and negative terms are not `p` and `1 - p` of one `p`;
  any reading of one is increasing in `x`, so the detections rank the same under it.
* `"ohem"`: cross-entropy on the anchors `focaljax.losses.ohem_mask` picks in each image by
  their loss summed over classes, at most `ohem_num_samples` of the non-ignored anchors. With a
  nonzero `ohem_nms_iou_threshold` (the paper's OHEM, Table 1d: 0.5 or 0.7), greedy NMS by loss
  first thins the `ohem_pre_nms_topk` highest-loss anchors (0: all of them), comparing the
  anchors themselves (`ohem_nms_boxes = "anchors"`) or the boxes predicted for them
  (`"decoded"`, without gradient). Of the anchors left, with a nonzero `ohem_negative_ratio`:
  SSD's rule, every positive and at most that many hardest negatives per positive (3 is the
  paper's "OHEM 1:3"); with a nonzero `ohem_positive_fraction` instead: at most that fraction of
  positives, the rest the hardest negatives; with both 0: the top anchors whatever their label.
  As for every loss here, the sum is divided by the number of positives.

`L_box` (`config.loss.box`), summed over the four deltas: `"l1"` (detectron2's default),
`"smooth_l1"` with `box_beta`, or `"giou"` on the decoded predicted and ground-truth boxes.

`default_config()` declares every field of the model config, with what it means and the paper's
values; start from it and change what differs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from focaljax import losses
from focaljax.detectors import backbone as backbone_lib
from focaljax.detectors import zoo as zoo_lib
from focaljax.detectors.detector import DTYPES, Batch, Detector, LossOutput, optional
from focaljax.errors import ConfigError
from focaljax.losses.classification import SOFT_TARGET_MODES
from focaljax.models import RetinaNet
from focaljax.models.retinanet import P6_INPUTS
from focaljax.ops import anchors as anchor_ops
from focaljax.ops import matching
from focaljax.ops.boxes import BoxCoder
from focaljax.ops.postprocess import retinanet_postprocess

CLS_LOSSES = ("focal", "ce", "alpha_ce", "fl_star", "ohem")
NORMALIZERS = ("num_positives", "ema")
BOX_LOSSES = ("l1", "smooth_l1", "giou")
OHEM_NMS_BOXES = ("anchors", "decoded")


def default_config() -> ml_collections.ConfigDict:
    """Every field of a RetinaNet model config (`config.model`), with what it means and the
    paper's R50-FPN values (Lin et al. 2017, section 4.1; detectron2's `retinanet_R_50_FPN_1x`),
    the ResNet-50 trained from scratch with GroupNorm in the backbone and the heads
    (`focaljax.detectors.backbone.default_config`). For the paper's ImageNet start, set the
    weight file and its recipe, and the heads' norm to "none" (`configs/default.py`'s
    `retinanet_model(weights)` does). `build_retinanet` reads every field.

    Examples:
      >>> config = default_config()
      >>> config.name, config.min_level, config.max_level, config.loss.cls, config.loss.gamma
      ('retinanet', 3, 7, 'focal', 2.0)
      >>> detector = build_retinanet(config, num_classes=80, image_size=(512, 512))
    """
    config = ml_collections.ConfigDict()
    config.name = "retinanet"  # Its name in `focaljax.detectors.BUILDERS`.
    config.update(backbone_lib.default_config())
    config.update(zoo_lib.default_config())
    # The FPN levels P{min_level}..P{max_level} (P3-P7: strides 8-128) and their channels.
    config.min_level = 3
    config.max_level = 7
    config.fpn_channels = 256
    # What P6 is computed from: "c5" (the paper's, detectron2's) or "p5" (torchvision's v1).
    config.p6_input = "c5"
    # The classification and box heads: head_convs convs of head_channels, then the output conv.
    config.head_convs = 4
    config.head_channels = 256
    # The heads' norm: "gn" or "none" (ml_collections cannot set None from the command line). The
    # paper's heads have none; trained from scratch they converge much faster with GN.
    config.head_norm = "gn"
    # Whether the heads' hidden convs have a bias (detectron2's have one, with or without GN;
    # torchvision's v2 GN heads have none).
    config.head_conv_bias = True
    config.prior_prob = 0.01  # The foreground probability the classifier bias starts from.
    config.dtype = "float32"  # Compute dtype: "float32", "bfloat16" or "float16".
    # Anchors: base size anchor_base_scale * stride, times each scale, at each aspect ratio
    # (height / width). The paper's: 9 per location, sizes 32 (P3) to 512 (P7).
    config.anchor_base_scale = 4.0
    config.anchor_scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    config.aspect_ratios = (0.5, 1.0, 2.0)
    # Where the anchors sit and how they are rounded: "focaljax" (cells centred at
    # (x + 0.5) * stride), or the model zoos' "detectron2" and "torchvision", which their COCO
    # weights need (focaljax.ops.anchors.CONVENTIONS).
    config.anchor_convention = "focaljax"
    # Matching: IoU >= fg_iou_threshold foreground, < bg_iou_threshold background, in between
    # ignored; low-quality matches make each object's best anchor foreground too.
    config.fg_iou_threshold = 0.5
    config.bg_iou_threshold = 0.4
    config.allow_low_quality_matches = True
    config.box_coder_weights = (1.0, 1.0, 1.0, 1.0)  # (wx, wy, ww, wh) of the box deltas.

    loss = config.loss = ml_collections.ConfigDict()
    # The classification loss: "focal" (alpha, gamma), "ce", "alpha_ce" (alpha), "fl_star"
    # (gamma, fl_star_beta) or "ohem" (the ohem_* fields); see the module docstring.
    loss.cls = "focal"
    loss.alpha = 0.25
    loss.gamma = 2.0
    loss.label_smoothing = 0.0  # In [0, 1), of the focal loss's targets.
    # The focal factor for soft targets (label_smoothing > 0): "pt", (1 - p_t)^gamma as optax,
    # torchvision and Keras, or "quality", |t - p|^gamma (focaljax.losses.sigmoid_focal_loss).
    loss.soft_target_mode = "pt"
    loss.fl_star_beta = 0.0
    # "ohem": the highest-loss anchors per image, at most this fraction of them positives.
    loss.ohem_num_samples = 128
    loss.ohem_positive_fraction = 0.25
    # "ohem": instead of a positive fraction (set it to 0), SSD's rule: every positive and at most
    # this many hardest negatives per positive (3.0 is the paper's "OHEM 1:3"); 0.0 is off.
    loss.ohem_negative_ratio = 0.0
    # "ohem": NMS by loss over the anchors before they are picked, at this IoU (the paper's OHEM:
    # 0.5 or 0.7); 0.0 is no NMS. Over the ohem_pre_nms_topk highest-loss anchors (0: all; with a
    # positive rule, NMS over all of tens of thousands of anchors is slow), comparing the
    # "anchors" themselves or the boxes the box head predicts for them ("decoded").
    loss.ohem_nms_iou_threshold = 0.0
    loss.ohem_pre_nms_topk = 0
    loss.ohem_nms_boxes = "anchors"
    # N of the loss: "num_positives" (the paper's max(1, #positive anchors) of the batch) or
    # "ema" (detectron2's moving average of it, momentum ema_momentum, starting at 100).
    loss.normalizer = "num_positives"
    loss.ema_momentum = 0.9
    # The box loss: "l1" (detectron2's), "smooth_l1" (with box_beta) or "giou" (on the decoded
    # boxes), times box_weight.
    loss.box = "l1"
    loss.box_beta = 0.0
    loss.box_weight = 1.0

    # Inference: top pre_nms_topk per level above score_threshold, per-class NMS, the best
    # max_detections per image.
    post = config.postprocess = ml_collections.ConfigDict()
    post.pre_nms_topk = 1000
    post.score_threshold = 0.05
    post.nms_iou_threshold = 0.5
    post.max_detections = 100
    return config


def classification_loss(loss_config: Any):
    """`(logits [A, C], targets [A, C]) -> [A, C]` elementwise loss named by `loss_config.cls`."""
    name = loss_config.cls
    if name == "focal":
        return functools.partial(
            losses.sigmoid_focal_loss, alpha=loss_config.alpha, gamma=loss_config.gamma,
            label_smoothing=loss_config.label_smoothing,
            soft_target_mode=loss_config.soft_target_mode,
        )
    if name in ("ce", "ohem"):
        return losses.sigmoid_cross_entropy
    if name == "alpha_ce":
        return functools.partial(losses.sigmoid_cross_entropy, alpha=loss_config.alpha)
    if name == "fl_star":
        return functools.partial(
            losses.focal_loss_star, gamma=loss_config.gamma, beta=loss_config.fl_star_beta
        )
    raise ConfigError(f"model.loss.cls is {name!r}, expected one of {CLS_LOSSES}")


def _check_loss_config(loss: Any) -> None:
    """Every hyper-parameter the chosen losses read, in the loss functions' own ranges, so that a
    bad value is refused by name before anything is built or traced."""
    def number(name: str, low: float, high: float, *, open_low=False, open_high=False):
        value = loss[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
        ok = ok and (low < value if open_low else low <= value)
        ok = ok and (value < high if open_high else value <= high)
        if not ok:
            interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
            raise ConfigError(f"model.loss.{name} is {value!r}, expected a number in {interval}")

    if loss.cls in ("focal", "alpha_ce"):
        number("alpha", 0, 1)
    if loss.cls == "focal":
        number("gamma", 0, np.inf, open_high=True)
        number("label_smoothing", 0, 1, open_high=True)
        if loss.soft_target_mode not in SOFT_TARGET_MODES:
            raise ConfigError(f"model.loss.soft_target_mode is {loss.soft_target_mode!r}, "
                             f"expected one of {SOFT_TARGET_MODES}")
    if loss.cls == "fl_star":
        number("gamma", 0, np.inf, open_low=True, open_high=True)
        number("fl_star_beta", -np.inf, np.inf, open_low=True, open_high=True)
    if loss.cls == "ohem":
        num_samples = loss.ohem_num_samples
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(
                f"model.loss.ohem_num_samples is {num_samples!r}, expected a positive int"
            )
        number("ohem_positive_fraction", 0, 1)
        number("ohem_negative_ratio", 0, np.inf, open_high=True)
        if loss.ohem_negative_ratio and loss.ohem_positive_fraction:
            raise ConfigError(
                f"model.loss.ohem_negative_ratio is {loss.ohem_negative_ratio!r} and "
                f"model.loss.ohem_positive_fraction is {loss.ohem_positive_fraction!r}, expected "
                "at most one of them nonzero (SSD's rule or a cap on the positives)"
            )
        number("ohem_nms_iou_threshold", 0, 1)
        topk = loss.ohem_pre_nms_topk
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
            raise ConfigError(f"model.loss.ohem_pre_nms_topk is {topk!r}, expected an int >= 0 "
                             "(0: all anchors)")
        if loss.ohem_nms_boxes not in OHEM_NMS_BOXES:
            raise ConfigError(f"model.loss.ohem_nms_boxes is {loss.ohem_nms_boxes!r}, expected one "
                             f"of {OHEM_NMS_BOXES}")
    if loss.box == "smooth_l1":
        number("box_beta", 0, np.inf, open_high=True)
    number("box_weight", 0, np.inf, open_high=True)
    number("ema_momentum", 0, 1)


def check_config(config: Any, image_size: tuple[int, ...]) -> None:
    """Raises ValueError, naming the field, for a RetinaNet `config` (`config.model`) that
    `build_retinanet` cannot build for `image_size` inputs."""
    # Any size works: level l is ceil(H / 2**l) x ceil(W / 2**l) in the network and the anchors.
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(
            f"image size {tuple(image_size)} is not (height, width) in pixels, both positive"
        )
    if config.loss.cls not in CLS_LOSSES:
        raise ConfigError(f"model.loss.cls is {config.loss.cls!r}, expected one of {CLS_LOSSES}")
    if config.loss.box not in BOX_LOSSES:
        raise ConfigError(f"model.loss.box is {config.loss.box!r}, expected one of {BOX_LOSSES}")
    if config.loss.normalizer not in NORMALIZERS:
        raise ConfigError(
            f"model.loss.normalizer is {config.loss.normalizer!r}, expected one of {NORMALIZERS}"
        )
    _check_loss_config(config.loss)
    backbone_lib.check_config(config)
    zoo_lib.check_config(config)
    if config.anchor_convention not in anchor_ops.CONVENTIONS:
        raise ConfigError(f"model.anchor_convention is {config.anchor_convention!r}, expected "
                          f"one of {anchor_ops.CONVENTIONS}")
    if config.p6_input not in P6_INPUTS:
        raise ConfigError(
            f"model.p6_input is {config.p6_input!r}, expected one of {tuple(P6_INPUTS)}"
        )
    if not 0 < config.prior_prob < 1:
        raise ConfigError(f"model.prior_prob is {config.prior_prob}, expected a value in (0, 1)")
    if config.dtype not in DTYPES:
        raise ConfigError(f"model.dtype is {config.dtype!r}, expected one of {sorted(DTYPES)}")


def retinanet_anchors(
    config: Any, image_size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The anchors `[A, 4]` (xyxy, input pixels) of a RetinaNet `config` (`config.model`) for
    `image_size` inputs, in the order of its outputs, and how many of them each level has.

    A level `l` anchor has the base size `anchor_base_scale * 2**l`, times each of
    `anchor_scales`, at each of `aspect_ratios`.
    """
    levels = {"min_level": config.min_level, "max_level": config.max_level}
    anchor_kwargs = {
        "scales": tuple(config.anchor_scales),
        "aspect_ratios": tuple(config.aspect_ratios),
    }
    anchor_sizes = [
        config.anchor_base_scale * 2**level
        for level in range(config.min_level, config.max_level + 1)
    ]
    anchors = anchor_ops.generate_anchors(
        image_size, **levels, anchor_sizes=anchor_sizes, **anchor_kwargs,
        convention=config.anchor_convention,
    )
    return anchors, anchor_ops.num_anchors_per_level(image_size, **levels, **anchor_kwargs)


def anchor_targets(config: Any, anchors: Any, *, box_coder: BoxCoder):
    """`(gt_boxes [M, 4], gt_labels [M], gt_is_crowd [M]) -> targets` of one image over `anchors`:
    `focaljax.ops.matching.build_targets` with the IoU thresholds and low-quality matching of a
    RetinaNet `config` (`config.model`), as its loss matches them."""
    return functools.partial(
        matching.build_targets,
        jnp.asarray(anchors),
        fg_iou_threshold=config.fg_iou_threshold,
        bg_iou_threshold=config.bg_iou_threshold,
        allow_low_quality_matches=config.allow_low_quality_matches,
        box_coder=box_coder,
    )


def build_retinanet(
    config: Any,
    *,
    num_classes: int,
    image_size: tuple[int, int],
    axis_name: str | None = None,
) -> Detector:
    """A RetinaNet `Detector` for `image_size` (height, width) inputs, from `config` (a model
    config: `default_config()` with what differs, as the `config.model` of a
    `configs/*_retinanet*.py`).

    The backbone is `config.backbone` with `config.norm`, its stride where `config.stride_in_1x1`
    puts it and the part `config.freeze_at` names frozen (`Detector.frozen`); at a fresh start
    `Detector.load_pretrained` merges the ImageNet weights of `config.backbone_weights` into the
    initial variables (`focaljax.detectors.backbone`).

    Raises ValueError for an unknown loss, dtype or norm, an invalid `freeze_at` or
    `stride_in_1x1`, or an image size that is not two positive ints, before anything is traced.
    """
    image_size = tuple(int(s) for s in image_size)
    check_config(config, image_size)
    levels = {"min_level": config.min_level, "max_level": config.max_level}
    anchors, anchors_per_level = retinanet_anchors(config, image_size)
    module = RetinaNet(
        num_classes=num_classes,
        backbone=config.backbone,
        **levels,
        fpn_channels=config.fpn_channels,
        head_convs=config.head_convs,
        head_channels=config.head_channels,
        head_norm=optional(config.head_norm),
        head_conv_bias=bool(config.head_conv_bias),
        num_anchors=anchor_ops.num_anchors_per_location(
            scales=tuple(config.anchor_scales), aspect_ratios=tuple(config.aspect_ratios)
        ),
        prior_prob=config.prior_prob,
        norm=config.norm,
        axis_name=axis_name,
        dtype=DTYPES[config.dtype],
        stride_in_1x1=config.stride_in_1x1,
        freeze_at=config.freeze_at,
        p6_input=config.p6_input,
    )
    box_coder = BoxCoder(weights=tuple(config.box_coder_weights))
    loss_fn = make_loss_fn(
        config, anchors=anchors, num_classes=num_classes, box_coder=box_coder
    )
    post = config.postprocess
    postprocess_one = functools.partial(
        retinanet_postprocess,
        anchors=jnp.asarray(anchors),
        anchors_per_level=anchors_per_level,
        image_size=image_size,
        pre_nms_topk=post.pre_nms_topk,
        score_threshold=post.score_threshold,
        nms_iou_threshold=post.nms_iou_threshold,
        max_detections=post.max_detections,
        box_coder=box_coder,
    )

    def postprocess(outputs: dict[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
        del batch
        return jax.vmap(postprocess_one)(outputs["cls_logits"], outputs["box_deltas"])

    use_ema = config.loss.normalizer == "ema"
    return Detector(
        name="retinanet",
        module=module,
        loss_fn=loss_fn,
        postprocess=postprocess,
        mutable_collections=("batch_stats",) if config.norm in ("bn", "sync_bn") else (),
        initial_loss_state=(
            {"normalizer": jnp.float32(losses.EMA_NORMALIZER_INIT)} if use_ema else {}
        ),
        load_pretrained=zoo_lib.pretrained_loader(
            config, module, num_classes=num_classes, axis_name=axis_name,
            anchor_shape=(len(config.anchor_scales), len(config.aspect_ratios)),
        ),
        frozen=backbone_lib.frozen_parts(config.freeze_at),
    )


def make_loss_fn(
    config: Any, *, anchors: np.ndarray, num_classes: int, box_coder: BoxCoder
):
    """The RetinaNet `Detector.loss_fn` over `anchors` (see the module docstring)."""
    loss_config = config.loss
    cls_loss = classification_loss(loss_config)
    use_ohem = loss_config.cls == "ohem"
    box_loss_name = loss_config.box
    box_beta = 0.0 if box_loss_name == "l1" else float(loss_config.box_beta)
    box_weight = float(loss_config.box_weight)
    targets_of = anchor_targets(config, anchors, box_coder=box_coder)
    use_ema = loss_config.normalizer == "ema"
    ema_momentum = float(loss_config.ema_momentum)
    anchors = jnp.asarray(anchors)
    if use_ohem:
        # 0 turns each option off (a config cannot hold None).
        ohem_options = {
            "num_samples": int(loss_config.ohem_num_samples),
            "positive_fraction": float(loss_config.ohem_positive_fraction) or None,
            "negative_ratio": float(loss_config.ohem_negative_ratio) or None,
        }
        ohem_nms = float(loss_config.ohem_nms_iou_threshold) > 0
        if ohem_nms:
            ohem_options["nms_iou_threshold"] = float(loss_config.ohem_nms_iou_threshold)
            ohem_options["pre_nms_topk"] = int(loss_config.ohem_pre_nms_topk) or None
        ohem_decoded = loss_config.ohem_nms_boxes == "decoded"

    def image_loss(logits, deltas, gt_boxes, gt_labels, gt_is_crowd):
        """Unnormalized (cls_sum, box_sum, num_positives) of one image."""
        targets = targets_of(gt_boxes, gt_labels, gt_is_crowd)
        labels = targets["labels"]
        onehot = (labels[:, None] == jnp.arange(num_classes)).astype(jnp.float32)
        cls_losses = cls_loss(logits, onehot)
        cls_weights = targets["cls_weights"]
        if use_ohem:
            nms_boxes = None
            if ohem_nms:
                nms_boxes = (
                    box_coder.decode(jax.lax.stop_gradient(deltas), anchors) if ohem_decoded
                    else anchors
                )
            cls_weights = losses.ohem_mask(
                jnp.sum(cls_losses, axis=-1),
                valid=cls_weights > 0,
                positive_mask=labels >= 0,
                boxes=nms_boxes,
                **ohem_options,
            )
        cls_sum = losses.weighted_sum(cls_losses, cls_weights[:, None])

        box_weights = targets["box_weights"]
        if box_loss_name == "giou":
            predicted = box_coder.decode(deltas, anchors)
            matched = gt_boxes[jnp.maximum(targets["matched_gt"], 0)]
            box_sum = losses.weighted_sum(losses.giou_loss(predicted, matched), box_weights)
        else:
            per_delta = losses.smooth_l1_loss(deltas, targets["box_targets"], beta=box_beta)
            box_sum = losses.weighted_sum(per_delta, box_weights[:, None])
        return cls_sum, box_sum, jnp.sum(box_weights)

    def loss_fn(
        outputs: dict[str, jax.Array],
        batch: Batch,
        *,
        state: Any = None,
        axis_name: str | None = None,
        rng: jax.Array | None = None,
    ) -> LossOutput:
        del rng  # No sampling: every non-ignored anchor contributes.
        cls_sum, box_sum, num_pos = jax.vmap(image_loss)(
            outputs["cls_logits"].astype(jnp.float32),
            outputs["box_deltas"].astype(jnp.float32),
            batch["boxes"],
            batch["labels"],
            batch["is_crowd"],
        )
        if use_ema:
            normalizer, normalizer_state = losses.ema_normalizer(
                state["normalizer"], jnp.sum(num_pos), momentum=ema_momentum, axis_name=axis_name
            )
            state = {"normalizer": normalizer_state}
        else:
            normalizer = losses.positive_normalizer(jnp.sum(num_pos), axis_name=axis_name)
        terms = {
            "cls": jnp.sum(cls_sum) / normalizer,
            "box": box_weight * jnp.sum(box_sum) / normalizer,
        }
        metrics = {"num_positives": jnp.mean(num_pos), "normalizer": normalizer}
        return LossOutput(terms, metrics, state)

    return loss_fn
