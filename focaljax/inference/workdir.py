"""A trained workdir, opened for inference: the files a `python -m train` run leaves and what
reads them. The one home of their names and layout: the trainer writes them through this module
(`train.workdir` adds the train state's save and restore), the `Predictor`, `train.predict`,
`train.export` and the study's Figure 4 read them through `load_trained`.

  checkpoints/             orbax checkpoints of the trainer's `TrainState` (its `params` and
                           `model_state` are the variables), the last `max_checkpoints_to_keep`
  config.json              the config of the latest run
  dataset_info.json        class names and COCO category ids of the training data set
  pretrained_weights.json  the weight file the run started from (for a ResNet's ImageNet weights:
                           path, format, size, sha256, what was unused), written at the fresh
                           start of a run that has one (`Detector.load_pretrained`'s record)

Reading needs no checkout: the config carries every field the detector is built from, and a
field added to the library after the run was made takes its default, the behaviour the run
had (`read_run_info`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from focaljax import detectors
from focaljax.data import defaults as data_defaults
from focaljax.data.dataset import DatasetInfo
from focaljax.errors import MissingFileError

CHECKPOINTS_DIR = "checkpoints"
CONFIG_FILE = "config.json"
DATASET_INFO_FILE = "dataset_info.json"
PRETRAINED_FILE = "pretrained_weights.json"

# The axis name a detector is built with for inference. Synchronized batch norm insists on one
# when it is built, but in evaluation mode it reads its running statistics and never reduces over
# the axis, so the detector runs under `jax.jit` with no mapped axis at all.
INFERENCE_AXIS_NAME = "batch"


def checkpoint_manager(
    workdir: str, *, max_to_keep: int | None = None, create: bool = True
) -> ocp.CheckpointManager:
    """The orbax manager of `workdir/checkpoints`; it saves in the background."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINTS_DIR)),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create),
        item_handlers=ocp.StandardCheckpointHandler(),
    )


def latest_checkpoint_step(workdir: str) -> int | None:
    """The step of the latest checkpoint in `workdir`; None when it has none (a fresh start).
    Creates nothing."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR)):
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
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR)):
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
    info: DatasetInfo,
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


def read_run_info(workdir: str) -> tuple[ml_collections.ConfigDict, DatasetInfo]:
    """The config and data set info that `write_run_info` wrote to `workdir`.

    Raises:
      MissingFileError: when either file is missing.
    """
    paths = [os.path.join(workdir, name) for name in (CONFIG_FILE, DATASET_INFO_FILE)]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        raise MissingFileError(
            f"{workdir} lacks {missing}: expected the workdir of a `python -m train` run"
        )
    with open(paths[0]) as f:
        config = ml_collections.ConfigDict(json.load(f))
    # A run from before a field existed gets the field's default, which is the behaviour it ran
    # with; the run's own values stay.
    add_missing_fields(config.model, detectors.default_config(config.model.name))
    # Not `builder_kwargs`: each data set builder takes its own.
    add_missing_fields(config.dataset, data_defaults.default_config(), skip=("builder_kwargs",))
    with open(paths[1]) as f:
        info = json.load(f)
    for name in ("class_names", "category_ids"):
        info[name] = tuple(info[name])
    return config, DatasetInfo(**info)


def add_missing_fields(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
                       *, skip: tuple[str, ...] = ()) -> None:
    """Adds to `config`, in place and at every depth, the fields of `defaults` that it lacks,
    except under the top-level keys `skip`.

    Examples:
      >>> config = ml_collections.ConfigDict({"a": 1, "sub": {"b": 2}})
      >>> add_missing_fields(config, ml_collections.ConfigDict({"a": 0, "c": 3, "sub": {"d": 4}}))
      >>> config.a, config.c, config.sub.b, config.sub.d
      (1, 3, 2, 4)
    """
    for key, value in defaults.items():
        if key in skip:
            continue
        if key not in config:
            config[key] = value
        elif isinstance(value, ml_collections.ConfigDict) and isinstance(
            config[key], ml_collections.ConfigDict
        ):
            add_missing_fields(config[key], value)


def image_size_of(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """`(height, width)` of the detector's input images: the config's `dataset.image_size`."""
    size = config.dataset.image_size
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def build_detector(config: ml_collections.ConfigDict, num_classes: int) -> detectors.Detector:
    """The detector of a run's `config` for `num_classes` classes, built as for training, to run
    in evaluation mode under `jax.jit` (see `INFERENCE_AXIS_NAME`)."""
    return detectors.build(
        config.model, num_classes=num_classes, image_size=image_size_of(config),
        axis_name=INFERENCE_AXIS_NAME,
    )


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained workdir opened for inference: its `config`, the data set `info` (classes), the
    `detector` built as the run built it, the checkpoint's `variables` and their `step`."""

    config: ml_collections.ConfigDict
    info: DatasetInfo
    detector: detectors.Detector
    variables: dict[str, Any]
    step: int


def load_trained(workdir: str, step: int | None = None) -> TrainedRun:
    """Opens `workdir` for inference: its run info, its detector and the checkpoint at `step`
    (default: the latest). Reads no data set and no weight file.

    Raises:
      MissingFileError: for a workdir without run info or without that checkpoint.
    """
    config, info = read_run_info(workdir)
    detector = build_detector(config, info.num_classes)
    variables, step = restore_variables(workdir, step)
    return TrainedRun(config, info, detector, variables, step)
