r"""The base config: every field that the trainer and the data pipeline read, declared once.

What: RetinaNet ResNet-50-FPN on COCO 2017 from scratch with the paper's 1x recipe, the values of
`configs/coco_retinanet_r50.py` without a weight file (see its docstring for the recipe). Every
config in configs/ starts from `get_config()` here (or from a config that does) and overrides
only what differs, so that this file is the one list of fields, with what each means and the
values it takes. The model fields have one home each: `retinanet_model(weights)` (every RetinaNet
field, the paper's values), `faster_rcnn_model(weights)` (every Faster R-CNN field, detectron2's
`faster_rcnn_R_50_FPN_1x` values) and `backbone_recipe(model, weights)` (the ResNet-50 from
ImageNet weights or from scratch, shared by both).

Command (the same run as `configs/coco_retinanet_r50.py` without a weight file, after
`python -m train.prepare_data --dataset coco --source_dir /data/coco`):

  python -m train --config configs/default.py --workdir runs/default

Hardware, time and result: those of `configs/coco_retinanet_r50.py` from scratch, TO BE
MEASURED.
"""

import ml_collections


def backbone_recipe(model: ml_collections.ConfigDict, weights: str) -> None:
    """Sets the ResNet-50 of `model` (a RetinaNet or Faster R-CNN model config) for the COCO, VOC
    and folder recipes: from the ImageNet `weights` file as the paper and detectron2 do, or, when
    `weights` is "", from scratch with GroupNorm."""
    # "resnet18", "resnet34", "resnet50", "resnet101" or "resnet_tiny" (focaljax.models.PRESETS).
    model.backbone = "resnet50"
    # ImageNet weights of the ResNet, read by the trainer at a fresh start (never on resume: they
    # are in the checkpoints): a .safetensors, torch .pth, detectron2 .pkl or Keras .h5 file,
    # "" for none. The format is detected from the file unless backbone_weights_format names one
    # of focaljax.models.pretrained.FORMATS.
    model.backbone_weights = weights
    model.backbone_weights_format = ""  # Detected from the file.
    # model.norm, the ResNet's norm: "bn", "sync_bn" (statistics over the devices), "gn" or
    # "frozen_bn" (the weight file's statistics, fixed).
    # model.freeze_at, detectron2's FREEZE_AT: 0 nothing, 1 the stem, k the stem and stages
    # C2..Ck, which then get no gradient, no update and no weight decay, and keep their
    # batch-norm statistics.
    # model.stride_in_1x1: a bottleneck's stride in its 1x1 conv (True: MSRA and Keras weights)
    # or its 3x3 conv (False: torchvision and timm weights); the trainer checks it against the
    # weights' layout.
    if weights:
        model.norm = "frozen_bn"
        model.freeze_at = 2  # The stem and C2, detectron2's FREEZE_AT.
        model.stride_in_1x1 = True  # MSRA's layout, detectron2's STRIDE_IN_1X1.
    else:
        model.norm = "gn"
        model.freeze_at = 0
        model.stride_in_1x1 = False


def retinanet_model(weights: str = "") -> ml_collections.ConfigDict:
    """Every field of `focaljax.detectors.retinanet`'s model config, with the paper's RetinaNet
    R50-FPN values (Lin et al. 2017, section 4.1; detectron2's `retinanet_R_50_FPN_1x`), the
    ResNet-50 from the ImageNet `weights` file or, when it is "", from scratch
    (`backbone_recipe`)."""
    model = ml_collections.ConfigDict()
    model.name = "retinanet"  # A registered detector: "retinanet", "faster_rcnn" or your own.
    backbone_recipe(model, weights)
    # The FPN levels P{min_level}..P{max_level} (P3-P7: strides 8-128) and their channels.
    model.min_level = 3
    model.max_level = 7
    model.fpn_channels = 256
    # The classification and box heads: head_convs convs of head_channels, then the output conv.
    model.head_convs = 4
    model.head_channels = 256
    # The heads' norm: "gn" or "none" (ml_collections cannot set None from the command line). The
    # paper's heads have none; trained from scratch they converge much faster with GN.
    model.head_norm = "none" if weights else "gn"
    model.prior_prob = 0.01  # The foreground probability the classifier bias starts from.
    model.dtype = "float32"  # Compute dtype: "float32", "bfloat16" or "float16".
    # Anchors: base size anchor_base_scale * stride, times each scale, at each aspect ratio
    # (height / width). The paper's: 9 per location, sizes 32 (P3) to 512 (P7).
    model.anchor_base_scale = 4.0
    model.anchor_scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    model.aspect_ratios = (0.5, 1.0, 2.0)
    # Matching: IoU >= fg_iou_threshold foreground, < bg_iou_threshold background, in between
    # ignored; low-quality matches make each object's best anchor foreground too.
    model.fg_iou_threshold = 0.5
    model.bg_iou_threshold = 0.4
    model.allow_low_quality_matches = True
    model.box_coder_weights = (1.0, 1.0, 1.0, 1.0)  # (wx, wy, ww, wh) of the box deltas.

    loss = model.loss = ml_collections.ConfigDict()
    # The classification loss: "focal" (alpha, gamma), "ce", "alpha_ce" (alpha), "fl_star"
    # (gamma, fl_star_beta) or "ohem" (the ohem_* fields); see focaljax/detectors/retinanet.py.
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
    post = model.postprocess = ml_collections.ConfigDict()
    post.pre_nms_topk = 1000
    post.score_threshold = 0.05
    post.nms_iou_threshold = 0.5
    post.max_detections = 100
    return model


