"""Training and evaluation loop for any `focaljax.detectors.Detector` on any `focaljax.data` set.

`train_and_evaluate(config, workdir)` does everything a run needs: it builds the data set and the
detector named in the config, restores the latest checkpoint of `workdir` if there is one, runs
the pmapped `train_step` with periodic checkpoints, logs, COCO evaluations and detection images,
and returns the final evaluation metrics.

The model, loss and data set are all picked by name from `config`; nothing here knows RetinaNet
or the shapes data set.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import jax_utils
from flax import struct
from jax import lax
from tqdm import tqdm

from focaljax import data as data_lib
from focaljax import detectors
from focaljax.evaluation.coco import CocoEvaluator, detections_to_coco
from focaljax.evaluation.visualize import save_detection_grid
from train.summary import SummaryWriter

AXIS_NAME = "batch"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")
EVAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class TrainState(struct.PyTreeNode):
    """Everything that changes during training, and nothing else (no functions, no config).

    Attributes:
      step: number of optimizer steps taken.
      params: the `"params"` collection.
      model_state: the other variable collections: batch-norm statistics that training updates
        (`Detector.mutable_collections`) or frozen ones that it never touches.
      opt_state: the optax state.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


# ----------------------------------------------------------------------------------------------
# Config checks, learning rate and optimizer.


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ValueError for config values the trainer cannot run, before anything is compiled."""
    for name in ("batch_size", "eval_batch_size"):
        value = config[name]
        if value < 1 or value % num_devices:
            raise ValueError(
                f"config.{name} is {value}, expected a positive multiple of the {num_devices} "
                f"local devices (each device gets {name} / {num_devices} images)"
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
        raise ValueError(f"config.schedule.warmup_factor is {schedule.warmup_factor}, "
                         "expected a value in (0, 1]")
    for name in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
        if config[name] < 0:
            raise ValueError(f"config.{name} is {config[name]}, expected >= 0 (0 turns it off)")


def resolve_steps(config: ml_collections.ConfigDict, num_train_examples: int):
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


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, num_steps: int, decay_steps: tuple[int, ...]
) -> optax.Schedule:
    """lr(step) = base * warmup(step) * decay(step), detectron2's warm-up times its schedule.

    `base = optimizer.learning_rate * batch_size / optimizer.reference_batch_size` (linear scaling,
    Goyal et al. 2017); warm-up rises linearly from `warmup_factor` to 1 over `warmup_steps`; decay
    is `decay_factor ** (number of decay_steps passed)` ("step"), half a cosine to 0 over the run
    ("cosine"), or 1 ("constant").
    """
    base = config.optimizer.learning_rate * config.batch_size / config.optimizer.reference_batch_size
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
    """SGD with momentum and coupled weight decay (detectron2), or AdamW; optional clipping."""
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
    return optax.chain(*parts)


def create_train_state(
    rng: jax.Array, detector: detectors.Detector, tx: optax.GradientTransformation,
    image_size: tuple[int, int],
) -> TrainState:
    """Initial, unreplicated state; variables are initialized from a dummy one-image batch."""
    height, width = image_size
    dummy = {
        "image": jnp.zeros((1, height, width, 3), jnp.float32),
        "boxes": jnp.zeros((1, 1, 4), jnp.float32),
        "labels": jnp.full((1, 1), -1, jnp.int32),
        "is_crowd": jnp.zeros((1, 1), bool),
    }
    variables = jax.jit(detector.init)(rng, dummy)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
        opt_state=tx.init(params),
    )


# ----------------------------------------------------------------------------------------------
# Steps (pmapped over AXIS_NAME).


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    detector: detectors.Detector,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    rng: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on one device's share of the global batch.

    The detector's loss is normalized over the global batch (`axis_name`), so the `pmean` of the
    gradients is the gradient of the global-batch loss and the step equals the same step on one
    device holding the whole batch. Statistics that the forward pass updates (batch norm) are
    averaged over devices so that all replicas stay identical.
    """
    step_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(AXIS_NAME))
    apply_rng, loss_rng = jax.random.split(step_rng)

    def loss_fn(params):
        variables = {"params": params, **state.model_state}
        outputs, updates = detector.apply(variables, batch, train=True, rng=apply_rng)
        loss, metrics = detector.loss_fn(outputs, batch, axis_name=AXIS_NAME, rng=loss_rng)
        return loss, (metrics, updates)

    (_, (metrics, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS_NAME)
    metrics = lax.pmean(metrics, AXIS_NAME)
    updates = lax.pmean(updates, AXIS_NAME)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        model_state={**state.model_state, **updates},
        opt_state=opt_state,
    )
    metrics = {**metrics, "learning_rate": learning_rate_fn(state.step),
               "grad_norm": optax.global_norm(grads)}
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


