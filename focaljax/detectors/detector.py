"""The `Detector`: a network, its loss and its post-processing, as one value the trainer consumes.

The trainer (`train/train.py`) knows nothing about any particular detector. It initializes
`Detector.init` (with `Detector.load_pretrained`'s weights merged in at a fresh start), runs
`Detector.apply` in its pmapped steps, differentiates `Detector.loss_fn`, leaves what
`Detector.frozen` marks alone, and calls `Detector.postprocess` for evaluation. A RetinaNet, a
Faster R-CNN whose RoI head needs the ground truth in the training forward pass, or a RetinaNet
trained with another loss only differ in the values of these fields.

The loss is a named dict of terms (detectron2's habit): the trainer minimizes their sum and logs
each one, so nothing it reads is a hidden key. A loss that keeps state between steps (detectron2's
moving-average normalizer) gets it from `Detector.initial_loss_state`, receives it in `loss_fn` and
returns the next one; the trainer carries it in its train state and checkpoints it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

# config.model.dtype -> the computation dtype of a detector's network.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

Batch = Mapping[str, jax.Array]
Outputs = Any  # The network's output pytree, whatever `module` returns.


class LossOutput(NamedTuple):
    """What `Detector.loss_fn` returns.

    Attributes:
      terms: the named loss terms (e.g. `{"cls": ..., "box": ...}`), scalars, each already
        normalized over the global batch; the trainer minimizes their sum and logs each as
        `loss_{name}`.
      metrics: other scalars to log (counts of positives ...); the trainer averages them over
        devices.
      state: the loss state for the next step, with the structure of the one received.
    """

    terms: dict[str, jax.Array]
    metrics: dict[str, jax.Array]
    state: Any


class LossFn(Protocol):
    def __call__(
        self,
        outputs: Outputs,
        batch: Batch,
        *,
        state: Any,
        axis_name: str | None = None,
        rng: jax.Array | None = None,
    ) -> LossOutput: ...


class PostprocessFn(Protocol):
    def __call__(self, outputs: Outputs, batch: Batch) -> dict[str, jax.Array]: ...


def optional(value: str | None) -> str | None:
    """A config string that may be off: `None`, `""` or `"none"` -> None (ml_collections cannot
    override a None field from the command line, so configs say "none")."""
    return None if value in (None, "", "none") else value


def images_only(batch: Batch, train: bool) -> dict[str, jax.Array]:
    """The default `Detector.model_inputs`: the network sees the images and nothing else."""
    del train
    return {"images": batch["image"]}


def no_pretrained(variables: dict[str, Any]) -> tuple[dict[str, Any], None]:
    """The default `Detector.load_pretrained`: the initial variables as they are."""
    return variables, None


def nothing_frozen(tree: Any) -> Any:
    """The default `Detector.frozen`: every leaf trains."""
    return jax.tree.map(lambda _: False, tree)


def no_evaluators(ground_truth: Mapping[str, Any]) -> tuple[()]:
    """The default `Detector.evaluators`: only the trainer's COCO (and VOC) detection metrics."""
    del ground_truth
    return ()


