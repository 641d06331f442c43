"""Training and evaluation loop for any `focaljax.detectors.Detector` on any `focaljax.data` set.

`train_and_evaluate(config, workdir)` does everything a run needs: it builds the data set and the
detector named in the config, restores the latest checkpoint of `workdir` if there is one, runs
the pmapped `train_step` with periodic checkpoints, logs, evaluations (COCO's metrics, plus PASCAL
VOC's mAP when `config.evaluators` names it) and detection images, and returns the final evaluation
metrics. This module holds the train state, the steps and the loop; the rest of a run has its own
module: `checks` (the config), `optim` (optimizer and schedule), `evaluate`, `workdir`
(checkpoints and run info), `compilation` (`config.compiler_options`), `distributed` (what
several processes change) and `summary` (logs).

The model, loss and data set are all picked by name from `config`; nothing here knows RetinaNet,
a ResNet or the shapes data set. Of `config.model` the trainer itself reads only `name`: the
detector brings its pretrained weights (`Detector.load_pretrained`, called at a fresh start) and
says what stays frozen (`Detector.frozen`: the optimizer and the statistics updates leave it
alone). A workdir holds, besides what `train.workdir` describes (checkpoints, config.json,
dataset_info.json, pretrained_weights.json):

  anchor_coverage.png    the anchor-coverage report's picture (`config.anchor_coverage_images`)
  metrics.jsonl          one JSON object per logging step or evaluation
  events.out.tfevents.*  the same scalars, and the detection grids, for TensorBoard
  detections_step_N.png  predicted (solid) and ground-truth (dashed) boxes on validation images
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import jax_utils
from jax import lax
from tqdm import tqdm

from focaljax import data as data_lib
from focaljax import detectors, evaluation
from focaljax.detectors import anchor_coverage
from train import checks, compilation, distributed, optim
from train import evaluate as evaluate_lib
from train import workdir as workdir_lib
from train.distributed import AXIS_NAME, report
from train.state import TrainState, create_train_state, initial_variables, replicate
from train.summary import NullWriter, SummaryWriter

ANCHOR_COVERAGE_PICTURE = "anchor_coverage.png"


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
    averaged over devices so that all replicas stay identical; all of these means are one
    all-reduce (`distributed.pmean`). The step's randomness is a function
    of `rng`, the step number and the device, so a resumed run draws what it would have drawn.
    The statistics that `detector.frozen` marks are kept as they were.
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
    metrics = {
        **{f"loss_{name}": term for name, term in result.terms.items()},
        **result.metrics,
        "loss": loss,
    }
    # One all-reduce for everything the replicas must agree on. The detector reduces what its
    # loss state is computed from; the mean keeps the replicas equal.
    grads, updates, loss_state, metrics = distributed.pmean(
        (grads, updates, result.state, metrics), AXIS_NAME
    )
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # Frozen parts normalize in evaluation mode and return their statistics unchanged, but the
    # mean of n equal values over devices can round ((x + x + x) / 3 is not always x).
    frozen = detector.frozen(state.model_state)
    model_state = jax.tree.map(
        lambda is_frozen, old, new: old if is_frozen else new,
        frozen, state.model_state, {**state.model_state, **updates},
    )
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        model_state=model_state,
        opt_state=opt_state,
        loss_state=loss_state,
    )
    metrics = {
        **metrics,
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
      The final metrics of `evaluate.build_evaluators`: those of `config.evaluators` (COCO's AP,
      AP50, AP75, APs, APm, APl, AR...; VOC's mAP under its `focaljax.evaluation.VOC_METRICS`
      name), and
      those of the detector's own evaluators (a Faster R-CNN's AR@100, AR@300, AR@1000).

    Raises:
      ConfigError: for a config that cannot run, before anything is compiled; for pretrained
        weights that cannot be read or do not fit the detector (`Detector.load_pretrained`, e.g.
        `config.model.backbone_weights`), before the workdir is made; for a VOC evaluator
        (`config.evaluators`) on a data set without VOC's "difficult" flags.
      TrainingDivergedError: when the loss or the gradient norm becomes NaN or Inf; the message
        names the step and the last good checkpoint, and nothing is saved after it.
      TrainingInterruptedError: after SIGTERM or Ctrl-C, once the checkpoint of the current step
        is saved.
    """
    checks.check_config(config, jax.device_count(), jax.process_count())
    resume_step = workdir_lib.latest_checkpoint_step(workdir)
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
    # Read once for every evaluation, and now: a VOC evaluator on a data set without VOC's
    # "difficult" flags stops the run before it trains.
    truth = evaluate_lib.read_ground_truth(dataset, config)
    image_size = tuple(int(s) for s in config.dataset.image_size)
    detector = detectors.build(
        config.model, num_classes=info.num_classes, image_size=image_size, axis_name=AXIS_NAME
    )
    # TFDS resolves split expressions such as VOC's "train+validation" to their size.
    num_train_examples = dataset.builder.info.splits[config.dataset.train_split].num_examples
    num_steps, decay_steps = optim.resolve_steps(config, num_train_examples)
    learning_rate_fn = optim.create_learning_rate_fn(config, num_steps, decay_steps)
    tx = optim.create_optimizer(config, learning_rate_fn, frozen=detector.frozen)

    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = initial_variables(init_rng, detector, image_size)
    pretrained = None
    if resume_step is None:
        # At a fresh start only, before the workdir exists: every checkpoint holds the merged
        # weights, so a resumed run (and train.predict) never needs the files.
        variables, pretrained = detector.load_pretrained(variables)
        if pretrained is not None:
            report(f"Pretrained weights: {pretrained['summary']}")
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_main():
        workdir_lib.write_run_info(workdir, config, info, pretrained=pretrained)
        if (resume_step is None and config.anchor_coverage_images
                and config.model.name in anchor_coverage.DETECTORS):
            anchor_coverage.report_anchor_coverage(
                config, dataset.builder, max_images=config.anchor_coverage_images,
                picture=os.path.join(workdir, ANCHOR_COVERAGE_PICTURE), print_fn=report,
            )
    state = replicate(create_train_state(init_rng, detector, tx, image_size, variables=variables))
    checkpoints = workdir_lib.checkpoint_manager(
        workdir, max_to_keep=config.max_checkpoints_to_keep
    )
    writer = SummaryWriter(workdir) if distributed.is_main() else NullWriter()
    try:
        if resume_step is not None:
            state = workdir_lib.restore_train_state(checkpoints, resume_step, state)
            report(f"Resuming from the checkpoint at step {resume_step} in {workdir}")
        return _train_loop(
            config, workdir, state,
            dataset=dataset, truth=truth, detector=detector, tx=tx,
            learning_rate_fn=learning_rate_fn, step_rng=step_rng, num_steps=num_steps,
            checkpoints=checkpoints, writer=writer,
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
    truth: evaluation.GroundTruth,
    detector: detectors.Detector,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    step_rng: jax.Array,
    num_steps: int,
    checkpoints: ocp.CheckpointManager,
    writer: SummaryWriter,
) -> dict[str, float]:
    options = compilation.compiler_options(config)
    p_train_step = compilation.with_compiler_options(
        jax.pmap(
            functools.partial(
                train_step, detector=detector, tx=tx, learning_rate_fn=learning_rate_fn,
                rng=step_rng,
            ),
            axis_name=AXIS_NAME,
            donate_argnums=(0,),
        ),
        options,
    )
    p_eval_step = compilation.with_compiler_options(
        jax.pmap(functools.partial(eval_step, detector=detector), axis_name=AXIS_NAME),
        options,
    )
    step = int(state.step[0])
    per_device_batch = config.batch_size // jax.device_count()
    # The iterator starts at the batch of `step`, so a resumed run sees the data it would have;
    # it prints the summary of its repeat factors, if any, once here.
    train_iter = jax_utils.prefetch_to_device(
        dataset.train_iterator(per_device_batch, config.seed, step, print_fn=report), 2,
        axis_name=AXIS_NAME,
    )

    def save(step: int) -> None:
        workdir_lib.save_train_state(checkpoints, step, state)

    def run_eval(step: int) -> dict[str, float]:
        grid_path = os.path.join(workdir, f"detections_step_{step}.png")
        metrics, grid = evaluate_lib.evaluate(
            p_eval_step, state, dataset, config, detector=detector, truth=truth,
            grid_path=grid_path,
        )
        writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        if grid is not None:
            writer.write_image(step, "eval/detections", grid)
        report(f"Evaluation at step {step}:\n{evaluate_lib.format_metrics_table(metrics)}")
        report(f"Detections vs ground truth: {grid_path}")
        return metrics

    def every(interval: int) -> bool:
        return interval > 0 and step % interval == 0

    last_save = time.monotonic()

    def save_is_due() -> bool:
        """Whether `config.checkpoint_every_minutes` have passed since the last save, by process
        0's clock (the processes must agree on every save)."""
        minutes = config.checkpoint_every_minutes
        return minutes > 0 and distributed.main_decides(
            time.monotonic() - last_save >= 60 * minutes)

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
            save_now = (every(config.checkpoint_every_steps) or step == num_steps
                        or (log_now and save_is_due()))
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
                last_save = time.monotonic()
            if stop.signum is not None:
                checkpoints.wait_until_finished()
                raise TrainingInterruptedError(step, stop.signum)
            if eval_now:
                run_eval(step)
            if save_now or eval_now:
                throughput.restart()
    return run_eval(step)
