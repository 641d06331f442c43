r"""RetinaNet with a tiny ResNet-FPN on the synthetic "shapes" data set, trained on a CPU.

What: the default `make train` run. Filled circles, squares, triangles and crosses (4 classes,
8 px to 64 px) on cluttered 128x128 backgrounds, 2000 training and 200 validation images (the
"default" config of `focaljax.data.shapes`, generated locally in seconds). A 4-stage ResNet with
one basic block per stage (width 16), an FPN over P3-P5 and two-convolution heads, trained with
the paper's focal loss (alpha 0.25, gamma 2) and the GIoU box loss.

Command:

  python -m train --config configs/shapes_retinanet.py --workdir runs/shapes_retinanet

  (or `make train`). Override any field, e.g. `--config.num_train_steps=100`.

Hardware, time and result: measured on a 2-core AMD EPYC VM, no accelerator, jax 0.10.2
(XLA:CPU), set-up done (`.venv` installed, the data set, about 15 s to generate, already there).
`make train` took 501 s wall-clock: 1600 steps of 16 images at 60 images/s (median of the
logged windows; 468 s with the compilation), then the evaluation on the 200 validation images:

    AP 0.681 | AP50 0.880 | AP75 0.751 | APs 0.667 | APm 0.768 | APl - (no object > 96^2 px)

The target of the default run (AP >= 0.6 and AP50 >= 0.85 within 10 minutes) is met.

How it got there (same data, 16 images a step; AP / AP50):
- SGD 0.01, anchors at 4x the stride, BN heads, 1000 steps: 0.179 AP. AdamW 0.001, cosine,
  anchors at 2x, 1500 steps: 0.390 AP. GroupNorm in the heads, AdamW 0.002: 0.627 / 0.826; the
  same with anchors at 1.5x: 0.599 / 0.820. AdamW 0.004: 0.640 / 0.843; with IoU thresholds
  0.4/0.3 instead of 0.5/0.4: 0.625 / 0.822. 1600 steps: 0.644 / 0.843 (538 s).
- Where that run lost AP50: a third of the objects cover under 144 pixels, and on them AP50 was 0.69
  (0.92-0.96 on all other sizes); confusing the class and missing IoU 0.5 cost about 0.08 each.
  A lower score threshold (0.01) or NMS at 0.6 did not help (+0.001, -0.011).
- The GIoU box loss (weight 2), 1600 steps: 0.653 / 0.846, but at 43 images/s, 627 s.
- XLA:CPU's own convolutions instead of YNNPACK's (`compiler_options` below): the same step in
  0.76x the time (benchmarks/train_step_bench.py); GIoU now costs next to nothing. 1800 steps
  with GIoU: 0.661 / 0.860 in 572 s (YNNPACK turned off through XLA_FLAGS in that run).
- One anchor aspect ratio instead of three (every shape is as wide as it is tall): 1800 steps,
  0.683 / 0.885, AP75 0.764, in 526 s and 586 s (two runs, identical metrics).
- 1600 steps (this config), for time to spare on a busy machine: the result above.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "shapes"
    # The "default" data set of focaljax.data.shapes; {"config": "tiny"} for 64x64 test images.
    config.dataset.builder_kwargs = ml_collections.ConfigDict({"config": "default"})
    config.dataset.data_dir = ""
    config.dataset.image_size = (128, 128)
    config.dataset.max_boxes = 8
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.dataset.horizontal_flip = True
    config.dataset.scale_jitter = (1.0, 1.0)

    config.model = ml_collections.ConfigDict()
    config.model.name = "retinanet"
    config.model.backbone = "resnet_tiny"
    config.model.norm = "bn"
    # ImageNet weights of the ResNet, read by the trainer at a fresh start (never on resume: they
    # are in the checkpoints): a .safetensors, torch .pth, detectron2 .pkl or Keras .h5 file,
    # "" for none (configs/coco_retinanet_r50.py has the paper's recipe for them). The format is
    # detected from the file unless backbone_weights_format names one of
    # focaljax.models.pretrained.FORMATS.
    config.model.backbone_weights = ""
    config.model.backbone_weights_format = ""
    # A bottleneck's stride in its 1x1 conv (True: MSRA and Keras weights) or its 3x3 conv
    # (False: torchvision and timm weights); the trainer checks it against the weights' layout.
    config.model.stride_in_1x1 = False
    # detectron2's FREEZE_AT: 0 nothing, 1 the stem, k the stem and stages C2..Ck, which then get
    # no gradient, no update and no weight decay, and keep their batch-norm statistics.
    config.model.freeze_at = 0
    config.model.min_level = 3
    config.model.max_level = 5
    config.model.fpn_channels = 64
    config.model.head_convs = 2
    config.model.head_channels = 64
    config.model.head_norm = "gn"  # Heads trained from scratch converge much faster with GN.
    config.model.prior_prob = 0.01
    config.model.dtype = "float32"
    # Anchors: base size anchor_base_scale * stride, times each scale, at each aspect ratio.
    # 2 (not the paper's 4): anchors of 16-101 px for objects of 8-64 px. One aspect ratio (the
    # paper has 0.5, 1, 2): every shape is as wide as it is tall, unless partly hidden.
    config.model.anchor_base_scale = 2.0
    config.model.anchor_scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    config.model.aspect_ratios = (1.0,)
    config.model.fg_iou_threshold = 0.5
    config.model.bg_iou_threshold = 0.4
    config.model.allow_low_quality_matches = True
    config.model.box_coder_weights = (1.0, 1.0, 1.0, 1.0)
    config.model.loss = ml_collections.ConfigDict()
    config.model.loss.cls = "focal"
    config.model.loss.alpha = 0.25
    config.model.loss.gamma = 2.0
    config.model.loss.label_smoothing = 0.0
    # The focal factor for soft targets (label_smoothing > 0): "pt", (1 - p_t)^gamma as optax,
    # torchvision and Keras, or "quality", |t - p|^gamma (focaljax.losses.sigmoid_focal_loss).
    config.model.loss.soft_target_mode = "pt"
    config.model.loss.fl_star_beta = 0.0
    config.model.loss.ohem_num_samples = 128
    config.model.loss.ohem_positive_fraction = 0.25
    # N of the loss: "num_positives" (the paper's max(1, #positive anchors) of the batch) or
    # "ema" (detectron2's moving average of it, momentum ema_momentum, starting at 100).
    config.model.loss.normalizer = "num_positives"
    config.model.loss.ema_momentum = 0.9
    config.model.loss.box = "giou"  # On the decoded boxes (see the docstring for "l1").
    config.model.loss.box_beta = 0.0
    config.model.loss.box_weight = 2.0
    config.model.postprocess = ml_collections.ConfigDict()
    config.model.postprocess.pre_nms_topk = 1000
    config.model.postprocess.score_threshold = 0.05
    config.model.postprocess.nms_iou_threshold = 0.5
    config.model.postprocess.max_detections = 100

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 0.004  # Per reference_batch_size images, scaled linearly.
    config.optimizer.reference_batch_size = 16
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.weight_decay = 1e-4
    config.optimizer.grad_clip_norm = 0.0

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 100
    config.schedule.warmup_factor = 0.001
    config.schedule.decay_steps = ()
    config.schedule.decay_epochs = ()
    config.schedule.decay_factor = 0.1

    config.batch_size = 16
    config.eval_batch_size = 32
    config.num_train_steps = 1600
    config.num_epochs = 0.0
    config.log_every_steps = 20
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 200
    config.max_checkpoints_to_keep = 2
    config.num_grid_images = 8
    config.eval_backend = "pycocotools"  # or "faster_coco_eval"
    # XLA options for the train and evaluation steps (fields of XLA's DebugOptions). XLA:CPU's
    # own convolutions instead of YNNPACK's: the train step in 0.76x the time (235 vs 309 ms,
    # jax 0.10.2, 2 cores; benchmarks/train_step_bench.py). GPU/TPU compilers do not read it.
    config.compiler_options = ml_collections.ConfigDict(
        {"xla_cpu_experimental_ynn_fusion_type": ""}
    )
    return config
