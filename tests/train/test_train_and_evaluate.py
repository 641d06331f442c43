"""`train_and_evaluate` end to end on the tiny shapes data set: what a run leaves in its workdir,
resumption after SIGTERM, the stop on a NaN loss, and what a run prints at its start."""

from __future__ import annotations

import glob
import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from PIL import Image

from focaljax import data as data_lib
from focaljax.data import sampling
from tests.train.conftest import tiny_config
from train import evaluate as evaluate_lib
from train import train
from train import workdir as workdir_lib


def read_jsonl(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir: str) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_jsonl(workdir) if "train/loss" in r}


def restore_state(workdir: str, step: int) -> dict:
    manager = workdir_lib.checkpoint_manager(workdir, create=False)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore())
    finally:
        manager.close()


def test_run_leaves_metrics_checkpoints_tensorboard_events_and_a_detection_grid(trained_run):
    workdir, _ = trained_run
    records = read_jsonl(workdir)
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    assert {"train/loss", "train/loss_cls", "train/loss_box", "train/learning_rate",
            "train/grad_norm", "train/images_per_second"} <= set(records[0])
    assert records[-1]["step"] == 4 and "eval/AP" in records[-1]

    manager = workdir_lib.checkpoint_manager(workdir, create=False)
    assert manager.all_steps() == [2, 4]  # Every 2 steps, the last 2 kept.
    manager.close()

    (events,) = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    tags = {value.tag for event in tf.compat.v1.train.summary_iterator(events)
            for value in event.summary.value}
    assert {"train/loss", "train/images_per_second", "eval/AP", "eval/detections"} <= tags
    with open(os.path.join(workdir, "dataset_info.json")) as f:
        per_class = {f"eval/AP/{name}" for name in json.load(f)["class_names"]}
    assert len(per_class) > 1 and per_class <= tags and per_class <= set(records[-1])

    with Image.open(os.path.join(workdir, "detections_step_4.png")) as grid:
        assert grid.mode == "RGB" and grid.width > 4 * 64  # Four 64x64 cells in a row.
    for name in ("config.json", "dataset_info.json"):
        assert os.path.exists(os.path.join(workdir, name))


def test_final_metrics_are_the_coco_box_metrics(trained_run):
    _, metrics = trained_run
    assert set(evaluate_lib.EVAL_METRICS) <= set(metrics)
    for name in ("AP", "AP50", "AP75"):
        assert 0.0 <= metrics[name] <= 1.0


def test_the_evaluation_report_has_a_table_of_the_ap_of_each_category():
    metrics = {name: 0.5 for name in evaluate_lib.EVAL_METRICS}
    metrics |= {"AP@0.05": 0.25, "AP/circle": 0.75, "AP/square": 0.125, "AP/traffic_light": 0.0,
                "AP/star": 1.0, "AP@0.05/circle": 0.5}
    lines = evaluate_lib.format_metrics_table(metrics).splitlines()
    assert lines[2] == "AP@0.05: 0.250"  # The per-category APs at a minimum score: not shown.
    assert lines[3:] == [
        "Per-category AP:",
        "category      |    AP | category      |    AP | category      |    AP",
        "circle        | 0.750 | square        | 0.125 | traffic_light | 0.000",
        "star          | 1.000",
    ]


def _sigterm_at(stop_step: int):
    """A SummaryWriter that sends this process SIGTERM when it logs the training step
    `stop_step`, i.e. while the trainer is between two steps."""

    class Writer(train.SummaryWriter):
        def write_scalars(self, step, scalars):
            super().write_scalars(step, scalars)
            if step == stop_step and "train/loss" in scalars:
                handler = signal.getsignal(signal.SIGTERM)
                # Only ever signal the trainer's handler, never the process's default (exit).
                assert type(getattr(handler, "__self__", None)).__name__ == "_StopRequest"
                signal.raise_signal(signal.SIGTERM)

    return Writer


