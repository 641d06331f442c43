"""`check_config`: the config values that the trainer cannot run, found before anything is
compiled or read, each in a one-line `ConfigError` that names the field and what was expected."""

from __future__ import annotations

import ml_collections

from configs import default
from focaljax import detectors
from focaljax.errors import ConfigError
from train import compilation, evaluate, optim

# Fields of configs/default.py whose own keys are free: the detector's fields (checked by its
# builder), the data set's builder arguments and XLA's option names.
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
    """Raises ConfigError for config values the trainer cannot run, before anything is compiled.

    `num_devices` counts the devices of all `num_processes` processes: `config.batch_size` and
    `config.eval_batch_size` are global batches, split evenly over them.
    """
    missing = missing_fields(config, default.get_config())
    if missing:
        raise ConfigError(
            f"the config lacks {missing}; configs/default.py declares every field the trainer "
            "reads: start from its get_config() and override what differs"
        )
    where = (f"{num_devices} devices of the {num_processes} processes" if num_processes > 1
             else f"{num_devices} local devices")
    for name in ("batch_size", "eval_batch_size"):
        value = config[name]
        if value < 1 or value % num_devices:
            raise ConfigError(
                f"config.{name} is {value}, expected a positive multiple of the {where} "
                f"(each device gets {name} / {num_devices} images)"
            )
    if config.optimizer.name not in optim.OPTIMIZERS:
        raise ConfigError(
            f"config.optimizer.name is {config.optimizer.name!r}, expected one of "
            f"{optim.OPTIMIZERS}"
        )
    schedule = config.schedule
    if schedule.name not in optim.SCHEDULES:
        raise ConfigError(
            f"config.schedule.name is {schedule.name!r}, expected one of {optim.SCHEDULES}"
        )
    if schedule.decay_steps and schedule.decay_epochs:
        raise ConfigError(
            "config.schedule.decay_steps and decay_epochs are both set; give the learning-rate "
            "decay points in steps or in epochs, not both"
        )
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ConfigError("set config.num_train_steps or config.num_epochs to a positive value")
    if not 0 < schedule.warmup_factor <= 1:
        raise ConfigError(
            f"config.schedule.warmup_factor is {schedule.warmup_factor}, expected a value in (0, 1]"
        )
    for name in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
        if config[name] < 0:
            raise ConfigError(f"config.{name} is {config[name]}, expected >= 0 (0 turns it off)")
    if config.checkpoint_every_minutes < 0:
        raise ConfigError(
            f"config.checkpoint_every_minutes is {config.checkpoint_every_minutes}, expected >= 0 "
            "(0 turns it off)"
        )
    if config.max_checkpoints_to_keep < 1:
        raise ConfigError(
            f"config.max_checkpoints_to_keep is {config.max_checkpoints_to_keep}, expected >= 1"
        )
    evaluate.evaluator_names(config)  # Raises for an unknown or repeated evaluator.
    scores = tuple(config.eval_min_scores)
    if any(not isinstance(s, int | float) or not 0 < s <= 1 for s in scores):
        raise ConfigError(
            f"config.eval_min_scores is {scores}, expected scores in (0, 1], e.g. (0.05,)"
        )
    compilation.compiler_options(config)  # Raises for a malformed one.
    image_size = tuple(config.dataset.image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(
            f"config.dataset.image_size is {image_size}, expected (height, width) in pixels"
        )
    # The detector's own fields: losses, backbone, weights and the rest.
    detectors.check_config(config.model, image_size)
