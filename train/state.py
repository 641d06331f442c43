"""The train state: what it holds, how it starts (the detector's initial variables, ImageNet
weights merged in) and its copies on the devices, as `pmap` takes them.

Below the loop (`train.train`), the evaluation and the checkpoints (`train.evaluate`,
`train.workdir`), which all pass it around.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from focaljax import data as data_lib
from focaljax import detectors
from focaljax.models import pretrained as pretrained_lib
from focaljax.models import resnet as resnet_lib
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
