"""The train state: what it holds, how it starts (the detector's initial variables, its
pretrained weights merged in) and its copies on the devices, as `pmap` takes them.

Below the loop (`train.train`), the evaluation and the checkpoints (`train.evaluate`,
`train.workdir`), which all pass it around.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from focaljax import detectors
from train import distributed
from train.distributed import AXIS_NAME


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


def initial_variables(
    rng: jax.Array, detector: detectors.Detector, image_size: tuple[int, int]
) -> dict[str, Any]:
    """The detector's initial variables, initialized from a dummy one-image batch."""
    height, width = image_size
    dummy = {
        "image": jnp.zeros((1, height, width, 3), jnp.float32),
        "boxes": jnp.zeros((1, 1, 4), jnp.float32),
        "labels": jnp.full((1, 1), -1, jnp.int32),
        "is_crowd": jnp.zeros((1, 1), bool),
    }
    # Compiled, rather than one eager op per initializer.
    return jax.jit(detector.init)(rng, dummy)


def create_train_state(
    rng: jax.Array,
    detector: detectors.Detector,
    tx: optax.GradientTransformation,
    image_size: tuple[int, int],
    *,
    variables: dict[str, Any] | None = None,
) -> TrainState:
    """Initial, unreplicated state from `variables`: by default `initial_variables(rng,
    detector, image_size)`; at a fresh start the trainer passes those with the detector's
    pretrained weights merged in (`Detector.load_pretrained`)."""
    if variables is None:
        variables = initial_variables(rng, detector, image_size)
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
