"""Training and evaluation loop for any `focaljax.detectors.Detector` on any `focaljax.data` set.

`train_and_evaluate(config, workdir)` does everything a run needs: it builds the data set and the
detector named in the config, restores the latest checkpoint of `workdir` if there is one, runs
the pmapped `train_step` with periodic checkpoints, logs, COCO evaluations (plus PASCAL VOC's mAP
when `config.voc_metric` is set) and detection images, and returns the final evaluation metrics.

The model, loss and data set are all picked by name from `config`; nothing here knows RetinaNet
or the shapes data set. Of `config.model` the trainer itself reads only `name` and the three
`MODEL_FIELDS`: ImageNet weights for the detector's ResNet (`backbone_weights`, read at a fresh
start and merged into the initial variables, see `load_backbone_weights`) and the part of it that
`freeze_at` freezes, which the optimizer leaves alone. A workdir holds:

  checkpoints/        orbax checkpoints of the `TrainState`, the last `max_checkpoints_to_keep`
  config.json         the config of the latest run, read by `python -m train.predict`
  dataset_info.json   class names and COCO category ids of the training data set, likewise
  backbone_weights.json  the ImageNet weight file the run started from (path, format, size,
                      sha256, what was unused), written at the fresh start of a run that has one
  metrics.jsonl       one JSON object per logging step or evaluation
  events.out.tfevents.*  the same scalars, and the detection grids, for TensorBoard
  detections_step_N.png  predicted (solid) and ground-truth (dashed) boxes on validation images
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import jax_utils, struct
from jax import lax
from tqdm import tqdm

from focaljax import data as data_lib
from focaljax import detectors, evaluation
from focaljax.evaluation.visualize import save_detection_grid
from focaljax.models import pretrained as pretrained_lib
from focaljax.models import resnet as resnet_lib
from train import distributed
from train.summary import NullWriter, SummaryWriter

AXIS_NAME = "batch"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")
EVAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# config.voc_metric -> the name of PASCAL VOC's mAP at IoU 0.5 among the evaluation metrics:
# "voc07" the 11-point VOC2007 AP, "voc" the all-point area (VOC2010+); "" (default) neither.
VOC_METRICS = {"voc07": "VOC07_mAP50", "voc": "VOC_mAP50"}
# The outputs of `Detector.postprocess` that the detection pictures draw.
DETECTION_KEYS = ("boxes", "scores", "classes", "num_valid")
CONFIG_FILE = "config.json"
DATASET_INFO_FILE = "dataset_info.json"
BACKBONE_WEIGHTS_FILE = "backbone_weights.json"
# The fields of config.model that the trainer reads for any detector ("" and 0 for one without a
# ResNet); the detector's builder reads the rest.
MODEL_FIELDS = ("backbone_weights", "backbone_weights_format", "freeze_at")


class TrainState(struct.PyTreeNode):
    """Everything that changes during training, and nothing else (no functions, no config).

    Attributes:
      step: number of optimizer steps taken.
      params: the `"params"` collection.
      model_state: the other variable collections: batch-norm statistics that training updates
        (`Detector.mutable_collections`) or frozen ones that it never touches.
      opt_state: the optax state.
      loss_state: what the detector's loss carries from step to step
        (`Detector.initial_loss_state`, e.g. a moving-average normalizer); `{}` for most.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    loss_state: Any


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or Inf."""


class TrainingInterruptedError(RuntimeError):
    """SIGTERM or Ctrl-C stopped training after a checkpoint of the current step was saved.

    Attributes:
      step: the step of that checkpoint; rerunning on the same workdir resumes from it.
      signum: the signal received.
    """

    def __init__(self, step: int, signum: int):
        super().__init__(
            f"{signal.Signals(signum).name}: saved a checkpoint at step {step}; rerun the same "
            "command to resume"
        )
        self.step = step
        self.signum = signum


def report(message: str) -> None:
    """Prints `message` above the progress bar, on process 0 only (`distributed.is_main`)."""
    if distributed.is_main():
        tqdm.write(message)


# ----------------------------------------------------------------------------------------------
# Config checks, learning rate and optimizer.


def check_config(
    config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1
) -> None:
    """Raises ValueError for config values the trainer cannot run, before anything is compiled.

    `num_devices` counts the devices of all `num_processes` processes: `config.batch_size` and
    `config.eval_batch_size` are global batches, split evenly over them.
    """
    where = (f"{num_devices} devices of the {num_processes} processes" if num_processes > 1
             else f"{num_devices} local devices")
    for name in ("batch_size", "eval_batch_size"):
        value = config[name]
        if value < 1 or value % num_devices:
            raise ValueError(
                f"config.{name} is {value}, expected a positive multiple of the {where} "
                f"(each device gets {name} / {num_devices} images)"
            )
    if config.optimizer.name not in OPTIMIZERS:
        raise ValueError(
            f"config.optimizer.name is {config.optimizer.name!r}, expected one of {OPTIMIZERS}"
        )
    schedule = config.schedule
    if schedule.name not in SCHEDULES:
        raise ValueError(f"config.schedule.name is {schedule.name!r}, expected one of {SCHEDULES}")
    if schedule.decay_steps and schedule.decay_epochs:
        raise ValueError(
            "config.schedule.decay_steps and decay_epochs are both set; give the learning-rate "
            "decay points in steps or in epochs, not both"
        )
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ValueError("set config.num_train_steps or config.num_epochs to a positive value")
    if not 0 < schedule.warmup_factor <= 1:
        raise ValueError(
            f"config.schedule.warmup_factor is {schedule.warmup_factor}, expected a value in (0, 1]"
        )
    for name in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
        if config[name] < 0:
            raise ValueError(f"config.{name} is {config[name]}, expected >= 0 (0 turns it off)")
    if config.max_checkpoints_to_keep < 1:
        raise ValueError(
            f"config.max_checkpoints_to_keep is {config.max_checkpoints_to_keep}, expected >= 1"
        )
    voc_metric = config.get("voc_metric", "")
    if voc_metric and voc_metric not in VOC_METRICS:
        raise ValueError(
            f"config.voc_metric is {voc_metric!r}, expected '' (off) or one of {tuple(VOC_METRICS)}"
        )
    compiler_options(config)  # Raises for a malformed one.
    image_size = tuple(config.dataset.image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(
            f"config.dataset.image_size is {image_size}, expected (height, width) in pixels"
        )
    model = config.model
    missing = [name for name in MODEL_FIELDS if name not in model]
    if missing:
        raise ValueError(
            f"config.model lacks {missing}, which the trainer reads for every detector; declare "
            "them as configs/shapes_retinanet.py does ('' and 0 for a detector without a ResNet)"
        )
    if model.backbone_weights_format not in ("", *pretrained_lib.FORMATS):
        raise ValueError(
            f"config.model.backbone_weights_format is {model.backbone_weights_format!r}, "
            f"expected '' (detected from the file) or one of {pretrained_lib.FORMATS}"
        )
    if not 0 <= model.freeze_at <= resnet_lib.MAX_FREEZE_AT:
        raise ValueError(
            f"config.model.freeze_at is {model.freeze_at}, expected 0 (nothing frozen), 1 (the "
            f"stem) ... {resnet_lib.MAX_FREEZE_AT} (the stem and stages C2..C"
            f"{resnet_lib.MAX_FREEZE_AT})"
        )
    detectors.check_config(model, image_size)  # The losses' hyper-parameters among the rest.


def resolve_steps(
    config: ml_collections.ConfigDict, num_train_examples: int
) -> tuple[int, tuple[int, ...]]:
    """`(num_train_steps, decay_steps)` from the config's steps, or from its epochs."""
    steps_per_epoch = num_train_examples / config.batch_size
    num_steps = config.num_train_steps
    if num_steps <= 0:
        num_steps = math.ceil(config.num_epochs * steps_per_epoch)
    decay_steps = tuple(int(s) for s in config.schedule.decay_steps)
    if config.schedule.decay_epochs:
        decay_steps = tuple(round(e * steps_per_epoch) for e in config.schedule.decay_epochs)
    if list(decay_steps) != sorted(decay_steps) or any(not 0 < s < num_steps for s in decay_steps):
        raise ValueError(
            f"learning-rate decay steps {decay_steps} must increase and lie in (0, {num_steps}), "
            "the training steps"
        )
    return num_steps, decay_steps


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, str | bool | int | float]:
    """`config.compiler_options` (absent: none) as a dict of XLA option name -> value."""
    options = config.get("compiler_options") or {}
    if isinstance(options, ml_collections.ConfigDict):
        options = options.to_dict()
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (str, bool, int, float)) for k, v in options.items()
    ):
        raise ValueError(
            f"config.compiler_options is {options!r}, expected a mapping from XLA option names "
            "to strings or numbers, e.g. {'xla_cpu_experimental_ynn_fusion_type': ''}"
        )
    return dict(options)


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, num_steps: int, decay_steps: tuple[int, ...]
) -> optax.Schedule:
    """lr(step) = base * warmup(step) * decay(step), detectron2's warm-up times its schedule.

    `base = optimizer.learning_rate * batch_size / optimizer.reference_batch_size` (linear scaling,
    Goyal et al. 2017); warm-up rises linearly from `warmup_factor` to 1 over `warmup_steps`; decay
    is `decay_factor ** (number of decay_steps passed)` ("step"), half a cosine to 0 over the run
    ("cosine"), or 1 ("constant").
    """
    opt = config.optimizer
    base = opt.learning_rate * config.batch_size / opt.reference_batch_size
    schedule = config.schedule
    warmup_steps = schedule.warmup_steps
    boundaries = jnp.asarray(decay_steps, jnp.int32)

    def learning_rate(step):
        step = jnp.asarray(step)
        if warmup_steps > 0:
            alpha = jnp.minimum(step / warmup_steps, 1.0)
            warmup = schedule.warmup_factor * (1 - alpha) + alpha
        else:
            warmup = 1.0
        if schedule.name == "step":
            decay = schedule.decay_factor ** jnp.sum(step >= boundaries)
        elif schedule.name == "cosine":
            decay = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step / num_steps, 1.0)))
        else:
            decay = 1.0
        return base * warmup * decay

    return learning_rate


