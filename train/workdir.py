"""The train state's checkpoints in a workdir: saved in the background and restored for resuming.

What else a workdir holds (config.json, dataset_info.json, pretrained_weights.json, the
checkpoints' folder) and how it is read for inference has its home in the library,
`focaljax.inference.workdir` (installed, so that `focaljax.Predictor` reads a workdir without a
checkout); this module re-exports those names for the trainer, `train.predict` and
`train.export`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orbax.checkpoint as ocp

from focaljax.inference.workdir import (
    CONFIG_FILE,
    DATASET_INFO_FILE,
    PRETRAINED_FILE,
    TrainedRun,
    checkpoint_manager,
    latest_checkpoint_step,
    load_trained,
    read_run_info,
    restore_variables,
    write_run_info,
)
from train import distributed

if TYPE_CHECKING:
    from train.state import TrainState

__all__ = [
    "CONFIG_FILE",
    "DATASET_INFO_FILE",
    "PRETRAINED_FILE",
    "TrainedRun",
    "checkpoint_manager",
    "latest_checkpoint_step",
    "load_trained",
    "read_run_info",
    "restore_train_state",
    "restore_variables",
    "save_train_state",
    "write_run_info",
]


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
    return distributed.replicated_local(restored, distributed.AXIS_NAME)
