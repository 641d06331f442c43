"""The pmapped train step against the same step on one device, and overfitting a few images."""

from __future__ import annotations

import functools

import jax
import numpy as np

from focaljax import data as data_lib
from focaljax import detectors
from focaljax.ops import boxes as box_ops
from tests.train.conftest import tiny_config
from train import optim, train
from train import state as train_state

IMAGE_SIZE = (64, 64)


def pmapped_steps(config, devices, num_steps: int = 100):
    """`(p_train_step, p_eval_step, replicated initial state)` on `devices`, the learning rate
    schedule `num_steps` long."""
    detector = detectors.build(
        config.model, num_classes=4, image_size=IMAGE_SIZE, axis_name=train.AXIS_NAME
    )
    learning_rate_fn = optim.create_learning_rate_fn(config, num_steps, ())
    tx = optim.create_optimizer(config, learning_rate_fn, frozen=detector.frozen)
    state = train_state.create_train_state(jax.random.PRNGKey(0), detector, tx, IMAGE_SIZE)
    step = jax.pmap(
        functools.partial(
            train.train_step, detector=detector, tx=tx, learning_rate_fn=learning_rate_fn,
            rng=jax.random.PRNGKey(1),
        ),
        axis_name=train.AXIS_NAME,
        devices=devices,
    )
    evaluate = jax.pmap(
        functools.partial(train.eval_step, detector=detector), axis_name=train.AXIS_NAME,
        devices=devices,
    )
    return step, evaluate, train_state.replicate(state, devices)


def steps_on_four_and_one_device(config, batch, num_steps: int = 2):
    """`((state, metrics) on 4 devices, (state, metrics) on 1 device)` after `num_steps` steps
    (two exercise the momentum too) over `batch` `[4, 2, ...]` and over the same 8 images as one
    device's batch, from the same initial state."""
    whole = jax.tree.map(lambda x: x.reshape((1, 8) + x.shape[2:]), batch)
    results = []
    for devices, device_batch in ((jax.devices()[:4], batch), (jax.devices()[:1], whole)):
        step, _, state = pmapped_steps(config, devices)
        for _ in range(num_steps):
            state, metrics = step(state, device_batch)
        results.append((jax.device_get(state), jax.device_get(metrics)))
    return tuple(results)


def assert_replicas_agree_with_one_device(four, one) -> None:
    """The 4 replicas of `four` are identical and equal `one`'s state to float rounding."""
    for key in ("params", "model_state", "opt_state"):
        four_leaves = jax.tree.leaves(getattr(four, key))
        one_leaves = jax.tree.leaves(getattr(one, key))
        assert len(four_leaves) == len(one_leaves) > 0
        for a, b in zip(four_leaves, one_leaves, strict=True):
            np.testing.assert_array_equal(a, a[:1].repeat(4, 0))  # Replicas agree.
            np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-6, err_msg=key)


def test_step_on_four_devices_equals_the_step_on_one_device_over_the_same_global_batch(
    tiny_data_dir,
):
    config = tiny_config(tiny_data_dir)  # Synchronized batch norm: global-batch statistics.
    assert config.model.norm == "sync_bn"
    # SGD with momentum: its update is linear in the gradient, so the devices' different summation
    # order stays at float rounding. Adam's first steps move every parameter by about +-lr whatever
    # the gradient's size, turning rounding noise in near-zero gradients into lr-sized differences.
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    dataset = data_lib.build(config.dataset)
    batch = next(dataset.train_iterator(per_device_batch_size=2, seed=0))  # [4, 2, ...]
    assert batch["image"].shape[:2] == (4, 2)
    (four, four_metrics), (one, one_metrics) = steps_on_four_and_one_device(config, batch)

    assert int(four.step[0]) == int(one.step[0]) == 2
    for name in ("loss", "loss_cls", "loss_box", "num_positives"):
        np.testing.assert_allclose(four_metrics[name][0], one_metrics[name][0], rtol=1e-5)
    np.testing.assert_array_equal(four_metrics["loss"], four_metrics["loss"][0])  # Replicated.
    assert_replicas_agree_with_one_device(four, one)
    assert "batch_stats" in four.model_state


def _square_images():
    """Four 64x64 images with one or two coloured squares (20-35 px) on black, 4 classes."""
    rng = np.random.default_rng(0)
    colors = np.array([[2, -1, -1], [-1, 2, -1], [-1, -1, 2], [2, 2, -1]], np.float32)
    images = np.zeros((4, 64, 64, 3), np.float32)
    boxes = np.zeros((4, 2, 4), np.float32)
    labels = np.full((4, 2), -1, np.int32)
    for b in range(4):
        for m in range(1 + b % 2):
            size = rng.integers(20, 36)
            x, y = rng.integers(0, 64 - size, 2)
            if m == 1:  # The opposite corner, so that the two do not overlap much.
                x, y = 64 - size - x, 64 - size - y
            label = rng.integers(0, 4)
            images[b, y : y + size, x : x + size] = colors[label]
            boxes[b, m] = [x, y, x + size, y + size]
            labels[b, m] = label
    return {"image": images[None], "boxes": boxes[None], "labels": labels[None],
            "is_crowd": np.zeros((1, 4, 2), bool)}


def test_overfitting_four_images_drives_the_loss_down_and_recovers_their_boxes():
    config = tiny_config("")
    config.model.norm = "gn"
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.weight_decay = 0.0
    config.optimizer.reference_batch_size = config.batch_size = 4
    config.schedule.warmup_steps = 0
    batch = _square_images()
    step, evaluate, state = pmapped_steps(config, jax.devices()[:1])

    losses = []
    for _ in range(120):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"][0]))
    assert losses[-1] < 0.1 * losses[0], losses[::10]

    detections = jax.device_get(evaluate(state, batch))
    for b in range(4):
        real = np.arange(20) < detections["num_valid"][0, b]
        for box, label in zip(batch["boxes"][0, b], batch["labels"][0, b], strict=True):
            if label < 0:
                continue
            iou = np.asarray(box_ops.pairwise_iou(box[None], detections["boxes"][0, b]))[0]
            classes, scores = detections["classes"][0, b], detections["scores"][0, b]
            hits = real & (classes == label) & (scores > 0.5)
            assert np.max(np.where(hits, iou, 0.0)) > 0.7, (b, box, label)