@dataclasses.dataclass(frozen=True)
class Detector:
    """A detector as the trainer sees it.

    Attributes:
      name: registry name, used in logs.
      module: a Flax Linen module; `module.apply(variables, **model_inputs(batch, train),
        train=train)` returns the outputs pytree.
      loss_fn: `loss_fn(outputs, batch, *, state, axis_name=None, rng=None) -> LossOutput`.
        Pure; `batch` is one device's slice (no device axis). Under `pmap`, `axis_name` is the
        device axis and every term must be scaled so that the `lax.pmean` of the per-device terms
        is the term of the global batch (see `focaljax.losses.positive_normalizer`). `rng` is a
        key for losses that sample (e.g. a standard RPN's 256 anchors); others ignore it. `state`
        is the loss state (`initial_loss_state` at step 0); the returned state must be the same
        on every device (reduce over `axis_name` what it is computed from).
      postprocess: `postprocess(outputs, batch) -> {"boxes" [B, K, 4] xyxy in resized-image
        pixels, "scores" [B, K], "classes" [B, K] int32, "num_valid" [B] int32, ...}`, fixed
        shapes. Extra outputs are allowed (a Faster R-CNN's proposals) and reach the evaluators.
      box_outputs: the keys of `postprocess`'s outputs that are `[B, K, 4]` boxes in
        resized-image pixels; the trainer maps each back to original pixels before evaluation.
      evaluators: `evaluators(ground_truth) -> [Evaluator, ...]`, the detector's own evaluators
        (see `focaljax.evaluation.Evaluator`) besides the COCO detection metrics, built from the
        COCO-format ground truth of the evaluation split; default none.
      initial_loss_state: the loss state at step 0 (a pytree; default `{}`, no state).
      model_inputs: `model_inputs(batch, train) -> kwargs` of `module.__call__` other than
        `train`. Default: `{"images": batch["image"]}`; a two-stage detector that samples RoIs
        against the ground truth also passes the boxes when `train` is True.
      mutable_collections: variable collections that the training forward pass updates
        (`("batch_stats",)` for batch norm). The trainer averages them over devices after each
        step; every other non-`"params"` collection (frozen batch-norm statistics) stays fixed.
      rng_collections: names of the PRNG streams the module needs in training (e.g.
        `("dropout",)`); the trainer derives a fresh key for each from the step and device.
      load_pretrained: `load_pretrained(variables) -> (variables, record)`, called by the
        trainer on the initial variables at a fresh start (never on resuming): the variables
        with pretrained weights merged in, and `record`, plain JSON-able data on where they
        came from, with a `summary` string for the log (the trainer writes it to the workdir),
        or None. It reads the weight files and raises `focaljax.errors.ConfigError` for one that
        cannot be used. Default: the variables unchanged, None.
      frozen: `frozen(tree) -> tree of bools`, True for the leaves that training keeps fixed,
        for `tree` the `"params"` or the other variable collections (keyed by module names, as
        the variables are): the optimizer leaves frozen params alone (no update, no weight
        decay, no optimizer state) and the trainer keeps frozen statistics. Default: nothing.
    """

    name: str
    module: nn.Module
    loss_fn: LossFn
    postprocess: PostprocessFn
    model_inputs: Callable[[Batch, bool], dict[str, jax.Array]] = images_only
    mutable_collections: Sequence[str] = ()
    rng_collections: Sequence[str] = ()
    box_outputs: Sequence[str] = ("boxes",)
    evaluators: Callable[[Mapping[str, Any]], Sequence[Any]] = no_evaluators
    initial_loss_state: Any = dataclasses.field(default_factory=dict)
    load_pretrained: Callable[
        [dict[str, Any]], tuple[dict[str, Any], dict[str, Any] | None]
    ] = no_pretrained
    frozen: Callable[[Any], Any] = nothing_frozen

    def init(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        """Initial variables (`"params"` and any other collection) from an example batch."""
        return self.module.init({"params": rng}, **self.model_inputs(batch, False), train=False)

    def apply(
        self,
        variables: Mapping[str, Any],
        batch: Batch,
        *,
        train: bool,
        rng: jax.Array | None = None,
    ) -> tuple[Outputs, dict[str, Any]]:
        """Runs the network: `(outputs, updated mutable collections)`.

        The updated collections are `{}` in evaluation mode and when `mutable_collections` is
        empty. `rng` is split into the `rng_collections` streams in training.
        """
        rngs = None
        if train and self.rng_collections:
            if rng is None:
                raise ValueError(
                    f"detector {self.name!r} needs an rng in training for {self.rng_collections}"
                )
            keys = jax.random.split(rng, len(self.rng_collections))
            rngs = dict(zip(self.rng_collections, keys, strict=True))
        inputs = self.model_inputs(batch, train)
        if train and self.mutable_collections:
            return self.module.apply(
                variables, **inputs, train=True, rngs=rngs, mutable=list(self.mutable_collections)
            )
        return self.module.apply(variables, **inputs, train=train, rngs=rngs), {}
