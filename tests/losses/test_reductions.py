"""Tests of ignore weights and normalizers, including across pmapped devices."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax import losses


def test_weighted_sum_ignores_entries_even_when_they_are_inf_or_nan():
    values = jnp.array([1.0, jnp.inf, jnp.nan, 2.0])
    weights = jnp.array([1.0, 0.0, 0.0, 0.5])
    assert losses.weighted_sum(values, weights) == 2.0
    grad = jax.grad(lambda v: losses.weighted_sum(v, weights))(values)
    np.testing.assert_array_equal(grad, [1.0, 0.0, 0.0, 0.5])


def test_positive_normalizer_is_max_one_n():
    assert losses.positive_normalizer(0) == 1.0
    assert losses.positive_normalizer(37) == 37.0


def test_pmapped_normalized_loss_equals_the_global_loss_on_one_device():
    rng = np.random.default_rng(0)
    per_anchor = jnp.float32(rng.random((4, 50)))
    positives = jnp.float32(rng.random((4, 50)) < 0.05)  # devices get different counts, some 0

    @functools.partial(jax.pmap, axis_name="d")
    def per_device(loss, pos):
        local = jnp.sum(loss) / losses.positive_normalizer(jnp.sum(pos), axis_name="d")
        return jax.lax.pmean(local, "d")

    want = jnp.sum(per_anchor) / max(1.0, float(jnp.sum(positives)))
    np.testing.assert_allclose(per_device(per_anchor, positives), np.full(4, want), rtol=1e-6)


def test_ema_normalizer_follows_detectron2_update():
    state = losses.EMA_NORMALIZER_INIT
    counts = [0, 10, 250, 3]
    want = 100.0
    for n in counts:
        normalizer, state = losses.ema_normalizer(state, n)
        want = 0.9 * want + 0.1 * max(n, 1)
        np.testing.assert_allclose(normalizer, want, rtol=1e-6)
        np.testing.assert_allclose(state, want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        losses.ema_normalizer(state, 1, momentum=1.5)


def test_ema_normalizer_under_pmap_uses_the_mean_count_per_device():
    counts = jnp.array([0.0, 4.0, 8.0, 20.0])
    normalizer, _ = jax.pmap(lambda n: losses.ema_normalizer(100.0, n, axis_name="d"),
                             axis_name="d")(counts)
    chex.assert_trees_all_close(normalizer, jnp.full(4, 0.9 * 100 + 0.1 * 8.0))
