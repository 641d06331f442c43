"""Shared by the trainer tests: the "tiny" shapes data set prepared under pytest's tmp dir, a tiny
RetinaNet config over it, and one finished training run."""

from __future__ import annotations

import json
import shutil

import jax
import ml_collections
import pytest

from configs import shapes_retinanet
from focaljax import data as data_lib
from train import train


def tiny_config(data_dir: str) -> ml_collections.ConfigDict:
    """The default shapes config shrunk to seconds on a CPU: 64x64 images, a two-level FPN with
    16 channels, 8 images per step (2 on each of the 4 test devices), 4 steps."""
    config = shapes_retinanet.get_config()
    config.dataset.builder_kwargs = ml_collections.ConfigDict({"config": "tiny"})
    config.dataset.data_dir = data_dir
    config.dataset.image_size = (64, 64)
    model = config.model
    model.norm = "sync_bn"
    model.min_level, model.max_level = 3, 4
    model.fpn_channels = model.head_channels = 16
    model.head_convs = 1
    model.postprocess.max_detections = 20
    config.schedule.warmup_steps = 2
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 4
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.num_grid_images = 4
    config.anchor_coverage_images = 0  # Its own tests: tests/detectors/test_anchor_coverage.py.
    return config


def bare_model_config(name: str) -> ml_collections.ConfigDict:
    """The model config of a detector that a test registers: its name, the only field of
    `config.model` the trainer reads."""
    return ml_collections.ConfigDict({"name": name})


@pytest.fixture(scope="session", autouse=True)
def compilation_cache():
    """The runs of a test session compile the same steps again and again; the session's
    persistent cache (tests/conftest.py) turns the repeats into look-ups, however short."""
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    assert data_lib.build(tiny_config(data_dir).dataset).info.num_examples["train"] == 32
    return data_dir


@pytest.fixture(scope="session")
def trained_run(tiny_data_dir, tmp_path_factory) -> tuple[str, dict[str, float]]:
    """`(workdir, final metrics)` of an uninterrupted 4-step run of `tiny_config`."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    metrics = train.train_and_evaluate(tiny_config(tiny_data_dir), workdir)
    return workdir, metrics


@pytest.fixture()
def workdir_scoring_everything(trained_run, tmp_path) -> str:
    """A copy of the trained run whose detector keeps every candidate (score threshold 0), so
    that a 4-step model has detections to compare."""
    workdir = str(tmp_path / "workdir")
    shutil.copytree(trained_run[0], workdir)
    with open(f"{workdir}/config.json") as f:
        config = json.load(f)
    config["model"]["postprocess"]["score_threshold"] = 0.0
    with open(f"{workdir}/config.json", "w") as f:
        json.dump(config, f)
    return workdir