def decay_mask(params: Any) -> Any:
    """True for the weights that get weight decay: kernels, not biases or norm scales (all 1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (detectron2), or AdamW; optional clipping of the
    global gradient norm first. Weight decay skips biases and norm parameters (`decay_mask`).

    The parameters of the backbone parts that `config.model.freeze_at` freezes
    (`focaljax.models.freeze_mask`) are left out altogether: their update is zero and they have
    no optimizer state. Their gradient is zero already (the ResNet stops it), but both weight
    decays would still move them.
    """
    opt = config.optimizer
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.name == "sgd":
        if opt.weight_decay > 0:
            parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(learning_rate_fn, momentum=opt.momentum, nesterov=opt.nesterov))
    else:
        parts.append(
            optax.adamw(
                learning_rate_fn, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                mask=decay_mask,
            )
        )
    freeze_at = config.model.freeze_at

    def labels(params: Any) -> Any:
        frozen = resnet_lib.freeze_mask(params, freeze_at=freeze_at)
        return jax.tree.map(lambda is_frozen: "frozen" if is_frozen else "trained", frozen)

    return optax.multi_transform(
        {"trained": optax.chain(*parts), "frozen": optax.set_to_zero()}, labels
    )


def load_backbone_weights(
    config: ml_collections.ConfigDict,
) -> pretrained_lib.PretrainedResNet | None:
    """The ImageNet weights of the file `config.model.backbone_weights`, converted for the
    configured ResNet (`model.backbone`, `model.norm`, `model.stride_in_1x1`) and the input
    normalization of `focaljax.data`; None when it is "".

    The format is `model.backbone_weights_format`, or the one `detect_format` finds when that is
    "" (see `focaljax.models.pretrained` for the formats and the conversion).

    Raises:
      ValueError: naming `config.model.backbone_weights`, the file and what is wrong with it:
        unreadable, truncated or unsafe, another architecture (with every missing and
        mis-shaped array), or weights the configured ResNet cannot take (a norm without
        statistics, such as "gn"; the stride in the other convolution).
    """
    model = config.model
    path = model.backbone_weights
    if not path:
        return None
    resnet = resnet_lib.build_resnet(
        model.backbone, norm=model.norm, axis_name=AXIS_NAME, stride_in_1x1=model.stride_in_1x1
    )
    try:
        return pretrained_lib.load_resnet_weights(
            path, resnet, format=model.backbone_weights_format or None,
            input_mean=data_lib.IMAGENET_MEAN, input_std=data_lib.IMAGENET_STD,
        )
    except pretrained_lib.WeightFileError as error:  # Its message starts with the file.
        raise ValueError(f"config.model.backbone_weights: {error}") from None
    except ValueError as error:
        raise ValueError(
            f"config.model.backbone_weights: {path} does not fit config.model (backbone "
            f"{model.backbone!r}, norm {model.norm!r}, stride_in_1x1 {model.stride_in_1x1}): "
            f"{error}"
        ) from None


