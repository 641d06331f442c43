"""The data set registry: a name -> a factory of its TFDS builder; `build(config)` makes the
`DetectionDataset` that a training config's `dataset` part names (the package docstring lists
the fields). `register` adds a data set of your own."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import tensorflow_datasets as tfds

from focaljax.data.coco import CATEGORY_IDS as COCO_CATEGORY_IDS
from focaljax.data.coco import Coco2017
from focaljax.data.coco_folder import CocoFolder
from focaljax.data.dataset import AUGMENTATION_FIELDS, DetectionDataset
from focaljax.data.shapes import Shapes, shapes_config
from focaljax.data.voc import VocDetection
from focaljax.errors import ConfigError

# A factory makes the (possibly unprepared) TFDS builder from the config, and says which COCO
# category id each contiguous label has (None: the builder's `info.metadata["category_ids"]` once
# prepared, if it records them, else label + 1).
BuilderFactory = Callable[[Mapping], tuple[tfds.core.DatasetBuilder, Sequence[int] | None]]
_FACTORIES: dict[str, BuilderFactory] = {}
# Every field that `build` and the data set's iterators read (the package docstring).
FIELDS = (
    "name", "image_size", "max_boxes", "data_dir", "train_split", "eval_split", "horizontal_flip",
    "scale_jitter", "shuffle_buffer_size", "builder_kwargs",
    *AUGMENTATION_FIELDS, "repeat_factor_threshold",
)


def register(name: str) -> Callable[[BuilderFactory], BuilderFactory]:
    """Registers `factory(config) -> (builder, category_ids)` under `name` for `build`."""

    def decorator(factory: BuilderFactory) -> BuilderFactory:
        if name in _FACTORIES:
            raise ValueError(f"a data set named {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return decorator


def registered_names() -> list[str]:
    return sorted(_FACTORIES)


@register("shapes")
def _shapes_builder(config: Mapping) -> tuple[tfds.core.DatasetBuilder, None]:
    kwargs = _to_dict(config["builder_kwargs"] or {})
    if "config" in kwargs:
        if len(kwargs) > 1:
            raise ConfigError(
                f"builder_kwargs {kwargs}: give either 'config' (one of "
                f"{[c.name for c in Shapes.BUILDER_CONFIGS]}) or the settings of shapes_config"
            )
        builder_config = kwargs["config"]
    else:
        builder_config = shapes_config(**kwargs)
    # ml_collections configs spell "TFDS's default" as "", which TFDS would take as the cwd.
    return Shapes(config=builder_config, data_dir=config["data_dir"] or None), None


@register("coco")
def _coco_builder(config: Mapping) -> tuple[tfds.core.DatasetBuilder, tuple[int, ...]]:
    kwargs = _builder_kwargs(config, ("source_dir",))
    return Coco2017(data_dir=config["data_dir"] or None, **kwargs), COCO_CATEGORY_IDS


@register("voc")
def _voc_builder(config: Mapping) -> tuple[tfds.core.DatasetBuilder, None]:
    kwargs = _builder_kwargs(config, ("source_dir", "config"))
    return VocDetection(data_dir=config["data_dir"] or None, **kwargs), None


@register("coco_folder")
def _coco_folder_builder(config: Mapping) -> tuple[tfds.core.DatasetBuilder, None]:
    kwargs = _builder_kwargs(config, ("name", "splits"))
    if "name" not in kwargs:
        raise ConfigError(f"builder_kwargs {kwargs}: a coco_folder data set needs a 'name'")
    # The category ids come from the JSON files, recorded in the builder's metadata.
    return CocoFolder(
        config=kwargs["name"], splits=kwargs.get("splits"), data_dir=config["data_dir"] or None
    ), None


def build(config: Mapping) -> DetectionDataset:
    """The data set `config.name` with the pipeline settings of `config` (module docstring).

    Nothing is read or generated until the returned data set is first used.

    Raises:
      ValueError: naming every field of `default_config()` that `config` lacks, or for an
        unregistered `config.name`.
    """
    missing = [field for field in FIELDS if field not in config]
    if missing:
        raise ConfigError(
            f"the dataset config lacks {missing}, which focaljax.data.build reads; "
            "focaljax.data.default_config() declares every dataset field: start from it"
        )
    name = config["name"]
    if name not in _FACTORIES:
        raise ConfigError(f"unknown data set {name!r}; registered: {registered_names()}")
    builder, category_ids = _FACTORIES[name](config)
    return DetectionDataset(config, builder, category_ids)


def _to_dict(value) -> dict:
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def _builder_kwargs(config: Mapping, allowed: Sequence[str]) -> dict:
    """`config.builder_kwargs` as a dict, with "" (an unset path in ml_collections) as absent."""
    kwargs = {k: v for k, v in _to_dict(config["builder_kwargs"] or {}).items() if v != ""}
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"builder_kwargs of {config['name']!r} has {unknown}, expected some of {list(allowed)}"
        )
    return kwargs
