"""Detectors: a network, its loss and its post-processing, built by name from a config.

`build(config.model, num_classes=..., image_size=...)` looks `config.model.name` up in `BUILDERS`.
A new detector is one builder `(config, *, num_classes, image_size, axis_name) -> Detector` added
to `BUILDERS`; the trainer needs no change. `check_config(config.model, image_size)` runs the
builder's config check alone, before the data set (and so the number of classes) is known, for
the detectors that register one in `CONFIG_CHECKS`; the builder runs it again in any case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from focaljax.detectors import faster_rcnn, retinanet
from focaljax.detectors.detector import Detector, LossOutput, images_only, no_evaluators
from focaljax.detectors.faster_rcnn import build_faster_rcnn
from focaljax.detectors.retinanet import build_retinanet
from focaljax.errors import ConfigError

BUILDERS: dict[str, Callable[..., Detector]] = {
    "retinanet": build_retinanet,
    "faster_rcnn": build_faster_rcnn,
}

# Every field of each detector's model config at its default. A field added later defaults to
# the behaviour from before it, so a run's config written before the field existed means the
# default (`focaljax.inference.workdir.read_run_info` fills such fields in).
DEFAULT_CONFIGS: dict[str, Callable[[], Any]] = {
    "retinanet": retinanet.default_config,
    "faster_rcnn": faster_rcnn.default_config,
}

CONFIG_CHECKS: dict[str, Callable[[Any, tuple[int, int]], None]] = {
    "retinanet": retinanet.check_config,
    "faster_rcnn": faster_rcnn.check_config,
}


def _known(name: str) -> None:
    if name not in BUILDERS:
        raise ConfigError(f"unknown model {name!r}, expected one of {sorted(BUILDERS)}")


def default_config(name: str) -> Any:
    """The model config of the detector `name` with every field at its default."""
    _known(name)
    return DEFAULT_CONFIGS[name]()


def check_config(config: Any, image_size: tuple[int, int]) -> None:
    """Raises ConfigError for an unknown `config.name` or a model config its detector's check
    (`CONFIG_CHECKS`) rejects for `image_size` inputs; nothing is built."""
    _known(config.name)
    if config.name in CONFIG_CHECKS:
        CONFIG_CHECKS[config.name](config, tuple(image_size))


def build(
    config: Any,
    *,
    num_classes: int,
    image_size: tuple[int, int],
    axis_name: str | None = None,
) -> Detector:
    """The `Detector` named `config.name`, for `num_classes` classes and `image_size` inputs.

    Args:
      config: the model config (`config.model` of a `configs/*.py`), with at least `name`.
      num_classes: foreground classes of the data set.
      image_size: `(height, width)` of the padded input images.
      axis_name: the pmap device axis, for cross-device normalizers and synchronized batch norm.

    Raises:
      ConfigError: for an unknown name (the message lists the known ones) or a config the
        detector rejects.
    """
    name = config.name
    _known(name)
    return BUILDERS[name](
        config, num_classes=num_classes, image_size=tuple(image_size), axis_name=axis_name
    )


__all__ = [
    "BUILDERS",
    "CONFIG_CHECKS",
    "DEFAULT_CONFIGS",
    "Detector",
    "LossOutput",
    "build",
    "build_faster_rcnn",
    "build_retinanet",
    "check_config",
    "images_only",
    "no_evaluators",
]