def create_train_state(
    rng: jax.Array,
    detector: detectors.Detector,
    tx: optax.GradientTransformation,
    image_size: tuple[int, int],
    *,
    backbone: pretrained_lib.PretrainedResNet | None = None,
) -> TrainState:
    """Initial, unreplicated state; variables are initialized from a dummy one-image batch.

    `backbone`, ImageNet weights from `load_backbone_weights`, then replaces the ResNet of the
    initial variables (`focaljax.models.merge_backbone` at `focaljax.models.BACKBONE_PATH`, where
    RetinaNet and Faster R-CNN keep it; a detector built for another ResNet is refused there).
    """
    height, width = image_size
    dummy = {
        "image": jnp.zeros((1, height, width, 3), jnp.float32),
        "boxes": jnp.zeros((1, 1, 4), jnp.float32),
        "labels": jnp.full((1, 1), -1, jnp.int32),
        "is_crowd": jnp.zeros((1, 1), bool),
    }

    # Compiled, rather than one eager op per initializer. The weights are merged outside: as
    # constants of the compiled function they would be copied into it.
    variables = jax.jit(detector.init)(rng, dummy)
    if backbone is not None:
        variables = pretrained_lib.merge_backbone(variables, backbone)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state={k: v for k, v in variables.items() if k != "params"},
        opt_state=jax.jit(tx.init)(params),
        loss_state=detector.initial_loss_state,
    )


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """A copy of `tree` on each of `devices` (default: the local devices) with a leading device
    axis, as `pmap` takes it."""
    # The sharding pmap gives its outputs: a step whose inputs had another would compile twice,
    # for its first input and for its own outputs.
    sharding = distributed.local_sharding(AXIS_NAME, devices)
    copies = len(sharding.mesh.devices)
    # Stacked on the host: `jnp.stack` would compile once for every shape in the tree.
    return jax.tree.map(
        lambda x: jax.device_put(np.stack([np.asarray(x)] * copies), sharding), tree
    )


