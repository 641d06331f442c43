r"""The base config: every field that the trainer and the data pipeline read, declared once.

What: RetinaNet ResNet-50-FPN on COCO 2017 from scratch with the paper's 1x recipe, the values of
`configs/coco_retinanet_r50.py` without a weight file (see its docstring for the recipe). Every
config in configs/ starts from `get_config()` here (or from a config that does) and overrides
only what differs, so that `get_config()` here is the one list of a run's fields. The fields of
the library's parts are declared, with what each means and its default, next to the code that
reads them (they install with `focaljax`), and composed here: the data set's by
`focaljax.data.default_config()`, the models' by `focaljax.detectors.retinanet.default_config()`
and `focaljax.detectors.faster_rcnn.default_config()`. The model builders here,
`retinanet_model(weights)` and `faster_rcnn_model(weights)`, take those with the ResNet-50 from
ImageNet weights or from scratch (`backbone_recipe(model, weights)`, shared by both); the
trainer's own fields (optimizer, schedule, steps, evaluation) are declared in `get_config()`.

Command (the same run as `configs/coco_retinanet_r50.py` without a weight file, after
`python -m train.prepare_data --dataset coco --source_dir /data/coco`):

  python -m train --config configs/default.py --workdir runs/default

Hardware, time and result: those of `configs/coco_retinanet_r50.py` from scratch, TO BE
MEASURED.
"""

import ml_collections

from focaljax import data
from focaljax.detectors import faster_rcnn, retinanet


def backbone_recipe(model: ml_collections.ConfigDict, weights: str) -> None:
    """Sets the ResNet-50 of `model` (a RetinaNet or Faster R-CNN model config) for the COCO, VOC
    and folder recipes: from the ImageNet `weights` file as the paper and detectron2 do, or, when
    `weights` is "", from scratch with GroupNorm as the library's default
    (`focaljax.detectors.backbone.default_config`, which says what each field means) leaves it."""
    if weights:
        model.backbone_weights = weights
        model.norm = "frozen_bn"
        model.freeze_at = 2  # The stem and C2, detectron2's FREEZE_AT.
        model.stride_in_1x1 = True  # MSRA's layout, detectron2's STRIDE_IN_1X1.


def retinanet_model(weights: str = "") -> ml_collections.ConfigDict:
    """The RetinaNet model config: `focaljax.detectors.retinanet.default_config()` (every field,
    the paper's RetinaNet R50-FPN values, with what each means), the ResNet-50 from the ImageNet
    `weights` file or, when it is "", from scratch (`backbone_recipe`); on ImageNet weights the
    paper's heads, without a norm (from scratch they keep the default's GroupNorm)."""
    model = retinanet.default_config()
    backbone_recipe(model, weights)
    if weights:
        model.head_norm = "none"
    return model


def faster_rcnn_model(weights: str = "") -> ml_collections.ConfigDict:
    """The Faster R-CNN model config: `focaljax.detectors.faster_rcnn.default_config()` (every
    field, detectron2's `faster_rcnn_R_50_FPN_1x` values and FL-RPN's for the focal-loss RPN,
    with what each means), the ResNet-50 from the ImageNet `weights` file or, when it is "", from
    scratch (`backbone_recipe`). The shapes and VOC configs start from it and say what they
    change."""
    model = faster_rcnn.default_config()
    backbone_recipe(model, weights)
    return model


def get_config() -> ml_collections.ConfigDict:
    """Every field, with the values of the COCO RetinaNet recipe from scratch."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Of the initialization, the data order and the augmentation.

    # What `focaljax.data.build` reads, every field required, with what each means:
    # `focaljax.data.default_config()`, the COCO recipe's values.
    config.dataset = data.default_config()

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
    # Also save at the first log step at least this many minutes of wall clock after the last
    # save (0 turns it off), so that a run killed without warning (SIGKILL, a lost host or VM)
    # loses at most about that much; a SIGTERM or Ctrl-C saves the current step anyway.
    config.checkpoint_every_minutes = 10.0
    config.max_checkpoints_to_keep = 3  # >= 1.
    config.num_grid_images = 8  # Evaluation images drawn with their detections.
    # At a fresh start, the anchor-coverage report (focaljax.detectors.anchor_coverage: object
    # sizes against the anchors, the share of objects an anchor covers at the foreground IoU,
    # a suggestion) over this many training images, with a warning below 95%; 0: no report.
    config.anchor_coverage_images = 500
    config.eval_backend = "pycocotools"  # The COCO evaluator: "pycocotools" or "faster_coco_eval".
    # The evaluators of every evaluation, by name (focaljax.evaluation.EVALUATORS): "coco"
    # (COCO's AP, AP50, ... AR100), "voc07" (PASCAL VOC2007's 11-point mAP@0.5, logged as
    # VOC07_mAP50) and "voc" (all-point, VOC_mAP50), both needing a data set with VOC's
    # "difficult" flags such as "voc". The detector adds its own (Faster R-CNN: proposal recall).
    config.evaluators = ("coco",)
    # An alias kept for older configs: "voc07" or "voc" adds that evaluator; "" (off).
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
