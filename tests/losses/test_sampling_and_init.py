"""Tests of OHEM, balanced sampling and the prior-bias initializers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from focaljax import losses


def test_ohem_keeps_the_highest_losses_among_valid_anchors():
    loss = jnp.array([0.1, 5.0, 0.3, 4.0, 9.0, 0.2])
    valid = jnp.array([True, True, True, True, False, True])
    mask = losses.ohem_mask(loss, num_samples=3, valid=valid)
    np.testing.assert_array_equal(mask, [0, 1, 1, 1, 0, 0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), num=st.integers(1, 40), fraction=st.sampled_from([0.25, 0.5]))
def test_ohem_with_ratio_matches_a_sorting_reference(seed, num, fraction):
    rng = np.random.default_rng(seed)
    loss = rng.random(60).astype(np.float32)
    positive = rng.random(60) < 0.15
    valid = rng.random(60) < 0.9
    mask = np.asarray(losses.ohem_mask(loss, num_samples=num, valid=valid, positive_mask=positive,
                                       positive_fraction=fraction))
    pos_idx = [i for i in np.argsort(-loss, kind="stable") if valid[i] and positive[i]]
    neg_idx = [i for i in np.argsort(-loss, kind="stable") if valid[i] and not positive[i]]
    chosen = pos_idx[:int(num * fraction)]
    chosen += neg_idx[:num - len(chosen)]
    want = np.zeros(60)
    want[chosen] = 1
    np.testing.assert_array_equal(mask, want)


def test_ohem_passes_no_gradient_through_the_selection():
    loss = jnp.array([1.0, 2.0, 3.0])
    grad = jax.grad(lambda x: jnp.sum(losses.ohem_mask(x, num_samples=2) * x))(loss)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), num_pos=st.integers(0, 200), num=st.sampled_from([16, 256]))
def test_balanced_sampling_respects_counts_fraction_and_ignored(seed, num_pos, num):
    rng = np.random.default_rng(seed)
    labels = np.zeros(1000, np.int32)
    labels[:num_pos] = 1
    labels[-100:] = -1
    rng.shuffle(labels)
    mask = np.asarray(losses.balanced_sample_mask(jax.random.key(seed), jnp.asarray(labels),
                                                  num_samples=num, positive_fraction=0.5))
    assert mask.sum() == num
    assert mask[labels == -1].sum() == 0
    assert mask[labels == 1].sum() == min(num_pos, num // 2)


def test_balanced_sampling_is_uniform_over_negatives():
    labels = jnp.zeros(20, jnp.int32)
    keys = jax.random.split(jax.random.key(0), 2000)
    masks = jax.vmap(lambda k: losses.balanced_sample_mask(k, labels, num_samples=5))(keys)
    np.testing.assert_allclose(np.asarray(masks).mean(axis=0), 0.25, atol=0.04)


def test_sigmoid_prior_bias_gives_probability_pi():
    b = losses.sigmoid_prior_bias(0.01)
    assert b == pytest.approx(-math.log(99))
    assert jax.nn.sigmoid(b) == pytest.approx(0.01, rel=1e-6)


def test_softmax_prior_bias_gives_total_foreground_probability_pi():
    for num_classes in (2, 81):
        p = jax.nn.softmax(jnp.asarray(losses.softmax_prior_bias(num_classes, pi=0.01)))
        assert float(p[0]) == pytest.approx(0.99, rel=1e-5)
        assert float(p[1:].sum()) == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(ValueError, match=r"pi must lie in \(0, 1\)"):
        losses.sigmoid_prior_bias(1.0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        losses.softmax_prior_bias(1)
