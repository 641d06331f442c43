"""What a workdir holds besides the logs: orbax checkpoints of the train state, and the run info
that inference needs (`python -m train.predict` reads a workdir through this module only).

  checkpoints/           orbax checkpoints of the `TrainState`, the last `max_checkpoints_to_keep`
  config.json            the config of the latest run
  dataset_info.json      class names and COCO category ids of the training data set
  backbone_weights.json  the ImageNet weight file the run started from (path, format, size,
                         sha256, what was unused), written at the fresh start of a run that has one
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from focaljax import data as data_lib
from focaljax.models import pretrained as pretrained_lib
from train import distributed

if TYPE_CHECKING:
    from train.state import TrainState

CONFIG_FILE = "config.json"
DATASET_INFO_FILE = "dataset_info.json"
BACKBONE_WEIGHTS_FILE = "backbone_weights.json"


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
