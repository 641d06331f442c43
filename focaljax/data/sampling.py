"""Repeat-factor sampling (Gupta et al., "LVIS", CVPR 2019; detectron2's
`RepeatFactorTrainingSampler`): images holding rare classes are seen more often in an epoch.

For a threshold t, class c, present in a fraction f_c of the training images, has the factor
r_c = max(1, sqrt(t / f_c)), and image i the factor r_i = max over its classes of r_c (1 for an
image without objects). Each epoch holds image i floor(r_i) times, plus once more with
probability r_i - floor(r_i) (stochastic rounding, drawn from the epoch's key): epochs vary in
length around sum(r_i).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from focaljax.errors import ConfigError


def repeat_factors(labels: Sequence[np.ndarray], *, threshold: float) -> np.ndarray:
    """float64 `[N]`: r_i = max(1, max over the classes c of image i of sqrt(t / f_c)).

    Args:
      labels: the class ids of each image's objects, one int array per image (repeats allowed).
      threshold: t > 0; classes in a fraction of the images below it are repeated.

    Examples:
      >>> repeat_factors([np.array([0]), np.array([0, 1]), np.array([0]), np.array([])],
      ...                threshold=0.5).round(3).tolist()
      [1.0, 1.414, 1.0, 1.0]
    """
    if threshold <= 0:
        raise ConfigError(f"threshold is {threshold}, expected a positive image fraction")
    present = [np.unique(np.asarray(image_labels, np.int64)) for image_labels in labels]
    if not present:
        return np.zeros([0])
    num_classes = 1 + max((int(p.max()) for p in present if p.size), default=-1)
    counts = np.zeros(num_classes)
    for classes in present:
        counts[classes] += 1
    with np.errstate(divide="ignore"):
        class_factors = np.maximum(1.0, np.sqrt(threshold * len(present) / counts))
    return np.array([max(1.0, class_factors[p].max(initial=1.0)) for p in present])


def epoch_counts(factors: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """int64 `[N]`: how often each image is in the epoch of `key`, floor(r_i) + 1 with
    probability r_i - floor(r_i); `factors` float64 `[N]`. Eager and traced calls agree."""
    whole = tf.floor(factors)
    draws = tf.random.stateless_uniform(tf.shape(factors), key, dtype=tf.float64)
    return tf.cast(whole, tf.int64) + tf.cast(draws < factors - whole, tf.int64)


def summary(factors: np.ndarray, *, threshold: float) -> str:
    """One line on the factors: how many images are repeated, the largest factor, the expected
    epoch length."""
    num_repeated = int(np.sum(factors > 1.0))
    return (
        f"repeat-factor sampling, threshold {threshold:g}: {num_repeated} of {len(factors)} images "
        f"repeated (factor > 1), the largest factor {factors.max(initial=1.0):.2f}, "
        f"{math.fsum(factors):.1f} images per epoch on average instead of {len(factors)}"
    )
