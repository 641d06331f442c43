r"""Faster R-CNN (FPN) as a `Detector`, its RPN trained by sampled cross-entropy or by focal loss.

The network is :class:`focaljax.models.FasterRCNN`. The loss has four terms, logged separately:

**RPN** (`config.rpn.loss`), on the anchors matched to the ground truth at IoU >= 0.7 (object),
< 0.3 (background), in between ignored, each box keeping its best anchors (low-quality matches);
crowd boxes are ignore regions:

* `"sampled"`, the standard RPN (Ren et al. 2015; detectron2): per image, 256 anchors drawn at
  random with at most half objects (`focaljax.losses.balanced_sample_mask`, from the loss `rng`),
  sigmoid cross-entropy and the box loss over them, both divided by 256 x images.
* `"focal_sigmoid"`, `"focal_softmax"` and `"focal_softmax_shared"`, FL-RPN (Chen, Song, Jiang,
  "Focal Loss for Region Proposal Network", PRCV 2018): no sampling, every non-ignored anchor::

      L_rpn = (lambda / N) sum_{anchors not ignored} FL(p_t) + (1 / (2 N)) sum_{objects} L_reg,

  `N = max(1, #object anchors)` counted over the global batch, lambda 0.1 (`focal_lambda`), alpha
  0.25, gamma 2. The sigmoid form is `sigmoid_focal_loss` on one logit per anchor. The softmax
  forms are the 2-way (background, object) `softmax_focal_loss`: `"focal_softmax"` with the
  Detectron alpha convention (alpha for objects, 1 - alpha for background), `"focal_softmax_shared"`
  with one alpha for both classes (an ablation, not in the paper), which only scales the term (by
  alpha, as lambda does), so that the classes are not balanced at all.
* `"ce_all"`, the ablation: the FL-RPN formula with plain cross-entropy (gamma 0, no alpha), so
  every easy background anchor weighs in, as in the RetinaNet paper's cross-entropy baseline.

Every unsampled mode (`"ce_all"` and the focal ones) starts from the prior object probability
`prior_prob` (0.01; see :class:`focaljax.models.faster_rcnn.RPNHead` for why), so that between them
only the loss varies; `"sampled"` keeps the standard RPN's zero bias.

Softmax against sigmoid: with the Detectron alpha convention, the 2-way softmax focal loss on the
logits `(x_bg, x_obj)` is exactly the sigmoid focal loss, same alpha and gamma, on the single logit
`x_obj - x_bg`, since `softmax(x_bg, x_obj)[1] = sigmoid(x_obj - x_bg)` and alpha_t is the same
weight. In float32 the two computations agree to rounding (the softmax form, through
`log p = x - logsumexp(x)`, only rounds the tiny losses of confidently right anchors coarser);
tests/detectors/test_faster_rcnn.py checks both the losses and their gradients.
`"focal_softmax"` against `"focal_sigmoid"` therefore compares two parameterisations of one loss,
not two losses: the softmax head has one redundant output per anchor. They still train apart: the
two outputs' parameters get opposite gradients, so a gradient step moves `x_obj - x_bg` twice as
far as the sigmoid head's logit (for SGD), and the difference of two initial weights has sqrt(2)
times the spread.

`L_reg` is the smooth-L1 loss (`box_beta`, 0 = L1 as detectron2) summed over the four deltas.

**RoI head**, on the RoIs of `focaljax.ops.sample_rois` (512 per image, at most a quarter
foreground at IoU >= 0.5): softmax cross-entropy over the `C + 1` classes and the box loss on the
matched class's deltas of the foreground RoIs, both divided by the number of sampled RoIs of the
global batch (detectron2's mean).

Inference: `focaljax.ops.fast_rcnn_postprocess` on the proposals (softmax scores, per-class boxes,
score > 0.05, per-class NMS 0.5, top 100), plus the proposals themselves, scored by their object
probability, for the proposal-recall evaluator (AR@100, AR@300, AR@1000).

`default_config()` declares every field of the model config, with detectron2's values; start from
it and change what differs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from focaljax import evaluation, losses, ops
from focaljax.detectors import backbone as backbone_lib
from focaljax.detectors import zoo as zoo_lib
from focaljax.detectors.detector import DTYPES, Batch, Detector, LossOutput, optional
from focaljax.errors import ConfigError
from focaljax.models import FasterRCNN
from focaljax.models.faster_rcnn import ProposalSettings, RoISamplingSettings

RPN_LOSSES = ("sampled", "ce_all", "focal_sigmoid", "focal_softmax", "focal_softmax_shared")
# The modes with a 2-way (background, object) softmax objectness.
SOFTMAX_RPN_LOSSES = ("focal_softmax", "focal_softmax_shared")
PROPOSAL_MAX_DETS = (100, 300, 1000)


def default_config() -> ml_collections.ConfigDict:
    """Every field of a Faster R-CNN model config (`config.model`), with detectron2's
    `faster_rcnn_R_50_FPN_1x` values and FL-RPN's for the focal-loss RPN (the module docstring),
    the ResNet-50 trained from scratch with GroupNorm (`focaljax.detectors.backbone.default_config`;
    for ImageNet weights set the weight file and its recipe, as `configs/default.py`'s
    `faster_rcnn_model(weights)` does). `build_faster_rcnn` reads every field.

    Examples:
      >>> config = default_config()
      >>> config.name, config.rpn.loss, config.rpn.focal_lambda, config.roi.num_samples
      ('faster_rcnn', 'focal_softmax', 0.1, 512)
      >>> detector = build_faster_rcnn(config, num_classes=80, image_size=(512, 512))
    """
    config = ml_collections.ConfigDict()
    config.name = "faster_rcnn"  # Its name in `focaljax.detectors.BUILDERS`.
    config.update(backbone_lib.default_config())
    config.update(zoo_lib.default_config())
    config.dtype = "float32"  # Compute dtype: "float32", "bfloat16" or "float16".
    config.fpn_channels = 256
    # The FPN's norm after its lateral and output convs: "none" (convs with a bias) or
    # "frozen_bn" (convs without, then a fixed affine map: torchvision's v2 batch norm at test).
    config.fpn_norm = "none"
    # One anchor size per RPN level, P2..P6.
    config.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
    config.aspect_ratios = (0.5, 1.0, 2.0)
    # Where the anchors sit and how they are rounded: "focaljax" (cells centred at
    # (x + 0.5) * stride), or the model zoos' "detectron2" and "torchvision", which their COCO
    # weights need (focaljax.ops.anchors.CONVENTIONS).
    config.anchor_convention = "focaljax"

    rpn = config.rpn = ml_collections.ConfigDict()
    # FL-RPN's softmax form, or "sampled", "focal_sigmoid", "ce_all", "focal_softmax_shared"
    # (the module docstring says what each is).
    rpn.loss = "focal_softmax"
    rpn.num_convs = 1  # The head's 3x3 convs (with ReLU) before its 1x1 outputs; torchvision v2: 2.
    rpn.fg_iou_threshold = 0.7
    rpn.bg_iou_threshold = 0.3
    rpn.allow_low_quality_matches = True
    rpn.box_coder_weights = (1.0, 1.0, 1.0, 1.0)
    rpn.box_beta = 0.0  # smooth-L1 beta of the box loss; 0 is L1 (detectron2)
    # "sampled": anchors per image and their largest object fraction.
    rpn.batch_size_per_image = 256
    rpn.positive_fraction = 0.5
    # The modes on every anchor (FL-RPN's focal ones and ce_all): lambda of the classification
    # term, alpha, gamma (focal only), and the prior object probability the objectness bias
    # starts from (every mode but "sampled", which starts from a zero bias).
    rpn.focal_lambda = 0.1
    rpn.alpha = 0.25
    rpn.gamma = 2.0
    rpn.prior_prob = 0.01
    # Proposals: per level top-k before NMS, then top-k per image after NMS.
    rpn.train_pre_nms_topk = 2000
    rpn.train_post_nms_topk = 1000
    rpn.test_pre_nms_topk = 1000
    rpn.test_post_nms_topk = 1000
    rpn.nms_iou_threshold = 0.7
    rpn.min_size = 0.0

    # The RoI head: num_samples RoIs per image, at most positive_fraction foreground (IoU >=
    # fg_iou_threshold; background below bg_iou_threshold), the ground truth appended to the
    # proposals; RoIAlign to output_size x output_size.
    roi = config.roi = ml_collections.ConfigDict()
    roi.num_samples = 512
    roi.positive_fraction = 0.25
    roi.fg_iou_threshold = 0.5
    roi.bg_iou_threshold = 0.5
    roi.append_gt = True
    roi.box_coder_weights = (10.0, 10.0, 5.0, 5.0)
    roi.box_beta = 0.0
    roi.output_size = 7
    roi.sampling_ratio = 0  # adaptive, detectron2's ROIAlignV2
    roi.max_sampling_ratio = 0  # 0: no cap on the adaptive grid
    # RoIAlign's half-pixel shift (detectron2's ROIAlignV2); False for the original RoIAlign
    # (torchvision's Faster R-CNN).
    roi.aligned = True
    # "2fc" (detectron2's default): 0 convs, 2 FC of 1024; "4conv1fc": 4 convs of 256, 1 FC.
    roi.head_num_convs = 0
    roi.head_conv_dim = 256
    roi.head_num_fcs = 2
    roi.head_fc_dim = 1024
    # After each conv: "none", "gn" or "frozen_bn" (torchvision v2's batch norm at test); the
    # convs have no bias with a norm (ml_collections cannot set None from the command line).
    roi.head_norm = "none"

    # Inference: per-class scores above score_threshold, per-class NMS, the best max_detections.
    post = config.postprocess = ml_collections.ConfigDict()
    post.score_threshold = 0.05
    post.nms_iou_threshold = 0.5
    post.max_detections = 100
    return config


def check_config(config: Any, image_size: tuple[int, ...]) -> None:
    """Raises ConfigError, naming the field, for a Faster R-CNN `config` (`config.model`) that
    `build_faster_rcnn` cannot build for `image_size` inputs."""
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(
            f"image size {tuple(image_size)} is not (height, width) in pixels, both positive"
        )
    backbone_lib.check_config(config)
    zoo_lib.check_config(config)
    if config.anchor_convention not in ops.anchors.CONVENTIONS:
        raise ConfigError(f"model.anchor_convention is {config.anchor_convention!r}, expected "
                          f"one of {ops.anchors.CONVENTIONS}")
    rpn, roi = config.rpn, config.roi
    # With "bn" or "sync_bn" the trainer updates and averages every "batch_stats" variable, which
    # would take the frozen statistics of the FPN and the box head along.
    for name, value in (("fpn_norm", config.fpn_norm), ("roi.head_norm", roi.head_norm)):
        if value == "frozen_bn" and config.norm != "frozen_bn":
            raise ConfigError(f"model.{name} is 'frozen_bn' but model.norm is {config.norm!r}, "
                              "expected model.norm 'frozen_bn' with it")
    if rpn.loss not in RPN_LOSSES:
        raise ConfigError(f"model.rpn.loss is {rpn.loss!r}, expected one of {RPN_LOSSES}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"model.dtype is {config.dtype!r}, expected one of {sorted(DTYPES)}")
    for mode in ("train", "test"):
        for name in (f"{mode}_pre_nms_topk", f"{mode}_post_nms_topk"):
            if not isinstance(rpn[name], int) or rpn[name] < 1:
                raise ConfigError(f"model.rpn.{name} is {rpn[name]!r}, expected a positive int")
    for name, value in (("rpn.positive_fraction", rpn.positive_fraction),
                        ("roi.positive_fraction", roi.positive_fraction)):
        if not 0 < value <= 1:
            raise ConfigError(f"model.{name} is {value}, expected a fraction in (0, 1]")
    for name, value in (("rpn.batch_size_per_image", rpn.batch_size_per_image),
                        ("roi.num_samples", roi.num_samples)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.{name} is {value!r}, expected a positive int")
    for name, section in (("rpn", rpn), ("roi", roi)):
        if not 0 <= section.bg_iou_threshold <= section.fg_iou_threshold <= 1:
            raise ConfigError(
                f"model.{name}.bg_iou_threshold is {section.bg_iou_threshold} and "
                f"fg_iou_threshold {section.fg_iou_threshold}, expected 0 <= bg <= fg <= 1"
            )
    if rpn.loss.startswith("focal"):
        if rpn.gamma < 0:
            raise ConfigError(f"model.rpn.gamma is {rpn.gamma}, expected >= 0")
        if not 0 <= rpn.alpha <= 1:
            raise ConfigError(f"model.rpn.alpha is {rpn.alpha}, expected a value in [0, 1]")
    if rpn.loss != "sampled" and not 0 < rpn.prior_prob < 1:
        raise ConfigError(f"model.rpn.prior_prob is {rpn.prior_prob}, expected (0, 1)")
    if rpn.focal_lambda <= 0:
        raise ConfigError(f"model.rpn.focal_lambda is {rpn.focal_lambda}, expected > 0")


def build_faster_rcnn(
    config: Any,
    *,
    num_classes: int,
    image_size: tuple[int, int],
    axis_name: str | None = None,
) -> Detector:
    """A Faster R-CNN `Detector` for `image_size` (height, width) inputs, from `config` (a model
    config: `default_config()` with what differs, as the `config.model` of a
    `configs/*_faster_rcnn*.py`).

    The backbone is built as RetinaNet's (`config.backbone`, `norm`, `stride_in_1x1`,
    `freeze_at`, `backbone_weights`; see `build_retinanet`).

    Raises ConfigError, before anything is traced, for an unknown RPN loss or dtype, a post-NMS
    top-k larger than what the pyramid levels can give, a sampling fraction outside (0, 1], bad
    thresholds, focal-loss hyper-parameters or prior, an invalid `freeze_at` or `stride_in_1x1`.
    """
    image_size = tuple(int(s) for s in image_size)
    check_config(config, image_size)
    rpn, roi = config.rpn, config.roi
    softmax = rpn.loss in SOFTMAX_RPN_LOSSES

    def proposal_settings(mode: str) -> ProposalSettings:
        return ProposalSettings(
            pre_nms_topk=rpn[f"{mode}_pre_nms_topk"], post_nms_topk=rpn[f"{mode}_post_nms_topk"],
            nms_iou_threshold=rpn.nms_iou_threshold, min_size=rpn.min_size,
        )

    module = FasterRCNN(
        num_classes=num_classes,
        backbone=config.backbone,
        norm=config.norm,
        axis_name=axis_name,
        stride_in_1x1=config.stride_in_1x1,
        freeze_at=config.freeze_at,
        fpn_channels=config.fpn_channels,
        fpn_norm=optional(config.fpn_norm),
        anchor_sizes=tuple(float(s) for s in config.anchor_sizes),
        aspect_ratios=tuple(float(r) for r in config.aspect_ratios),
        anchor_convention=config.anchor_convention,
        rpn_objectness="softmax" if softmax else "sigmoid",
        rpn_prior_prob=None if rpn.loss == "sampled" else rpn.prior_prob,
        rpn_box_coder_weights=tuple(rpn.box_coder_weights),
        rpn_num_convs=rpn.num_convs,
        train_proposals=proposal_settings("train"),
        test_proposals=proposal_settings("test"),
        roi_sampling=RoISamplingSettings(
            num_samples=roi.num_samples, positive_fraction=roi.positive_fraction,
            fg_iou_threshold=roi.fg_iou_threshold, bg_iou_threshold=roi.bg_iou_threshold,
            append_gt=roi.append_gt,
        ),
        roi_box_coder_weights=tuple(roi.box_coder_weights),
        roi_output_size=roi.output_size,
        roi_sampling_ratio=roi.sampling_ratio,
        roi_max_sampling_ratio=roi.max_sampling_ratio or None,
        roi_aligned=bool(roi.aligned),
        head_num_convs=roi.head_num_convs,
        head_conv_dim=roi.head_conv_dim,
        head_num_fcs=roi.head_num_fcs,
        head_fc_dim=roi.head_fc_dim,
        head_norm=optional(roi.head_norm),
        dtype=DTYPES[config.dtype],
    )
    anchors, anchors_per_level = module.anchors(image_size)
    for mode in ("train", "test"):
        pre, post = rpn[f"{mode}_pre_nms_topk"], rpn[f"{mode}_post_nms_topk"]
        available = sum(min(pre, n) for n in anchors_per_level)
        if post > available:
            raise ConfigError(
                f"model.rpn.{mode}_post_nms_topk is {post}, but for {image_size} images the "
                f"levels give at most {available} candidates ({pre} per level before NMS); "
                f"expected at most {available}"
            )
    loss_fn = make_loss_fn(config, anchors=anchors, num_classes=num_classes)
    post = config.postprocess
    postprocess_one = functools.partial(
        ops.fast_rcnn_postprocess,
        image_size=image_size,
        score_threshold=post.score_threshold,
        nms_iou_threshold=post.nms_iou_threshold,
        max_detections=post.max_detections,
        box_coder=ops.BoxCoder(weights=tuple(roi.box_coder_weights)),
    )

    def postprocess(outputs: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
        del batch
        detections = jax.vmap(
            lambda logits, deltas, rois, valid: postprocess_one(
                logits, deltas, rois, roi_valid=valid
            )
        )(outputs["roi_cls_logits"], outputs["roi_box_deltas"], outputs["rois"],
          outputs["roi_valid"])
        proposals = outputs["proposals"]
        valid = proposals["valid"]
        return {
            **detections,
            # Valid proposals come first, by descending score.
            "proposals": jnp.where(valid[..., None], proposals["boxes"], 0.0),
            "proposal_scores": jnp.where(valid, jax.nn.sigmoid(proposals["scores"]), 0.0),
            "num_proposals": jnp.sum(valid, axis=-1, dtype=jnp.int32),
        }

    def model_inputs(batch: Batch, train: bool) -> dict[str, jax.Array]:
        if not train:
            return {"images": batch["image"]}
        return {"images": batch["image"], "gt_boxes": batch["boxes"],
                "gt_labels": batch["labels"], "gt_is_crowd": batch["is_crowd"]}

    def evaluators(ground_truth):
        return [evaluation.ProposalRecallEvaluator(ground_truth, max_dets=PROPOSAL_MAX_DETS)]

    return Detector(
        name="faster_rcnn",
        module=module,
        loss_fn=loss_fn,
        postprocess=postprocess,
        model_inputs=model_inputs,
        mutable_collections=("batch_stats",) if config.norm in ("bn", "sync_bn") else (),
        rng_collections=("roi_sampling",),
        box_outputs=("boxes", "proposals"),
        evaluators=evaluators,
        load_pretrained=zoo_lib.pretrained_loader(
            config, module, num_classes=num_classes, axis_name=axis_name
        ),
        frozen=backbone_lib.frozen_parts(config.freeze_at),
    )


def make_loss_fn(config: Any, *, anchors: Any, num_classes: int):
    """The Faster R-CNN `Detector.loss_fn` over the RPN's `anchors` (see the module docstring)."""
    rpn, roi = config.rpn, config.roi
    mode = rpn.loss
    anchors = jnp.asarray(anchors)
    rpn_coder = ops.BoxCoder(weights=tuple(rpn.box_coder_weights))
    match_kwargs = {
        "fg_iou_threshold": rpn.fg_iou_threshold,
        "bg_iou_threshold": rpn.bg_iou_threshold,
        "allow_low_quality_matches": rpn.allow_low_quality_matches,
        "box_coder": rpn_coder,
    }
    rpn_beta, roi_beta = float(rpn.box_beta), float(roi.box_beta)
    num_rpn_samples = int(rpn.batch_size_per_image)
    focal_lambda = float(rpn.focal_lambda)
    # Detectron's scalar alpha (1 - alpha for background, alpha for objects) or one alpha shared
    # by both classes, as a per-class array.
    softmax_alpha = jnp.full((2,), rpn.alpha) if mode == "focal_softmax_shared" else rpn.alpha

    def objectness_losses(objectness: jax.Array, is_object: jax.Array) -> jax.Array:
        """`[A, k], [A] -> [A]` the mode's classification loss of each anchor."""
        if mode in SOFTMAX_RPN_LOSSES:
            return losses.softmax_focal_loss(
                objectness, is_object.astype(jnp.int32), alpha=softmax_alpha, gamma=rpn.gamma,
                background_class=0,
            )
        logit, target = objectness[:, 0], is_object.astype(jnp.float32)
        if mode == "focal_sigmoid":
            return losses.sigmoid_focal_loss(logit, target, alpha=rpn.alpha, gamma=rpn.gamma)
        return losses.sigmoid_cross_entropy(logit, target)

    def rpn_image_loss(key, objectness, deltas, gt_boxes, gt_labels, gt_is_crowd):
        """Unnormalized (cls_sum, box_sum, num_objects) of one image."""
        # One class, "object": every real box is one, padding rows stay -1.
        targets = ops.build_targets(
            anchors, gt_boxes, jnp.where(gt_labels >= 0, 0, -1), gt_is_crowd, **match_kwargs
        )
        is_object = targets["labels"] >= 0
        weights = targets["cls_weights"]  # 0 for ignored anchors
        if mode == "sampled":
            labels = jnp.where(weights > 0, is_object.astype(jnp.int32), -1)
            weights = losses.balanced_sample_mask(
                key, labels, num_samples=num_rpn_samples, positive_fraction=rpn.positive_fraction
            )
        cls_sum = losses.weighted_sum(objectness_losses(objectness, is_object), weights)
        box_weights = weights * targets["box_weights"]
        per_delta = losses.smooth_l1_loss(deltas, targets["box_targets"], beta=rpn_beta)
        box_sum = losses.weighted_sum(per_delta, box_weights[:, None])
        return cls_sum, box_sum, jnp.sum(targets["box_weights"])

    def roi_image_loss(cls_logits, box_deltas, targets):
        """Unnormalized (cls_sum, box_sum, num_sampled, num_foreground) of one image."""
        valid = targets["valid"].astype(jnp.float32)
        labels = targets["labels"]
        foreground = targets["is_foreground"].astype(jnp.float32)
        # Background is the last of the C + 1 classes.
        classes = jnp.where(labels >= 0, labels, num_classes)
        cls_sum = losses.weighted_sum(
            losses.softmax_cross_entropy(cls_logits, classes), valid
        )
        matched = jnp.take_along_axis(
            box_deltas, jnp.maximum(labels, 0)[:, None, None], axis=1
        )[:, 0]
        per_delta = losses.smooth_l1_loss(matched, targets["box_targets"], beta=roi_beta)
        box_sum = losses.weighted_sum(per_delta, (valid * foreground)[:, None])
        return cls_sum, box_sum, jnp.sum(valid), jnp.sum(valid * foreground)

    def loss_fn(
        outputs: dict[str, Any],
        batch: Batch,
        *,
        state: Any = None,
        axis_name: str | None = None,
        rng: jax.Array | None = None,
    ) -> LossOutput:
        num_images = batch["boxes"].shape[0]
        if mode == "sampled":
            if rng is None:
                raise ValueError("model.rpn.loss 'sampled' draws anchors: loss_fn needs an rng")
            keys = jax.random.split(rng, num_images)
        else:
            keys = jnp.zeros((num_images, 2), jnp.uint32)  # Unused: no sampling.
        rpn_cls, rpn_box, num_objects = jax.vmap(rpn_image_loss)(
            keys, outputs["rpn_objectness"], outputs["rpn_deltas"],
            batch["boxes"], batch["labels"], batch["is_crowd"],
        )
        if mode == "sampled":
            # detectron2: both terms over 256 x images, a fixed count on every device.
            rpn_cls_norm = rpn_box_norm = float(num_rpn_samples * num_images)
        else:
            normalizer = losses.positive_normalizer(jnp.sum(num_objects), axis_name=axis_name)
            rpn_cls_norm, rpn_box_norm = normalizer / focal_lambda, 2.0 * normalizer
        roi_cls, roi_box, num_rois, num_fg = jax.vmap(roi_image_loss)(
            outputs["roi_cls_logits"], outputs["roi_box_deltas"], outputs["roi_targets"]
        )
        roi_norm = losses.positive_normalizer(jnp.sum(num_rois), axis_name=axis_name)
        terms = {
            "rpn_cls": jnp.sum(rpn_cls) / rpn_cls_norm,
            "rpn_box": jnp.sum(rpn_box) / rpn_box_norm,
            "roi_cls": jnp.sum(roi_cls) / roi_norm,
            "roi_box": jnp.sum(roi_box) / roi_norm,
        }
        metrics = {
            "rpn_num_positives": jnp.mean(num_objects),
            "roi_num_foreground": jnp.mean(num_fg),
            "roi_num_sampled": jnp.mean(num_rois),
        }
        return LossOutput(terms, metrics, state)

    return loss_fn