# ----------------------------------------------------------------------------------------------
# Steps (pmapped over AXIS_NAME).


def with_compiler_options(fn: Callable, options: Mapping[str, Any]) -> Callable:
    """`fn` (`jax.jit`- or `jax.pmap`-ed), compiled at its first call, for the shapes of its
    arguments, with XLA `options`.

    The options (`config.compiler_options`, fields of XLA's `DebugOptions`) only tune how XLA
    compiles, never what the step computes; an option or value that the installed XLA rejects
    is reported and the step compiled without the options, rather than failing the run. Later
    calls must have the first call's shapes, as the train and the (padded) evaluation batches
    do. With no options, `fn` itself is returned.
    """
    if not options:
        return fn
    compiled = None
    # With several processes the executable takes and returns global arrays over the devices of
    # all of them, where `fn` itself takes this process's (`distributed.global_view`).
    mesh = distributed.device_mesh(AXIS_NAME)

    def call(*args):
        nonlocal compiled
        if compiled is None:
            lowered = fn.lower(*args)
            try:
                compiled = lowered.compile(compiler_options=options)
            except jax.errors.JaxRuntimeError as error:
                report(
                    f"Warning: this XLA rejects config.compiler_options {options} ({error}); "
                    "compiling without them"
                )
                compiled = lowered.compile()
        outputs = compiled(*distributed.global_view(args, mesh, AXIS_NAME))
        return distributed.local_view(outputs, mesh, AXIS_NAME)

    return call


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    detector: detectors.Detector,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    rng: jax.Array,
    freeze_at: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on one device's share of the global batch.

    The detector's loss is normalized over the global batch (`axis_name`), so the `pmean` of the
    gradients is the gradient of the global-batch loss and the step equals the same step on one
    device holding the whole batch. Statistics that the forward pass updates (batch norm) are
    averaged over devices so that all replicas stay identical. The step's randomness is a function
    of `rng`, the step number and the device, so a resumed run draws what it would have drawn.
    The statistics of the backbone parts that `freeze_at` (`config.model.freeze_at`) freezes are
    kept as they were.
    """
    step_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(AXIS_NAME))
    apply_rng, loss_rng = jax.random.split(step_rng)

    def loss_fn(params):
        variables = {"params": params, **state.model_state}
        outputs, updates = detector.apply(variables, batch, train=True, rng=apply_rng)
        result = detector.loss_fn(
            outputs, batch, state=state.loss_state, axis_name=AXIS_NAME, rng=loss_rng
        )
        return sum(result.terms.values()), (result, updates)

    (loss, (result, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS_NAME)
    updates = lax.pmean(updates, AXIS_NAME)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # Frozen parts normalize in evaluation mode and return their statistics unchanged, but the
    # mean of n equal values over devices can round ((x + x + x) / 3 is not always x).
    frozen = resnet_lib.freeze_mask(state.model_state, freeze_at=freeze_at)
    model_state = jax.tree.map(
        lambda is_frozen, old, new: old if is_frozen else new,
        frozen, state.model_state, {**state.model_state, **updates},
    )
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        model_state=model_state,
        opt_state=opt_state,
        # The detector reduces what its state is computed from; the mean keeps replicas equal.
        loss_state=lax.pmean(result.state, AXIS_NAME),
    )
    metrics = {
        **{f"loss_{name}": term for name, term in result.terms.items()},
        **result.metrics,
        "loss": loss,
    }
    metrics = {
        **lax.pmean(metrics, AXIS_NAME),
        "learning_rate": learning_rate_fn(state.step),
        "grad_norm": optax.tree.norm(grads),
    }
    return new_state, metrics


def eval_step(
    state: TrainState, batch: Mapping[str, jax.Array], *, detector: detectors.Detector
) -> dict[str, jax.Array]:
    """Detections of one device's batch, in resized-image pixels."""
    variables = {"params": state.params, **state.model_state}
    outputs, _ = detector.apply(variables, batch, train=False)
    return detector.postprocess(outputs, batch)