def denormalize(images: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Normalized float images back to uint8 RGB, for pictures."""
    images = images * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def evaluate(
    p_eval_step: Callable,
    state: TrainState,
    dataset: Any,
    config: ml_collections.ConfigDict,
    *,
    grid_path: str | None = None,
) -> tuple[dict[str, float], np.ndarray | None]:
    """COCO metrics of the (replicated) `state` on the evaluation split, and a picture grid.

    Detections are mapped back to original pixels (divided by the batch's `scale`) before they
    meet the ground truth. The grid shows the first `config.num_grid_images` images with their
    predicted and true boxes, in resized-image pixels.
    """
    info = dataset.info
    evaluator = CocoEvaluator(dataset.coco_ground_truth(config.dataset.eval_split))
    per_device = config.eval_batch_size // jax.local_device_count()
    grid_images, grid_predictions, grid_truths = [], [], []
    for batch in dataset.eval_iterator(per_device):
        predictions = _merge_devices(jax.device_get(p_eval_step(state, batch)))
        batch = _merge_devices(batch)
        boxes = predictions["boxes"] / batch["scale"][:, None, None]
        evaluator.add(
            detections_to_coco(
                batch["image_id"], boxes, predictions["scores"], predictions["classes"],
                predictions["num_valid"], info.category_ids, batch["valid"],
            )
        )
        for i in np.flatnonzero(batch["valid"]):
            if len(grid_images) >= config.num_grid_images:
                break
            grid_images.append(batch["image"][i])
            grid_predictions.append({k: v[i] for k, v in predictions.items()})
            grid_truths.append({"boxes": batch["boxes"][i], "labels": batch["labels"][i]})
    metrics = evaluator.evaluate()
    grid = None
    if grid_path is not None and grid_images:
        images = denormalize(np.stack(grid_images), dataset.mean, dataset.std)
        grid = save_detection_grid(
            grid_path, list(images), grid_predictions, grid_truths, info.class_names,
            title=os.path.basename(grid_path),
        )
    return metrics, grid


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    header = " | ".join(f"{name:>6}" for name in EVAL_METRICS)
    values = " | ".join(f"{metrics[name]:6.3f}" for name in EVAL_METRICS)
    return f"{header}\n{values}"


# ----------------------------------------------------------------------------------------------
# The loop.


class _StopRequest:
    """Turns SIGTERM into a flag that the loop checks after each step (SIGINT stays an exception)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        with contextlib.suppress(ValueError):  # Not the main thread: no handler, no stop on TERM.
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _to_float(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)[0]) for k, v in metrics.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final
    evaluation metrics (`{}` when training stopped early on SIGTERM or Ctrl-C).

    Raises:
      ValueError: for a config that cannot run, before anything is compiled.
      TrainingDiverged: when the loss becomes NaN or Inf; nothing is saved after the last good
        checkpoint.
    """
    num_devices = jax.local_device_count()
    check_config(config, num_devices)
    dataset = data_lib.build(config.dataset)
    info = dataset.info
    image_size = tuple(config.dataset.image_size)
    detector = detectors.build(
        config.model, num_classes=info.num_classes, image_size=image_size, axis_name=AXIS_NAME
    )
    num_steps, decay_steps = resolve_steps(config, info.num_examples[config.dataset.train_split])
    learning_rate_fn = create_learning_rate_fn(config, num_steps, decay_steps)
    tx = create_optimizer(config, learning_rate_fn)

    os.makedirs(workdir, exist_ok=True)
    rng = jax.random.PRNGKey(config.seed)
    init_rng, step_rng = jax.random.split(rng)
    state = create_train_state(init_rng, detector, tx, image_size)
    checkpoints = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints_to_keep),
    )
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.StandardRestore(state))
        logging.info("Resumed from step %d of %s", int(state.step), workdir)
    start_step = int(state.step)

    p_train_step = jax.pmap(
        functools.partial(
            train_step, detector=detector, tx=tx, learning_rate_fn=learning_rate_fn, rng=step_rng
        ),
        axis_name=AXIS_NAME,
        donate_argnums=(0,),
    )
    p_eval_step = jax.pmap(functools.partial(eval_step, detector=detector), axis_name=AXIS_NAME)

    writer = SummaryWriter(workdir)
    per_device_batch = config.batch_size // num_devices
    train_iter = dataset.train_iterator(per_device_batch, config.seed, start_step)
    train_iter = jax_utils.prefetch_to_device(train_iter, 2)
    state = jax_utils.replicate(state)

    def save(step: int) -> None:
        checkpoints.save(step, args=ocp.args.StandardSave(jax_utils.unreplicate(state)))

    def run_eval(step: int) -> dict[str, float]:
        grid_path = os.path.join(workdir, f"detections_step_{step}.png")
        metrics, grid = evaluate(p_eval_step, state, dataset, config, grid_path=grid_path)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        if grid is not None:
            writer.write_image(step, "eval/detections", grid)
        tqdm.write(f"\nEvaluation at step {step}:\n{format_metrics_table(metrics)}")
        tqdm.write(f"Detections vs ground truth: {grid_path}")
        return metrics

    history: list[dict[str, float]] = []
    log_start = time.perf_counter()
    final_metrics: dict[str, float] = {}
    step = start_step
    pending: tuple[int, Any] | None = None

    def check(pending_step: int, metrics: Any) -> dict[str, float]:
        values = _to_float(metrics)
        if not math.isfinite(values["loss"]):
            last = checkpoints.latest_step()
            where = f"step {last} in {checkpoints.directory}" if last is not None else "none"
            raise TrainingDiverged(
                f"loss is {values['loss']} at step {pending_step}; stopping. Last good "
                f"checkpoint: {where}. Lower the learning rate or add gradient clipping "
                "(config.optimizer.grad_clip_norm)."
            )
        return values

    progress = tqdm(total=num_steps, initial=start_step, desc="train", dynamic_ncols=True)
    stopped_early = False
    try:
        with _StopRequest() as stop:
            while step < num_steps:
                batch = next(train_iter)
                state, metrics = p_train_step(state, batch)
                step += 1
                # Read the previous step's metrics while this one runs: one step of latency
                # keeps the device busy and still names the exact step that diverged.
                if pending is not None:
                    history.append(check(*pending))
                pending = (step, metrics)
                progress.update(1)
                boundary = (
                    step == num_steps
                    or stop.requested
                    or (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0)
                    or (config.eval_every_steps and step % config.eval_every_steps == 0)
                    or (config.log_every_steps and step % config.log_every_steps == 0)
                )
                if boundary:
                    history.append(check(*pending))
                    pending = None
                if config.log_every_steps and step % config.log_every_steps == 0 or (
                    boundary and history and step == num_steps
                ):
                    elapsed = time.perf_counter() - log_start
                    summary = {f"train/{k}": float(np.mean([h[k] for h in history]))
                               for k in history[0]}
                    summary["train/images_per_second"] = (
                        len(history) * config.batch_size / max(elapsed, 1e-9)
                    )
                    writer.write_scalars(step, summary)
                    progress.set_postfix(
                        loss=f"{summary['train/loss']:.4f}",
                        lr=f"{summary['train/learning_rate']:.2e}",
                        img_s=f"{summary['train/images_per_second']:.1f}",
                    )
                    history, log_start = [], time.perf_counter()
                if stop.requested:
                    save(step)
                    stopped_early = True
                    tqdm.write(f"SIGTERM: saved a checkpoint at step {step}; rerun to resume.")
                    break
                if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                    save(step)
                if config.eval_every_steps and step % config.eval_every_steps == 0 and (
                    step < num_steps
                ):
                    run_eval(step)
    except KeyboardInterrupt:
        if pending is not None:
            check(*pending)
        # Steps dispatched before the interrupt have finished or will before the save reads them.
        save(int(jax_utils.unreplicate(state.step)))
        checkpoints.wait_until_finished()
        progress.close()
        tqdm.write(f"Interrupted: saved a checkpoint at step {checkpoints.latest_step()}; "
                   "rerun the same command to resume.")
        writer.close()
        checkpoints.close()
        raise
    progress.close()
    if not stopped_early:
        if checkpoints.latest_step() != step:
            save(step)
        final_metrics = run_eval(step)
    checkpoints.wait_until_finished()
    checkpoints.close()
    writer.close()
    return final_metrics