def faster_rcnn_model(weights: str = "") -> ml_collections.ConfigDict:
    """Every field of `focaljax.detectors.faster_rcnn`'s model config, with detectron2's
    `faster_rcnn_R_50_FPN_1x` values (and FL-RPN's for the focal-loss RPN), the ResNet-50 from
    the ImageNet `weights` file or, when it is "", from scratch (`backbone_recipe`). The shapes
    and VOC configs start from it and say what they change."""
    model = ml_collections.ConfigDict()
    model.name = "faster_rcnn"
    backbone_recipe(model, weights)
    model.dtype = "float32"  # Compute dtype: "float32", "bfloat16" or "float16".
    model.fpn_channels = 256
    # One anchor size per RPN level, P2..P6.
    model.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
    model.aspect_ratios = (0.5, 1.0, 2.0)

    rpn = model.rpn = ml_collections.ConfigDict()
    # FL-RPN's softmax form, or "sampled", "focal_sigmoid", "ce_all", "focal_softmax_shared"
    # (focaljax/detectors/faster_rcnn.py says what each is).
    rpn.loss = "focal_softmax"
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

    roi = model.roi = ml_collections.ConfigDict()
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
    # "2fc" (detectron2's default): 0 convs, 2 FC of 1024; "4conv1fc": 4 convs of 256, 1 FC.
    roi.head_num_convs = 0
    roi.head_conv_dim = 256
    roi.head_num_fcs = 2
    roi.head_fc_dim = 1024
    roi.head_norm = "none"  # or "gn" (ml_collections cannot set None from the command line)

    post = model.postprocess = ml_collections.ConfigDict()
    post.score_threshold = 0.05
    post.nms_iou_threshold = 0.5
    post.max_detections = 100
    return model


