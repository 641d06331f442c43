"""The `Detector`: a network, its loss and its post-processing, as one value the trainer consumes.

The trainer (`train/train.py`) knows nothing about any particular detector. It initializes
`Detector.init`, runs `Detector.apply` in its pmapped steps, differentiates `Detector.loss_fn` and
calls `Detector.postprocess` for evaluation. A RetinaNet, a Faster R-CNN whose RoI head needs the
ground truth in the training forward pass, or a RetinaNet trained with another loss only differ in
the values of these fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax

Batch = Mapping[str, jax.Array]
Outputs = Any  # The network's output pytree, whatever `module` returns.


class LossFn(Protocol):
    def __call__(
        self,
        outputs: Outputs,
        batch: Batch,
        *,
        axis_name: str | None = None,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


class PostprocessFn(Protocol):
    def __call__(self, outputs: Outputs, batch: Batch) -> dict[str, jax.Array]: ...


def images_only(batch: Batch, train: bool) -> dict[str, jax.Array]:
    """The default `Detector.model_inputs`: the network sees the images and nothing else."""
    del train
    return {"images": batch["image"]}


@dataclasses.dataclass(frozen=True)
class Detector:
    """A detector as the trainer sees it.

    Attributes:
      name: registry name, used in logs.
      module: a Flax Linen module; `module.apply(variables, **model_inputs(batch, train),
        train=train)` returns the outputs pytree.
      loss_fn: `loss_fn(outputs, batch, *, axis_name=None, rng=None) -> (loss, metrics)`. Pure;
        `batch` is one device's slice (no device axis). Under `pmap`, `axis_name` is the device
        axis and the loss must be scaled so that the `lax.pmean` of the per-device losses is the
        loss of the global batch (see `focaljax.losses.positive_normalizer`). `rng` is a key for
        losses that sample (e.g. a standard RPN's 256 anchors); others ignore it. `metrics` are
        scalars that the trainer averages over devices with `lax.pmean`.
      postprocess: `postprocess(outputs, batch) -> {"boxes" [B, K, 4] xyxy in resized-image
        pixels, "scores" [B, K], "classes" [B, K] int32, "num_valid" [B] int32}`, fixed shapes.
      model_inputs: `model_inputs(batch, train) -> kwargs` of `module.__call__` other than
        `train`. Default: `{"images": batch["image"]}`; a two-stage detector that samples RoIs
        against the ground truth also passes the boxes when `train` is True.
      mutable_collections: variable collections that the training forward pass updates
        (`("batch_stats",)` for batch norm). The trainer averages them over devices after each
        step; every other non-`"params"` collection (frozen batch-norm statistics) stays fixed.
      rng_collections: names of the PRNG streams the module needs in training (e.g.
        `("dropout",)`); the trainer derives a fresh key for each from the step and device.
    """

    name: str
    module: nn.Module
    loss_fn: LossFn
    postprocess: PostprocessFn
    model_inputs: Callable[[Batch, bool], dict[str, jax.Array]] = images_only
    mutable_collections: Sequence[str] = ()
    rng_collections: Sequence[str] = ()

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
