"""Tests of the box-regression losses against independent NumPy formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax import losses


def numpy_smooth_l1(d, beta):
    d = np.abs(np.asarray(d, np.float64))
    if beta == 0:
        return d
    return np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)


@pytest.mark.parametrize("beta", [0.0, 1.0 / 9, 0.1, 1.0])
def test_smooth_l1_matches_detectron2_formula(beta):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(50, 4)).astype(np.float32)
    target = rng.normal(size=(50, 4)).astype(np.float32)
    got = losses.smooth_l1_loss(pred, target, beta=beta)
    chex.assert_shape(got, (50, 4))
    np.testing.assert_allclose(got, numpy_smooth_l1(pred - target, beta), rtol=1e-6, atol=1e-7)


def test_smooth_l1_is_continuous_at_beta_and_l1_at_beta_zero():
    beta = 0.5
    d = jnp.array([beta - 1e-6, beta, beta + 1e-6])
    values = losses.smooth_l1_loss(d, jnp.zeros(3), beta=beta)
    np.testing.assert_allclose(values, [0.25, 0.25, 0.25], atol=2e-6)
    x = jnp.array([-2.0, -0.01, 0.3, 4.0])
    np.testing.assert_array_equal(losses.smooth_l1_loss(x, jnp.zeros(4), beta=0.0), jnp.abs(x))
    grad = jax.grad(lambda x: losses.smooth_l1_loss(x, jnp.zeros(4), beta=1.0).sum())(x)
    np.testing.assert_allclose(grad, [-1.0, -0.01, 0.3, 1.0], rtol=1e-6)


def numpy_giou(b1, b2):
    b1, b2 = np.asarray(b1, np.float64), np.asarray(b2, np.float64)
    out = []
    for (a0, a1, a2, a3), (c0, c1, c2, c3) in zip(b1, b2, strict=True):
        iw = max(0.0, min(a2, c2) - max(a0, c0))
        ih = max(0.0, min(a3, c3) - max(a1, c1))
        inter = iw * ih
        union = (a2 - a0) * (a3 - a1) + (c2 - c0) * (c3 - c1) - inter
        hull = (max(a2, c2) - min(a0, c0)) * (max(a3, c3) - min(a1, c1))
        out.append(inter / union - (hull - union) / hull)
    return np.array(out)


def test_giou_loss_matches_hand_computed_and_numpy_reference():
    b1 = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 3, 4]], np.float32)
    b2 = np.array([[0, 0, 2, 2], [2, 2, 3, 3], [0, 0, 2, 2], [0, 2, 2, 5]], np.float32)
    got = losses.giou_loss(b1, b2)
    # Identical: 0. Disjoint unit boxes in a 3x3 hull: 1 - (0 - 7/9). Nested: 1 - 1/4.
    np.testing.assert_allclose(got[:3], [0.0, 1 + 7 / 9, 0.75], rtol=1e-6)
    np.testing.assert_allclose(got, 1 - numpy_giou(b1, b2), rtol=1e-5)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, size=(200, 2, 2))
    wh = rng.uniform(1, 30, size=(200, 2, 2))
    boxes = np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)
    got = losses.giou_loss(boxes[:, 0], boxes[:, 1])
    np.testing.assert_allclose(got, 1 - numpy_giou(boxes[:, 0], boxes[:, 1]), rtol=1e-4,
                               atol=1e-5)
    assert np.all((got >= 0) & (got <= 2))


def test_giou_loss_gradient_finite_for_degenerate_boxes():
    b1 = jnp.array([[1.0, 1.0, 1.0, 1.0], [0, 0, 2, 2], [5, 5, 5, 9]])
    b2 = jnp.array([[1.0, 1.0, 1.0, 1.0], [0, 0, 2, 2], [0, 0, 0, 0]])
    value, grad = jax.value_and_grad(lambda b: losses.giou_loss(b, b2).sum())(b1)
    chex.assert_tree_all_finite((value, grad))


def test_regression_losses_reject_bad_input():
    with pytest.raises(ValueError, match=r"target has shape \(3, 4\), expected the shape of pred"):
        losses.smooth_l1_loss(jnp.zeros((2, 4)), jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="beta must be >= 0"):
        losses.smooth_l1_loss(jnp.zeros(4), jnp.zeros(4), beta=-1.0)
    with pytest.raises(ValueError, match=r"boxes1 has shape \(2, 3\), expected \(..., 4\)"):
        losses.giou_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
