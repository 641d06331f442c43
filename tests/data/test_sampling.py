"""Tests of focaljax/data/sampling.py (repeat-factor sampling): the factors against LVIS's formula
on a skewed synthetic split, the stochastic rounding, and the sampling in the training pipeline
(how often each image comes, its log line, exact resumption) on the small "shapes" data set."""

import collections
import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from focaljax.data import generate_example, sampling
from focaljax.data.augment import Augmentations
from tests.data.test_pipeline import KEYS, NUM_TRAIN, _image_ids, _train_batches

# A skewed split of 1000 images: class 0 in every image, class 1 in 50, class 2 in 4, class 3 in
# 1 (with class 2), 100 images without objects.
NUM_IMAGES = 1000


def _skewed_labels() -> list[np.ndarray]:
    labels = [np.array([0, 0])] * 900 + [np.array([], np.int64)] * 100
    labels = [np.array(x) for x in labels]
    for i in range(50):
        labels[i] = np.array([0, 1, 1])
    for i in range(50, 54):
        labels[i] = np.array([2, 0])
    labels[53] = np.array([3, 2, 0])
    return labels


def _lvis_factors(labels, threshold) -> list[float]:
    """LVIS's r_i written out: loops over the images and classes."""
    images_with = collections.Counter(c for image in labels for c in set(image.tolist()))
    factors = []
    for image in labels:
        factor = 1.0
        for c in set(image.tolist()):
            factor = max(factor, math.sqrt(threshold / (images_with[c] / len(labels))))
        factors.append(factor)
    return factors


@pytest.mark.parametrize("threshold", [0.001, 0.01, 0.1, 1.0])
def test_repeat_factors_follow_the_lvis_formula_on_a_skewed_split(threshold):
    labels = _skewed_labels()
    factors = sampling.repeat_factors(labels, threshold=threshold)
    np.testing.assert_allclose(factors, _lvis_factors(labels, threshold), rtol=1e-12)


def test_rare_classes_get_the_largest_factors():
    factors = sampling.repeat_factors(_skewed_labels(), threshold=0.1)
    # f = 1 (class 0), 0.05 (1), 0.004 (2), 0.001 (3): sqrt(0.1 / f).
    assert factors[0] == pytest.approx(math.sqrt(2.0))
    assert factors[50] == pytest.approx(5.0)
    assert factors[53] == pytest.approx(10.0)
    assert factors[100] == factors[999] == 1.0
    assert sampling.summary(factors, threshold=0.1).startswith(
        "repeat-factor sampling, threshold 0.1: 54 of 1000 images repeated (factor > 1), the "
        "largest factor 10.00"
    )


def test_a_threshold_that_is_not_positive_is_rejected():
    with pytest.raises(ValueError, match="threshold is 0"):
        sampling.repeat_factors(_skewed_labels(), threshold=0)


def test_epoch_counts_round_each_factor_up_or_down_without_bias():
    factors = np.array([1.0, 1.25, 2.5, 3.0, 7.9])
    counts = np.stack([
        sampling.epoch_counts(tf.constant(factors), tf.constant([0, epoch], tf.int64)).numpy()
        for epoch in range(1000)
    ])
    assert np.all((counts == np.floor(factors)) | (counts == np.ceil(factors)))
    np.testing.assert_allclose(counts.mean(axis=0), factors, atol=0.07)  # 4.4 sigma
    assert len({tuple(c) for c in counts}) > 1  # epochs differ


# ----------------------------------------------------------------------------------------------
# In the training pipeline (host batch 4; with threshold 1 the 24 images have factors 1 to 1.63,
# epochs of about 35 examples).

THRESHOLD = 1.0


def _source_factors(small_builder) -> np.ndarray:
    labels = [generate_example(small_builder.builder_config, "train", i)["label"]
              for i in range(NUM_TRAIN)]
    return np.array(_lvis_factors(labels, THRESHOLD))


def test_the_pipeline_shows_each_image_as_often_as_its_factor_and_logs_them(
    small_builder, caplog
):
    factors = _source_factors(small_builder)
    assert 1.0 == factors.min() < factors.max() < 2.0
    num_epochs = 20
    num_batches = round(num_epochs * factors.sum() / 16)
    with caplog.at_level(logging.INFO, logger="absl"):
        batches = _train_batches(small_builder, num_batches, per_device_batch_size=4,
                                 image_size=(24, 32), repeat_factor_threshold=THRESHOLD)
    assert sampling.summary(factors, threshold=THRESHOLD) in caplog.text
    seen = collections.Counter(_image_ids(batches).tolist())
    times = np.array([seen[i + 1] for i in range(NUM_TRAIN)]) / (num_batches * 16 / factors.sum())
    # Over 20 epochs an image's count has a standard deviation below 0.11 epochs.
    np.testing.assert_allclose(times, factors, atol=0.4)
    for factor in np.unique(factors.round(6)):
        group = np.isclose(factors, factor)
        assert abs(times[group].mean() - factor) < 0.2


def test_repeat_factors_all_1_give_the_batches_of_no_sampling(small_builder):
    plain = _train_batches(small_builder, 8, shuffle_buffer_size=5)
    sampled = _train_batches(small_builder, 8, shuffle_buffer_size=5,
                             repeat_factor_threshold=1e-6)
    for want, batch in zip(plain, sampled, strict=True):
        for key in KEYS:
            np.testing.assert_array_equal(batch[key], want[key], err_msg=key)


def test_resuming_with_repeat_factor_sampling_yields_the_batches_of_an_uninterrupted_run(
    small_builder
):
    kwargs = {"repeat_factor_threshold": THRESHOLD, "shuffle_buffer_size": 5,
              "augmentations": Augmentations(rotate90=True, brightness=0.2, safe_crop=(0.6, 1.0),
                                            mosaic=0.5)}
    full = _train_batches(small_builder, 12, **kwargs)
    first_epoch = collections.Counter(_image_ids(full[:6]).tolist())
    assert max(first_epoch.values()) == 2  # some images come twice in an epoch
    # The first epoch has 35 examples (seed 0): step 10 is in the second, which starts inside
    # batch 8.
    for start_step in (4, 10):
        resumed = _train_batches(small_builder, 12 - start_step, start_step=start_step, **kwargs)
        for want, batch in zip(full[start_step:], resumed, strict=True):
            for key in KEYS:
                np.testing.assert_array_equal(batch[key], want[key], err_msg=key)


def test_a_negative_threshold_is_rejected(small_builder):
    with pytest.raises(ValueError, match="repeat_factor_threshold"):
        _train_batches(small_builder, 1, repeat_factor_threshold=-0.1)