def get_config() -> ml_collections.ConfigDict:
    """Every field, with the values of the COCO RetinaNet recipe from scratch."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Of the initialization, the data order and the augmentation.

    # What `focaljax.data.build` reads (its docstring says more); every field is required.
    dataset = config.dataset = ml_collections.ConfigDict()
    dataset.name = "coco"  # A registered data set: "shapes", "coco", "voc" or "coco_folder".
    dataset.data_dir = ""  # The TFDS data directory; "" for TFDS's (~/tensorflow_datasets).
    # What to build, by data set: "shapes" {"config": "default" | "tiny"} or the settings of
    # focaljax.data.shapes_config; "coco" {"source_dir"}; "voc" {"source_dir", "config": "2007"
    # | "2012"}; "coco_folder" {"name", "splits"}. A source_dir is read only when the data set is
    # not prepared in data_dir yet.
    dataset.builder_kwargs = ml_collections.ConfigDict({"source_dir": ""})
    # (height, width) of the batch images: each image is resized to fit, keeping its aspect
    # ratio, and padded. Landscape COCO images get a short side of 800, portrait ones a long side
    # of 800.
    dataset.image_size = (800, 1344)
    dataset.max_boxes = 100  # Box rows per image; COCO train2017 has at most 93 annotations.
    # The splits trained on and evaluated on ("a+b" joins splits).
    dataset.train_split = "train"
    dataset.eval_split = "validation"
    dataset.horizontal_flip = True  # Random horizontal flips in training.
    # (low, high) random resize factor in training. No jitter, written as a range so that the
    # command line can set one, e.g. "(0.8,1.2)".
    dataset.scale_jitter = (1.0, 1.0)
    # More training augmentations (focaljax.data.augment), all off here. For images that have no
    # up (aerial, microscopy): random up-down flips and quarter turns (k * 90 degrees).
    dataset.vertical_flip = False
    dataset.rotate90 = False
    # Color jitter, torchvision's ColorJitter: brightness, contrast and saturation factors uniform
    # in [1 - s, 1 + s] for a strength s in [0, 1), a hue shift uniform in [-hue, hue] turns (at
    # most 0.5); 0.0 is off.
    dataset.brightness = 0.0
    dataset.contrast = 0.0
    dataset.saturation = 0.0
    dataset.hue = 0.0
    # JPEG re-compression at a quality uniform in (low, high), e.g. (30, 95); () is off.
    dataset.jpeg_quality = ()
    # A box-safe random crop before the resize, e.g. (0.5, 1.0): height and width each this
    # fraction of the image's; () is off. No object is cut below safe_crop_min_visible of its box
    # area (of 16 random windows the first that cuts none is taken, else the whole image); cut
    # objects are clipped, those outside dropped (the iterator's num_clipped_boxes and
    # num_dropped_boxes count them).
    dataset.safe_crop = ()
    dataset.safe_crop_min_visible = 0.5
    # Repeat-factor sampling (LVIS, detectron2's RepeatFactorTrainingSampler): an image is repeated
    # max(1, sqrt(t / f_c)) times per epoch (stochastically rounded) over its classes c, f_c the
    # fraction of the train split's images holding c, for this threshold t (e.g. 0.1); 0.0 is off.
    dataset.repeat_factor_threshold = 0.0
    dataset.shuffle_buffer_size = 10_000  # Examples; capped at the size of the split.

    config.model = retinanet_model()

    opt = config.optimizer = ml_collections.ConfigDict()
    opt.name = "sgd"  # or "adamw"
    opt.learning_rate = 0.01  # Per reference_batch_size images, scaled linearly.
    opt.reference_batch_size = 16
    # "sgd": momentum and Nesterov; "adamw": b1, b2.
    opt.momentum = 0.9
    opt.nesterov = False
    opt.b1 = 0.9
    opt.b2 = 0.999
    opt.weight_decay = 1e-4  # Not on biases and norms, nor on frozen stages.
    opt.grad_clip_norm = 0.0  # Clip the global gradient norm to this; 0 does not clip.

    schedule = config.schedule = ml_collections.ConfigDict()
    # lr(step) = base * warm-up * decay: "step" (x decay_factor at each decay point), "cosine"
    # (half a cosine to 0 over the run) or "constant".
    schedule.name = "step"
    # Linear warm-up from warmup_factor (in (0, 1]) times the rate over warmup_steps.
    schedule.warmup_steps = 1000
    schedule.warmup_factor = 0.001
    # The decay points of "step", in steps or in epochs (not both).
    schedule.decay_steps = (60_000, 80_000)
    schedule.decay_epochs = ()
    schedule.decay_factor = 0.1

    # Global batches, split evenly over the devices of all hosts (a multiple of their count).
    config.batch_size = 16
    config.eval_batch_size = 16
    # The run's length: num_train_steps, or num_epochs of the train split when it is 0.
    config.num_train_steps = 90_000
    config.num_epochs = 0.0
    # Every so many steps (0 turns it off): log the metrics, evaluate, save a checkpoint.
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 2_000
    config.max_checkpoints_to_keep = 3  # >= 1.
    config.num_grid_images = 8  # Evaluation images drawn with their detections.
    # At a fresh start, the anchor-coverage report (focaljax.detectors.anchor_coverage: object
    # sizes against the anchors, the share of objects an anchor covers at the foreground IoU,
    # a suggestion) over this many training images, with a warning below 95%; 0: no report.
    config.anchor_coverage_images = 500
    config.eval_backend = "pycocotools"  # The COCO evaluator: "pycocotools" or "faster_coco_eval".
    # Also PASCAL VOC's mAP@0.5 (needs a data set with "difficult" flags such as "voc"): "voc07"
    # (11-point, logged as VOC07_mAP50), "voc" (all-point, VOC_mAP50) or "" (off).
    config.voc_metric = ""
    # Also COCO's metrics over only the detections scoring at least each of these, logged with
    # the score as suffix (e.g. AP@0.05): with model.postprocess.score_threshold 0.001, the AP at
    # the paper's 0.05 beside the AP at (nearly) every score, from one evaluation. () for none.
    config.eval_min_scores = ()
    # XLA options for the train and evaluation steps (fields of XLA's DebugOptions, name ->
    # value); none by default. They go over the defaults of the backend the run compiles for
    # (train/compilation.py's BACKEND_DEFAULTS: on CPU XLA's own convolutions instead of
    # YNNPACK's, xla_cpu_experimental_ynn_fusion_type=""; none on GPU and TPU): an option set
    # here wins.
    config.compiler_options = ml_collections.ConfigDict()
    return config
