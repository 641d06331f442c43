"""`check_config`: the config values that the trainer cannot run, found before anything is
compiled or read, each in a one-line ValueError that names the field and what was expected."""

from __future__ import annotations

import ml_collections

from configs import default
from focaljax import detectors
from focaljax.models import pretrained as pretrained_lib
from focaljax.models import resnet as resnet_lib
from train import compilation, evaluate, optim

# The fields of config.model that the trainer reads for any detector ("" and 0 for one without a
# ResNet); the detector's builder reads the rest.
MODEL_FIELDS = ("backbone_weights", "backbone_weights_format", "freeze_at")
# Fields of configs/default.py whose own keys are free: the detector's fields (checked by its
# builder, and MODEL_FIELDS here), the data set's builder arguments and XLA's option names.
_OPEN_FIELDS = ("model", "dataset.builder_kwargs", "compiler_options")


def missing_fields(
    config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = ""
) -> list[str]:
    """The dotted names of the fields of `reference` (configs/default.py's) that `config` lacks."""
    missing = []
    for name, value in reference.items():
        dotted = prefix + name
        if name not in config:
            missing.append(dotted)
        elif (isinstance(value, ml_collections.ConfigDict) and dotted not in _OPEN_FIELDS
              and isinstance(config[name], ml_collections.ConfigDict)):
            missing += missing_fields(config[name], value, f"{dotted}.")
    return missing


def check_config(
    config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1
) -> None:
    """Raises ValueError for config values the trainer cannot run, before anything is compiled.

    `num_devices` counts the devices of all `num_processes` processes: `config.batch_size` and
    `config.eval_batch_size` are global batches, split evenly over them.
    """
    missing = missing_fields(config, default.get_config())
    if missing:
        raise ValueError(
            f"the config lacks {missing}; configs/default.py declares every field the trainer "
            "reads: start from its get_config() and override what differs"
        )
    where = (f"{num_devices} devices of the {num_processes} processes" if num_processes > 1
             else f"{num_devices} local devices")
    for name in ("batch_size", "eval_batch_size"):
        value = config[name]
        if value < 1 or value % num_devices:
            raise ValueError(
                f"config.{name} is {value}, expected a positive multiple of the {where} "
                f"(each device gets {name} / {num_devices} images)"
            )
    if config.optimizer.name not in optim.OPTIMIZERS:
        raise ValueError(
            f"config.optimizer.name is {config.optimizer.name!r}, expected one of "
            f"{optim.OPTIMIZERS}"
        )
    schedule = config.schedule
    if schedule.name not in optim.SCHEDULES:
        raise ValueError(
            f"config.schedule.name is {schedule.name!r}, expected one of {optim.SCHEDULES}"
        )
    if schedule.decay_steps and schedule.decay_epochs:
        raise ValueError(
            "config.schedule.decay_steps and decay_epochs are both set; give the learning-rate "
            "decay points in steps or in epochs, not both"
        )
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ValueError("set config.num_train_steps or config.num_epochs to a positive value")
    if not 0 < schedule.warmup_factor <= 1:
        raise ValueError(
            f"config.schedule.warmup_factor is {schedule.warmup_factor}, expected a value in (0, 1]"
        )
    for name in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
        if config[name] < 0:
            raise ValueError(f"config.{name} is {config[name]}, expected >= 0 (0 turns it off)")
    if config.max_checkpoints_to_keep < 1:
        raise ValueError(
            f"config.max_checkpoints_to_keep is {config.max_checkpoints_to_keep}, expected >= 1"
        )
    voc_metric = config.voc_metric
    if voc_metric and voc_metric not in evaluate.VOC_METRICS:
        raise ValueError(
            f"config.voc_metric is {voc_metric!r}, expected '' (off) or one of "
            f"{tuple(evaluate.VOC_METRICS)}"
        )
    scores = tuple(config.eval_min_scores)
    if any(not isinstance(s, int | float) or not 0 < s <= 1 for s in scores):
        raise ValueError(
            f"config.eval_min_scores is {scores}, expected scores in (0, 1], e.g. (0.05,)"
        )
    compilation.compiler_options(config)  # Raises for a malformed one.
    image_size = tuple(config.dataset.image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(
            f"config.dataset.image_size is {image_size}, expected (height, width) in pixels"
        )
    model = config.model
    missing = [name for name in MODEL_FIELDS if name not in model]
    if missing:
        raise ValueError(
            f"config.model lacks {missing}, which the trainer reads for every detector; declare "
            "them as configs/default.py does ('' and 0 for a detector without a ResNet)"
        )
    if model.backbone_weights_format not in ("", *pretrained_lib.FORMATS):
        raise ValueError(
            f"config.model.backbone_weights_format is {model.backbone_weights_format!r}, "
            f"expected '' (detected from the file) or one of {pretrained_lib.FORMATS}"
        )
    if not 0 <= model.freeze_at <= resnet_lib.MAX_FREEZE_AT:
        raise ValueError(
            f"config.model.freeze_at is {model.freeze_at}, expected 0 (nothing frozen), 1 (the "
            f"stem) ... {resnet_lib.MAX_FREEZE_AT} (the stem and stages C2..C"
            f"{resnet_lib.MAX_FREEZE_AT})"
        )
    detectors.check_config(model, image_size)  # The losses' hyper-parameters among the rest.
