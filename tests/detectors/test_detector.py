"""The `Detector` contract: rng streams and model inputs in training versus evaluation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.detectors import Detector, images_only


class _Dropout(nn.Module):
    @nn.compact
    def __call__(self, images, *, train):
        features = nn.Dense(4)(images.reshape(len(images), -1))
        return nn.Dropout(0.5, deterministic=not train)(features)


def _detector(**kwargs):
    return Detector(name="toy", module=_Dropout(), loss_fn=None, postprocess=None, **kwargs)


BATCH = {"image": jnp.ones((2, 4, 4, 3))}


def test_training_with_rng_streams_needs_an_rng_and_draws_from_it():
    detector = _detector(rng_collections=("dropout",))
    variables = detector.init(jax.random.PRNGKey(0), BATCH)
    message = r"detector 'toy' needs an rng in training for \('dropout',\)"
    with pytest.raises(ValueError, match=message):
        detector.apply(variables, BATCH, train=True)
    first, _ = detector.apply(variables, BATCH, train=True, rng=jax.random.PRNGKey(1))
    second, _ = detector.apply(variables, BATCH, train=True, rng=jax.random.PRNGKey(2))
    assert not np.array_equal(first, second)
    evaluation, updates = detector.apply(variables, BATCH, train=False)
    assert updates == {}
    np.testing.assert_array_equal(evaluation, detector.apply(variables, BATCH, train=False)[0])


def test_default_model_inputs_are_the_images_only():
    assert images_only({**BATCH, "boxes": jnp.zeros((2, 1, 4))}, True).keys() == {"images"}