# ----------------------------------------------------------------------------------------------
# Evaluation.


def _merge_devices(tree: Any) -> Any:
    """[D, B, ...] -> [D * B, ...] on the host."""
    return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)


def to_original_pixels(boxes: np.ndarray, scale: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """Detected boxes `[B, K, 4]` in input pixels -> original pixels of each image, clipped to
    its `(height, width)` in `image_sizes [B, 2]`.

    The detector clips boxes to its padded input; an image of another aspect ratio fills only
    part of it, so boxes reaching into the padding are clipped here.
    """
    boxes = boxes / scale[:, None, None]
    height, width = image_sizes[:, 0], image_sizes[:, 1]
    return np.clip(boxes, 0.0, np.stack([width, height, width, height], axis=-1)[:, None, :])


def denormalize(images: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Normalized float images back to uint8 RGB, for pictures."""
    images = images * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def build_evaluators(
    dataset: data_lib.DetectionDataset,
    detector: detectors.Detector,
    config: ml_collections.ConfigDict,
) -> list[evaluation.Evaluator]:
    """The evaluators of a run: COCO's detection metrics, PASCAL VOC's mAP when
    `config.voc_metric` is set, then the detector's own (`Detector.evaluators`)."""
    ground_truth = dataset.coco_ground_truth(config.dataset.eval_split)
    # "faster_coco_eval" gives pycocotools' numbers (to 1e-4, tested) an order of magnitude faster.
    evaluators: list[evaluation.Evaluator] = [
        evaluation.CocoDetectionEvaluator(
            ground_truth, category_ids=dataset.info.category_ids,
            backend=config.get("eval_backend", "pycocotools"),
        )
    ]
    voc_metric = config.get("voc_metric", "")
    if voc_metric:
        image_ids, truths = dataset.voc_ground_truth(config.dataset.eval_split)
        evaluators.append(
            evaluation.VocDetectionEvaluator(
                image_ids, truths, num_classes=dataset.info.num_classes,
                use_07_metric=voc_metric == "voc07",
            )
        )
    evaluators.extend(detector.evaluators(ground_truth))
    return evaluators


def evaluate(
    p_eval_step: Callable,
    state: TrainState,
    dataset: data_lib.DetectionDataset,
    config: ml_collections.ConfigDict,
    *,
    detector: detectors.Detector,
    grid_path: str | None = None,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics of the (replicated) `state` on the evaluation split, and a picture grid.

    Every batch of detections goes to each of `build_evaluators`' evaluators, with each of the
    detector's `box_outputs` mapped back to original pixels (`to_original_pixels`) first; the
    metrics are the union of theirs (COCO's under `EVAL_METRICS` and the rest of
    `focaljax.evaluation.STAT_NAMES`, VOC's mAP under its `VOC_METRICS` name, a Faster R-CNN's
    proposal recall ...). The grid, written to `grid_path` as a PNG, shows the first
    `config.num_grid_images` images with their predicted and true boxes, in resized-image pixels.
    """
    info = dataset.info
    ground_truth = dataset.coco_ground_truth(config.dataset.eval_split)
    evaluators = build_evaluators(dataset, detector, config)
    sizes = {image["id"]: (image["height"], image["width"]) for image in ground_truth["images"]}
    per_device = config.eval_batch_size // jax.device_count()
    grid_images, grid_predictions, grid_truths = [], [], []
    for batch in dataset.eval_iterator(per_device):
        predictions = _merge_devices(jax.device_get(p_eval_step(state, batch)))
        batch = _merge_devices(batch)
        # Each process scored its share of the split (with the same number of batches on every
        # process); every process adds the detections of all of them, so all agree on the metrics.
        # The images stay where they are: only process 0's first ones are drawn.
        images = batch.pop("image")
        everything = distributed.gather({"predictions": predictions, "batch": batch})
        # Padding examples (valid False, image_id -1) are skipped by every evaluator.
        all_batch = everything["batch"]
        image_sizes = np.array([sizes.get(i, (np.inf, np.inf)) for i in all_batch["image_id"]])
        original = {
            **everything["predictions"],
            **{key: to_original_pixels(everything["predictions"][key], all_batch["scale"],
                                       image_sizes)
               for key in detector.box_outputs},
        }
        for evaluator in evaluators:
            evaluator.add(original, all_batch)
        batch["image"] = images
        for i in np.flatnonzero(batch["valid"])[: config.num_grid_images - len(grid_images)]:
            grid_images.append(batch["image"][i])
            grid_predictions.append({k: predictions[k][i] for k in DETECTION_KEYS})
            grid_truths.append({"boxes": batch["boxes"][i], "labels": batch["labels"][i]})
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        metrics.update(evaluator.evaluate())
    grid = None
    if grid_path is not None and grid_images and distributed.is_main():
        images = denormalize(np.stack(grid_images), dataset.mean, dataset.std)
        grid = save_detection_grid(
            grid_path, list(images), grid_predictions, grid_truths, info.class_names,
            title=f"{os.path.basename(grid_path)}: predicted (solid), ground truth (dashed)",
        )
    return metrics, grid


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """The COCO metrics as a table, then one line for the other metrics of the evaluators (VOC's
    mAP, proposal recall ...), if any."""
    header = " | ".join(f"{name:>6}" for name in EVAL_METRICS)
    values = " | ".join(f"{metrics[name]:6.3f}" for name in EVAL_METRICS)
    others = [f"{name}: {value:.3f}" for name, value in metrics.items()
              if name not in evaluation.STAT_NAMES]
    return "\n".join([header, values] + (["  ".join(others)] if others else []))


# ----------------------------------------------------------------------------------------------
# Checkpoints and the workdir.


def checkpoint_manager(
    workdir: str, *, max_to_keep: int | None = None, create: bool = True
) -> ocp.CheckpointManager:
    """The orbax manager of `workdir/checkpoints`; it saves in the background."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create),
        item_handlers=ocp.StandardCheckpointHandler(),
    )


def save_train_state(checkpoints: ocp.CheckpointManager, step: int, state: TrainState) -> None:
    """Saves the replicated (pmap layout) `state` at `step`, in the background, as one fully
    replicated array per leaf over the devices of all processes (`distributed.replicated_global`):
    with several processes, orbax saves only arrays that span all of them, and every process
    calls this."""
    checkpoints.save(step, args=ocp.args.StandardSave(distributed.replicated_global(state)))


def restore_train_state(
    checkpoints: ocp.CheckpointManager, step: int, like: TrainState
) -> TrainState:
    """The state saved by `save_train_state` at `step`, in the replicated layout of `like`."""
    restored = checkpoints.restore(
        step, args=ocp.args.StandardRestore(distributed.abstract_replicated(like))
    )
    return distributed.replicated_local(restored, AXIS_NAME)


def latest_checkpoint_step(workdir: str) -> int | None:
    """The step of the latest checkpoint in `workdir`; None when it has none (a fresh start).
    Creates nothing."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    manager = checkpoint_manager(workdir, create=False)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def restore_variables(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
    """`({"params": ..., **model_state}, step)` of the checkpoint at `step` (default: the latest)
    in `workdir`, for inference; the optimizer state is not needed and not returned.

    Raises:
      FileNotFoundError: when `workdir` has no such checkpoint.
    """
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"{workdir} has no checkpoints folder: expected the workdir of a "
                                "`python -m train` run")
    manager = checkpoint_manager(workdir, create=False)
    try:
        steps = manager.all_steps()
        if step is None and steps:
            step = max(steps)
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no checkpoint {'' if step is None else f'at step {step} '}in "
                f"{manager.directory}; it has steps {sorted(steps)}"
            )
        # Onto this process's first device, whatever the devices and processes of the run
        # that saved it (orbax restores onto the saved topology unless told otherwise).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
            manager.item_metadata(step),
        )
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    finally:
        manager.close()
    return {"params": restored["params"], **restored.get("model_state", {})}, int(step)


def write_run_info(
    workdir: str,
    config: ml_collections.ConfigDict,
    info: data_lib.DatasetInfo,
    *,
    backbone: pretrained_lib.PretrainedResNet | None = None,
) -> None:
    """Writes what inference needs besides the checkpoint: the config and the class names; and,
    at a fresh start from ImageNet weights, where they came from (`backbone_weights_record`),
    which a resumed run, not reading the file, leaves as it is."""
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, DATASET_INFO_FILE), "w") as f:
        json.dump(dataclasses.asdict(info), f, indent=2)
    if backbone is not None:
        with open(os.path.join(workdir, BACKBONE_WEIGHTS_FILE), "w") as f:
            json.dump(backbone_weights_record(backbone), f, indent=2)


def backbone_weights_record(backbone: pretrained_lib.PretrainedResNet) -> dict[str, Any]:
    """The source of converted weights: the file's absolute path, format, size in bytes and
    sha256, the arrays left unused (the classifier) and the notes of the conversion."""
    with open(backbone.path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    return {
        "path": os.path.abspath(backbone.path),
        "format": backbone.format,
        "bytes": os.path.getsize(backbone.path),
        "sha256": sha256,
        "unused": list(backbone.unused),
        "notes": list(backbone.notes),
    }


def read_run_info(workdir: str) -> tuple[ml_collections.ConfigDict, data_lib.DatasetInfo]:
    """The config and data set info that `train_and_evaluate` wrote to `workdir`."""
    paths = [os.path.join(workdir, name) for name in (CONFIG_FILE, DATASET_INFO_FILE)]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError(
            f"{workdir} lacks {missing}: expected the workdir of a `python -m train` run"
        )
    with open(paths[0]) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(paths[1]) as f:
        info = json.load(f)
    for name in ("class_names", "category_ids"):
        info[name] = tuple(info[name])
    return config, data_lib.DatasetInfo(**info)


# ----------------------------------------------------------------------------------------------
# The loop.


class _StopRequest:
    """Turns SIGTERM and a first Ctrl-C into a flag that the loop checks after each step; a second
    Ctrl-C raises KeyboardInterrupt at once. Outside the main thread no handler is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # Not the main thread.
            self.__exit__()
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        report(
            f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
            "(Ctrl-C again to stop without saving)."
        )

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


class _Throughput:
    """Images per second over the steps finished since the last `restart`, not counting the first
    one (compilation, or the wait after a checkpoint or evaluation)."""

    def __init__(self, images_per_step: int):
        self._images_per_step = images_per_step
        self.restart()

    def restart(self) -> None:
        self._start: float | None = None
        self._steps = 0

    def step_done(self) -> None:
        if self._start is None:
            self._start = time.perf_counter()
        else:
            self._steps += 1

    def images_per_second(self) -> float:
        if not self._steps:
            return math.nan
        return self._steps * self._images_per_step / (time.perf_counter() - self._start)


def _to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)[0]) for k, v in metrics.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint, then evaluates.

    Returns:
      The final metrics of `build_evaluators`: COCO's (AP, AP50, AP75, APs, APm, APl, AR...),
      VOC's mAP under its `VOC_METRICS` name when `config.voc_metric` is set, and those of the
      detector's own evaluators (a Faster R-CNN's AR@100, AR@300, AR@1000).

    Raises:
      ValueError: for a config that cannot run, before anything is compiled; for an ImageNet
        weight file (`config.model.backbone_weights`) that cannot be read or does not fit the
        configured ResNet, before the data set is prepared; for `config.voc_metric` on a data
        set without VOC's "difficult" flags.
      TrainingDivergedError: when the loss or the gradient norm becomes NaN or Inf; the message
        names the step and the last good checkpoint, and nothing is saved after it.
      TrainingInterruptedError: after SIGTERM or Ctrl-C, once the checkpoint of the current step
        is saved.
    """
    check_config(config, jax.device_count(), jax.process_count())
    resume_step = latest_checkpoint_step(workdir)
    # Read at a fresh start only, before the data set is prepared: every checkpoint holds the
    # converted weights, so a resumed run (and train.predict) never needs the file.
    backbone = load_backbone_weights(config) if resume_step is None else None
    if backbone is not None:
        report(f"ImageNet weights for the backbone: {backbone.report}")
    # Process 0 prepares the data set (on a shared data_dir, for all); the others wait, then
    # find it prepared, or prepare their own copy. A TFDS builder reads what is prepared when
    # it is made, so theirs are made after the wait.
    if distributed.is_main():
        dataset = data_lib.build(config.dataset)
        info = dataset.info  # The first access prepares it.
    distributed.barrier("data set prepared")
    if not distributed.is_main():
        dataset = data_lib.build(config.dataset)
        info = dataset.info
    voc_metric = config.get("voc_metric", "")
    if voc_metric:
        # Now rather than at the first evaluation; the ground truth is read once and kept.
        try:
            dataset.voc_ground_truth(config.dataset.eval_split)
        except ValueError as error:
            raise ValueError(
                f"config.voc_metric is {voc_metric!r}, but {error}. Set it to '' for this data set."
            ) from error
    image_size = tuple(int(s) for s in config.dataset.image_size)
    detector = detectors.build(
        config.model, num_classes=info.num_classes, image_size=image_size, axis_name=AXIS_NAME
    )
    # TFDS resolves split expressions such as VOC's "train+validation" to their size.
    num_train_examples = dataset.builder.info.splits[config.dataset.train_split].num_examples
    num_steps, decay_steps = resolve_steps(config, num_train_examples)
    learning_rate_fn = create_learning_rate_fn(config, num_steps, decay_steps)
    tx = create_optimizer(config, learning_rate_fn)

    os.makedirs(workdir, exist_ok=True)
    if distributed.is_main():
        write_run_info(workdir, config, info, backbone=backbone)
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    state = replicate(create_train_state(init_rng, detector, tx, image_size, backbone=backbone))
    checkpoints = checkpoint_manager(workdir, max_to_keep=config.max_checkpoints_to_keep)
    writer = SummaryWriter(workdir) if distributed.is_main() else NullWriter()
    try:
        if resume_step is not None:
            state = restore_train_state(checkpoints, resume_step, state)
            report(f"Resuming from the checkpoint at step {resume_step} in {workdir}")
        return _train_loop(
            config, workdir, state,
            dataset=dataset, detector=detector, tx=tx, learning_rate_fn=learning_rate_fn,
            step_rng=step_rng, num_steps=num_steps, checkpoints=checkpoints, writer=writer,
        )
    finally:
        checkpoints.wait_until_finished()
        checkpoints.close()
        writer.close()


def _train_loop(
    config: ml_collections.ConfigDict,
    workdir: str,
    state: TrainState,
    *,
    dataset: data_lib.DetectionDataset,
    detector: detectors.Detector,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    step_rng: jax.Array,
    num_steps: int,
    checkpoints: ocp.CheckpointManager,
    writer: SummaryWriter,
) -> dict[str, float]:
    options = compiler_options(config)
    p_train_step = with_compiler_options(
        jax.pmap(
            functools.partial(
                train_step, detector=detector, tx=tx, learning_rate_fn=learning_rate_fn,
                rng=step_rng, freeze_at=config.model.freeze_at,
            ),
            axis_name=AXIS_NAME,
            donate_argnums=(0,),
        ),
        options,
    )
    p_eval_step = with_compiler_options(
        jax.pmap(functools.partial(eval_step, detector=detector), axis_name=AXIS_NAME),
        options,
    )
    step = int(state.step[0])
    per_device_batch = config.batch_size // jax.device_count()
    # The iterator starts at the batch of `step`, so a resumed run sees the data it would have.
    train_iter = jax_utils.prefetch_to_device(
        dataset.train_iterator(per_device_batch, config.seed, step), 2, axis_name=AXIS_NAME
    )

    def save(step: int) -> None:
        save_train_state(checkpoints, step, state)

    def run_eval(step: int) -> dict[str, float]:
        grid_path = os.path.join(workdir, f"detections_step_{step}.png")
        metrics, grid = evaluate(
            p_eval_step, state, dataset, config, detector=detector, grid_path=grid_path
        )
        writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        if grid is not None:
            writer.write_image(step, "eval/detections", grid)
        report(f"Evaluation at step {step}:\n{format_metrics_table(metrics)}")
        report(f"Detections vs ground truth: {grid_path}")
        return metrics

    def every(interval: int) -> bool:
        return interval > 0 and step % interval == 0

    history: list[dict[str, float]] = []
    throughput = _Throughput(config.batch_size)

    def finish(finished_step: int, metrics: Any) -> None:
        """Reads a step's metrics from the devices, stopping on NaN/Inf before any save."""
        values = _to_floats(metrics)
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            last = checkpoints.latest_step()
            where = f"step {last} in {checkpoints.directory}" if last is not None else "none"
            raise TrainingDivergedError(
                f"loss is {values['loss']} (gradient norm {values['grad_norm']}) at step "
                f"{finished_step}; stopping. Last good checkpoint: {where}. Lower the learning "
                "rate or clip gradients (config.optimizer.grad_clip_norm)."
            )
        history.append(values)
        throughput.step_done()

    progress = tqdm(total=num_steps, initial=step, desc="train", dynamic_ncols=True,
                    disable=not distributed.is_main())
    pending: tuple[int, Any] | None = None  # The last step's metrics, read one step late.
    with progress, _StopRequest() as stop:
        while step < num_steps:
            state, metrics = p_train_step(state, next(train_iter))
            step += 1
            progress.update(1)
            # Reading the previous step's metrics while this one runs keeps the devices busy and
            # still names the exact step that diverged.
            if pending is not None:
                finish(*pending)
            pending = (step, metrics)
            log_now = every(config.log_every_steps) or step == num_steps
            save_now = every(config.checkpoint_every_steps) or step == num_steps
            eval_now = every(config.eval_every_steps) and step < num_steps
            if not (log_now or save_now or eval_now or stop.signum is not None):
                continue
            finish(*pending)
            pending = None
            if log_now:
                summary = {f"train/{k}": float(np.mean([h[k] for h in history]))
                           for k in history[0]}
                summary["train/images_per_second"] = throughput.images_per_second()
                writer.write_scalars(step, summary)
                progress.set_postfix(
                    loss=f"{summary['train/loss']:.4f}",
                    lr=f"{summary['train/learning_rate']:.2e}",
                    img_s=f"{summary['train/images_per_second']:.1f}",
                )
                history = []
                throughput.restart()
            if save_now or stop.signum is not None:
                save(step)
            if stop.signum is not None:
                checkpoints.wait_until_finished()
                raise TrainingInterruptedError(step, stop.signum)
            if eval_now:
                run_eval(step)
            if save_now or eval_now:
                throughput.restart()
    return run_eval(step)
