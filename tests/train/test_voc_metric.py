"""PASCAL VOC's mAP in the trainer's evaluation (`config.voc_metric`), on a tiny VOC 2007 prepared
from local files and scored with an "oracle" detector that returns chosen ground-truth boxes, so
that every expected mAP is worked out by hand."""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from focaljax import data as data_lib
from focaljax import detectors, evaluation
from tests.data.fake_sources import write_voc_source
from tests.train.conftest import bare_model_config, tiny_config
from train import evaluate as evaluate_lib
from train import state as train_state
from train import train

LABELS = data_lib.VocDetection(config="2007").info.features["objects"]["label"].names
DOG, CAT = LABELS.index("dog"), LABELS.index("cat")
# name: (image list, width, height, [(label, (xmin, ymin, xmax, ymax) as in the XML, difficult)]).
# The test images are resized to fit 64x64 by factors of 2 to 2.56: boxes not brought back to the
# original pixels would miss the ground truth (IoU < 0.2).
IMAGES = {
    "000001": ("test", 32, 24, [("dog", (3, 4, 15, 20), False),
                                ("person", (16, 5, 30, 22), True)]),
    "000002": ("test", 20, 30, [("dog", (2, 3, 10, 15), False), ("cat", (6, 12, 19, 29), False)]),
    "000003": ("test", 25, 25, [("cat", (3, 3, 22, 22), True)]),
    "000004": ("train", 32, 32, [("dog", (5, 5, 20, 20), False)]),
    "000005": ("val", 32, 32, [("cat", (5, 5, 20, 20), False)]),
}
IMAGE_SIZE = (64, 64)


@pytest.fixture(scope="module")
def voc_data_dir(tmp_path_factory) -> str:
    source = write_voc_source(tmp_path_factory.mktemp("voc"), IMAGES)
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data_lib.VocDetection(config="2007", source_dir=str(source), data_dir=data_dir
                          ).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return data_dir


def voc_config(data_dir: str, voc_metric: str) -> ml_collections.ConfigDict:
    """The tiny trainer config on the VOC data: one image per device, one step, the oracle."""
    config = tiny_config(data_dir)
    config.dataset.update({
        "name": "voc", "data_dir": data_dir, "builder_kwargs": {"config": "2007"},
        "image_size": IMAGE_SIZE, "max_boxes": 4, "train_split": "train", "eval_split": "test",
    })
    config.model = bare_model_config("oracle")
    config.batch_size = config.eval_batch_size = 4
    config.num_train_steps = 1
    config.checkpoint_every_steps = 0
    config.num_grid_images = 1
    config.evaluators = ("coco", voc_metric) if voc_metric else ("coco",)
    return config


class _Mean(nn.Module):
    @nn.compact
    def __call__(self, images, *, train: bool):
        del train
        return nn.Dense(1)(jnp.mean(images, axis=(1, 2)))[:, 0]


def oracle(*, missed: tuple[int, int] | None = None) -> detectors.Detector:
    """A detector whose detections are the ground-truth boxes of its batch, in resized-image
    pixels as a detector's are, scored 0.9 if difficult and 0.5 if not; `missed = (image id,
    label)` leaves those boxes out."""

    def postprocess(outputs, batch):
        del outputs
        labels = batch["labels"]
        keep = labels >= 0
        if missed is not None:
            keep &= ~((batch["image_id"][:, None] == missed[0]) & (labels == missed[1]))
        order = jnp.argsort(~keep, axis=1, stable=True)  # Kept rows first: num_valid counts them.
        return {
            "boxes": jnp.take_along_axis(batch["boxes"], order[..., None], axis=1),
            "scores": jnp.take_along_axis(jnp.where(batch["is_crowd"], 0.9, 0.5), order, axis=1),
            "classes": jnp.take_along_axis(jnp.maximum(labels, 0), order, axis=1),
            "num_valid": jnp.sum(keep, axis=1).astype(jnp.int32),
        }

    def loss_fn(outputs, batch, *, state, axis_name=None, rng=None):
        del batch, axis_name, rng
        return detectors.LossOutput({"squares": jnp.mean(outputs**2)}, {}, state)

    return detectors.Detector(name="oracle", module=_Mean(), loss_fn=loss_fn,
                              postprocess=postprocess)


def _evaluate(detector: detectors.Detector, config: ml_collections.ConfigDict) -> dict:
    state = train_state.create_train_state(jax.random.PRNGKey(0), detector, optax.identity(),
                                           IMAGE_SIZE)
    p_eval_step = jax.pmap(functools.partial(train.eval_step, detector=detector),
                           axis_name=train.AXIS_NAME)
    dataset = data_lib.build(config.dataset)
    metrics, _ = evaluate_lib.evaluate(p_eval_step, train_state.replicate(state), dataset, config,
                                       detector=detector,
                                       truth=evaluate_lib.read_ground_truth(dataset, config))
    return metrics


