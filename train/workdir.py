"""What a workdir holds besides the logs: orbax checkpoints of the train state, and the run info
that inference needs (`python -m train.predict` reads a workdir through this module only).

  checkpoints/             orbax checkpoints of the `TrainState`, the last
                           `max_checkpoints_to_keep`
  config.json              the config of the latest run
  dataset_info.json        class names and COCO category ids of the training data set
  pretrained_weights.json  the weight file the run started from (for a ResNet's ImageNet weights:
                           path, format, size, sha256, what was unused), written at the fresh
                           start of a run that has one (`Detector.load_pretrained`'s record)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from focaljax import data as data_lib
from focaljax import detectors
from focaljax.errors import MissingFileError
from train import distributed

if TYPE_CHECKING:
    from train.state import TrainState

CONFIG_FILE = "config.json"
DATASET_INFO_FILE = "dataset_info.json"
PRETRAINED_FILE = "pretrained_weights.json"


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
    return distributed.replicated_local(restored, distributed.AXIS_NAME)


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
      MissingFileError: when `workdir` has no such checkpoint.
    """
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise MissingFileError(f"{workdir} has no checkpoints folder: expected the workdir of a "
                                "`python -m train` run")
    manager = checkpoint_manager(workdir, create=False)
    try:
        steps = manager.all_steps()
        if step is None and steps:
            step = max(steps)
        if step is None or step not in steps:
            raise MissingFileError(
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
    pretrained: dict[str, Any] | None = None,
) -> None:
    """Writes what inference needs besides the checkpoint: the config and the class names; and,
    at a fresh start from pretrained weights, where they came from (the record of
    `Detector.load_pretrained`), which a resumed run, not reading the files, leaves as it is."""
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, DATASET_INFO_FILE), "w") as f:
        json.dump(dataclasses.asdict(info), f, indent=2)
    if pretrained is not None:
        with open(os.path.join(workdir, PRETRAINED_FILE), "w") as f:
            json.dump(pretrained, f, indent=2)


def read_run_info(workdir: str) -> tuple[ml_collections.ConfigDict, data_lib.DatasetInfo]:
    """The config and data set info that `train_and_evaluate` wrote to `workdir`."""
    paths = [os.path.join(workdir, name) for name in (CONFIG_FILE, DATASET_INFO_FILE)]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        raise MissingFileError(
            f"{workdir} lacks {missing}: expected the workdir of a `python -m train` run"
        )
    with open(paths[0]) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(paths[1]) as f:
        info = json.load(f)
    for name in ("class_names", "category_ids"):
        info[name] = tuple(info[name])
    return config, data_lib.DatasetInfo(**info)


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained workdir opened for inference: its `config`, the data set `info` (classes), the
    `detector` built as the run built it, the checkpoint's `variables` and their `step`."""

    config: ml_collections.ConfigDict
    info: data_lib.DatasetInfo
    detector: detectors.Detector
    variables: dict[str, Any]
    step: int


def load_trained(workdir: str, step: int | None = None) -> TrainedRun:
    """Opens `workdir` for inference (`train.predict`, the study's Figure 4): its run info, its
    detector and the checkpoint at `step` (default: the latest). Reads no data set and no
    weight file.

    Raises:
      MissingFileError: for a workdir without run info or without that checkpoint.
    """
    config, info = read_run_info(workdir)
    # Synchronized batch norm insists on a device axis name; inference never reduces over it.
    detector = detectors.build(
        config.model, num_classes=info.num_classes,
        image_size=tuple(int(s) for s in config.dataset.image_size),
        axis_name=distributed.AXIS_NAME,
    )
    variables, step = restore_variables(workdir, step)
    return TrainedRun(config, info, detector, variables, step)
