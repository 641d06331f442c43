"""Shared by the data tests: a small prepared "shapes" data set written under pytest's tmp dir,
and complete dataset configs for `focaljax.data.build`."""

import pytest
import tensorflow_datasets as tfds

from focaljax.data import Shapes, default_config, shapes_config

# Landscape images, so that resizing has an aspect ratio to keep; 11 validation images, so that
# neither the batches nor two processes divide the split evenly.
SMALL_SETTINGS = {"image_size": (48, 64), "num_train": 24, "num_validation": 11, "seed": 3}


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def small_builder(small_data_dir) -> Shapes:
    builder = Shapes(config=shapes_config(**SMALL_SETTINGS), data_dir=small_data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder


def dataset_config(**overrides) -> dict:
    """A complete dataset config, as `focaljax.data.build` requires: `default_config()`'s (COCO)
    with `overrides`, each of which must be one of its fields."""
    config = default_config().to_dict()
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise KeyError(f"focaljax.data.default_config() declares no dataset fields {unknown}")
    return {**config, **overrides}