@pytest.mark.parametrize(
    ("voc_metric", "missed", "expected"),
    [
        # Every box found; the difficult cat and person, found first, count neither way.
        ("voc07", None, 1.0),
        ("voc", None, 1.0),
        # One of the two dogs missed: the dog's recall stops at 1/2 with precision 1, so its AP is
        # 6/11 (precision 1 at recalls 0, 0.1, ..., 0.5) in VOC2007, 1/2 as the area; the cat's is
        # 1; the person has no box that counts, so no AP, and is left out of the mean.
        ("voc07", (2, DOG), (6 / 11 + 1) / 2),
        ("voc", (2, DOG), (1 / 2 + 1) / 2),
        # Missing the difficult cat costs nothing.
        ("voc", (3, CAT), 1.0),
    ],
    ids=["voc07-all", "voc-all", "voc07-missed-dog", "voc-missed-dog", "voc-missed-difficult"],
)
def test_evaluate_adds_voc_map_of_the_detections_in_original_pixels(
    voc_data_dir, voc_metric, missed, expected
):
    metrics = _evaluate(oracle(missed=missed), voc_config(voc_data_dir, voc_metric))

    name = evaluation.VOC_METRICS[voc_metric]
    assert metrics[name] == pytest.approx(expected, abs=1e-9)
    assert set(evaluate_lib.EVAL_METRICS) <= set(metrics)
    assert set(evaluation.VOC_METRICS.values()) & set(metrics) == {name}


def test_evaluate_reports_no_voc_map_when_voc_metric_is_off(voc_data_dir):
    config = voc_config(voc_data_dir, "")

    metrics = _evaluate(oracle(), config)

    assert set(evaluate_lib.EVAL_METRICS) <= set(metrics)
    assert not set(evaluation.VOC_METRICS.values()) & set(metrics)


def test_run_logs_and_prints_the_voc_map(voc_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(detectors.BUILDERS, "oracle", lambda config, **kwargs: oracle())
    workdir = str(tmp_path)

    metrics = train.train_and_evaluate(voc_config(voc_data_dir, "voc07"), workdir)

    assert metrics["VOC07_mAP50"] == pytest.approx(1.0)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        final = [json.loads(line) for line in f][-1]
    assert final["step"] == 1 and final["eval/VOC07_mAP50"] == pytest.approx(1.0)
    (events,) = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    tags = {value.tag for event in tf.compat.v1.train.summary_iterator(events)
            for value in event.summary.value}
    assert {"eval/AP50", "eval/VOC07_mAP50"} <= tags
    table = capsys.readouterr().out.split("Evaluation at step 1:\n", 1)[1].splitlines()
    assert table[0].split() == " | ".join(evaluate_lib.EVAL_METRICS).split()
    assert table[2] == "VOC07_mAP50: 1.000"


def test_voc_metric_on_a_data_set_without_difficult_flags_fails_before_training(
    tiny_data_dir, tmp_path
):
    config = tiny_config(tiny_data_dir)
    config.evaluators = ("coco", "voc07")
    with pytest.raises(
        ValueError,
        match=r"config.evaluators names \['voc07'\], but shapes/tiny/\S+ has no VOC 'difficult' "
              r"flags: it lacks the features \['objects/is_difficult'\]",
    ):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_declared_box_outputs_reach_the_detectors_evaluators_in_original_pixels(voc_data_dir):
    """A detector's extra box output ("proposals") is mapped back to original pixels, like its
    detections, before its own evaluator sees it: proposals equal to the ground truth give
    recall 1; left in resized pixels they would miss every box (IoU < 0.2)."""
    from focaljax.evaluation import ProposalRecallEvaluator

    base = oracle()

    def postprocess(outputs, batch):
        detections = base.postprocess(outputs, batch)
        return {**detections, "proposals": detections["boxes"],
                "proposal_scores": detections["scores"], "num_proposals": detections["num_valid"]}

    with_proposals = dataclasses.replace(
        base, postprocess=postprocess, box_outputs=("boxes", "proposals"),
        evaluators=lambda ground_truth: [ProposalRecallEvaluator(ground_truth)],
    )
    metrics = _evaluate(with_proposals, voc_config(voc_data_dir, ""))
    assert metrics["AR@100"] == pytest.approx(1.0)

    unmapped = dataclasses.replace(with_proposals, box_outputs=("boxes",))
    assert _evaluate(unmapped, voc_config(voc_data_dir, ""))["AR@100"] == pytest.approx(0.0)


def test_voc_metric_is_an_alias_that_adds_its_evaluator(voc_data_dir):
    config = voc_config(voc_data_dir, "")
    config.voc_metric = "voc"
    assert evaluate_lib.evaluator_names(config) == ("coco", "voc")
    metrics = _evaluate(oracle(missed=(2, DOG)), config)
    assert metrics["VOC_mAP50"] == pytest.approx((1 / 2 + 1) / 2, abs=1e-9)
    config.evaluators = ("coco", "voc")  # Named twice over: once.
    assert evaluate_lib.evaluator_names(config) == ("coco", "voc")
