"""The trainer runs any registered `Detector`: here a toy one that, like a Faster R-CNN, sees the
ground truth in its training forward pass and needs a dropout rng."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from focaljax import detectors
from tests.train.conftest import bare_model_config, tiny_config
from train import evaluate as evaluate_lib
from train import train


class _Toy(nn.Module):
    @nn.compact
    def __call__(self, images, boxes=None, *, train: bool):
        x = nn.Dense(8)(jnp.mean(images, axis=(1, 2)))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        outputs = {"score": nn.Dense(1)(x)[:, 0]}
        if boxes is not None:
            outputs["boxes_seen"] = jnp.sum(boxes[..., 2] > boxes[..., 0], axis=1)
        return outputs


def _build_toy(config, *, num_classes, image_size, axis_name):
    del config, num_classes, axis_name

    def loss_fn(outputs, batch, *, state, axis_name=None, rng=None):
        del axis_name
        assert rng is not None
        target = jnp.sum(batch["labels"] >= 0, axis=1).astype(jnp.float32)
        loss = jnp.mean((outputs["score"] - target) ** 2)
        # The loss state counts the steps: the trainer must carry it from step to step.
        return detectors.LossOutput(
            {"squared_error": loss},
            {"boxes_seen": jnp.mean(outputs["boxes_seen"]), "steps_seen": state["steps"]},
            {"steps": state["steps"] + 1},
        )

    def postprocess(outputs, batch):
        del batch
        size = outputs["score"].shape[0]
        box = jnp.array([0, 0, image_size[1] / 2, image_size[0] / 2], jnp.float32)
        return {"boxes": jnp.tile(box, (size, 1, 1)),
                "scores": jax.nn.sigmoid(outputs["score"])[:, None],
                "classes": jnp.zeros((size, 1), jnp.int32),
                "num_valid": jnp.ones((size,), jnp.int32)}

    def model_inputs(batch, train):
        return {"images": batch["image"], **({"boxes": batch["boxes"]} if train else {})}

    return detectors.Detector(
        name="toy", module=_Toy(), loss_fn=loss_fn, postprocess=postprocess,
        model_inputs=model_inputs, rng_collections=("dropout",),
        initial_loss_state={"steps": jnp.float32(0)},
    )


def test_trainer_runs_a_registered_detector_it_knows_nothing_about(
    tiny_data_dir, tmp_path, monkeypatch
):
    monkeypatch.setitem(detectors.BUILDERS, "toy", _build_toy)
    config = tiny_config(tiny_data_dir)
    config.model = bare_model_config("toy")
    workdir = str(tmp_path)

    metrics = train.train_and_evaluate(config, workdir)

    assert set(evaluate_lib.EVAL_METRICS) <= set(metrics)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    # The trainer sums and logs the named terms; the state reached step k after k - 1 updates.
    assert all(r["train/loss"] == r["train/loss_squared_error"] for r in train_records)
    assert [r["train/steps_seen"] for r in train_records] == [0, 1, 2, 3]
    # The ground truth reached the network in training: shapes images hold 0-6 objects.
    assert all(r["train/boxes_seen"] > 0 for r in train_records)
    # A state without batch statistics (model_state {}) restores too: the rerun only evaluates.
    assert train.train_and_evaluate(config, workdir)["AP50"] == metrics["AP50"]