def test_sigterm_saves_and_a_rerun_resumes_to_the_uninterrupted_state(
    trained_run, tiny_data_dir, tmp_path, monkeypatch
):
    reference_workdir, reference_metrics = trained_run
    workdir = str(tmp_path / "run")
    config = tiny_config(tiny_data_dir)
    config.checkpoint_every_steps = 3  # So that only the SIGTERM saves step 1.

    monkeypatch.setattr(train, "SummaryWriter", _sigterm_at(1))
    with pytest.raises(train.TrainingInterruptedError, match="SIGTERM: saved a checkpoint at step 1"
                       ):
        train.train_and_evaluate(config, workdir)
    manager = workdir_lib.checkpoint_manager(workdir, create=False)
    assert manager.all_steps() == [1]
    manager.close()
    monkeypatch.undo()

    metrics = train.train_and_evaluate(config, workdir)

    assert sorted(train_losses(workdir)) == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [train_losses(workdir)[s] for s in (2, 3, 4)],
        [train_losses(reference_workdir)[s] for s in (2, 3, 4)],
        rtol=1e-6,
    )
    resumed, reference = restore_state(workdir, 4), restore_state(reference_workdir, 4)
    assert int(resumed["step"]) == 4
    for key in ("params", "model_state", "opt_state"):
        np.testing.assert_allclose(
            np.concatenate([np.ravel(x) for x in _leaves(resumed[key])]),
            np.concatenate([np.ravel(x) for x in _leaves(reference[key])]),
            rtol=1e-6, atol=1e-7, err_msg=key,
        )
    assert metrics["AP"] == pytest.approx(reference_metrics["AP"], abs=1e-6)


def test_a_save_is_due_at_the_first_log_step_after_checkpoint_every_minutes(
    tiny_data_dir, tmp_path
):
    """With the interval far below a step's time, every log step saves; the step interval is
    off, so the steps saved are the log steps and the last one."""
    workdir = str(tmp_path / "run")
    config = tiny_config(tiny_data_dir)
    config.checkpoint_every_steps = 0
    config.checkpoint_every_minutes = 1e-9
    config.log_every_steps = 3
    config.max_checkpoints_to_keep = 10
    train.train_and_evaluate(config, workdir)
    manager = workdir_lib.checkpoint_manager(workdir, create=False)
    assert manager.all_steps() == [3, 4]
    manager.close()


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


class _NanImagesFrom:
    """A data set whose training images become NaN from step `first_bad_step` on."""

    def __init__(self, dataset, first_bad_step: int):
        self._dataset = dataset
        self._first_bad_step = first_bad_step

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def train_iterator(self, per_device_batch_size, seed, start_step=0, **kwargs):
        batches = self._dataset.train_iterator(per_device_batch_size, seed, start_step, **kwargs)
        for step, batch in enumerate(batches, start=start_step + 1):
            if step >= self._first_bad_step:
                batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
            yield batch


def test_nan_loss_stops_training_naming_the_step_and_the_last_good_checkpoint(
    tiny_data_dir, tmp_path, monkeypatch
):
    build = train.data_lib.build
    monkeypatch.setattr(train.data_lib, "build", lambda config: _NanImagesFrom(build(config), 3))
    workdir = str(tmp_path / "run")
    with pytest.raises(
        train.TrainingDivergedError,
        match=r"loss is nan .* at step 3; stopping\. Last good checkpoint: step 2 in .*checkpoints",
    ):
        train.train_and_evaluate(tiny_config(tiny_data_dir), workdir)
    manager = workdir_lib.checkpoint_manager(workdir, create=False)
    assert manager.all_steps() == [2]
    manager.close()


def test_a_run_with_repeat_factor_sampling_prints_their_summary_once_at_its_start(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    config = tiny_config(tiny_data_dir)
    config.dataset.repeat_factor_threshold = 1.0
    monkeypatch.setattr(train, "SummaryWriter", _sigterm_at(1))  # The start is all it needs.
    with pytest.raises(train.TrainingInterruptedError):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    builder = data_lib.build(config.dataset).builder
    labels = [example["objects"]["label"]
              for example in builder.as_dataset(split="train").as_numpy_iterator()]
    factors = sampling.repeat_factors(labels, threshold=1.0)
    assert factors.max() > 1.0
    printed = capsys.readouterr().out.splitlines()
    assert printed.count(sampling.summary(factors, threshold=1.0)) == 1
