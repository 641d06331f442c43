"""Figure 4's numerics (`focaljax.evaluation.loss_curves`) against the library's own focal loss
and a float64 NumPy computation of the cumulative curves."""

import doctest
import math

import jax.numpy as jnp
import numpy as np
import pytest

from focaljax import losses
from focaljax.evaluation import loss_curves


def _anchors(seed=0, num_anchors=3000, num_classes=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(-3.0, 2.0, (num_anchors, num_classes)).astype(np.float32)
    labels = np.where(rng.random(num_anchors) < 0.05,
                      rng.integers(0, num_classes, num_anchors), -1)
    weights = (rng.random(num_anchors) > 0.1).astype(np.float32)  # 10% ignored.
    return logits, labels, weights


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_anchor_losses_are_the_focal_loss_target_term_for_positives_and_all_terms_otherwise(gamma):
    logits, labels, _ = _anchors()
    targets = (labels[:, None] == np.arange(logits.shape[1])).astype(np.float32)
    per_logit = np.asarray(losses.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(targets),
                                                     alpha=None, gamma=gamma))
    expected = np.where(labels >= 0, np.sum(per_logit * targets, axis=1), per_logit.sum(axis=1))
    got = loss_curves.anchor_focal_losses(logits, labels, gamma=gamma)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)


def _numpy_curves(logits, labels, weights, gamma):
    x = logits.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    target = labels[:, None] == np.arange(logits.shape[1])[None, :]
    p_t = np.where(target, p, 1.0 - p)
    terms = -((1.0 - p_t) ** gamma) * np.log(p_t)
    anchor_loss = np.where(labels >= 0, np.sum(terms * target, axis=1), terms.sum(axis=1))
    curves = {}
    for group, keep in (("positive", (labels >= 0) & (weights > 0)),
                        ("negative", (labels < 0) & (weights > 0))):
        values = np.sort(anchor_loss[keep])
        curves[group] = np.concatenate([[0.0], np.cumsum(values)]) / values.sum()
    return curves


def test_figure4_curves_match_a_float64_numpy_computation():
    logits, labels, weights = _anchors()
    curves = loss_curves.cumulative_loss_curves(logits, labels, weights,
                                                gammas=(0.0, 0.5, 1.0, 2.0))
    assert sorted(curves) == [0.0, 0.5, 1.0, 2.0]
    for gamma, groups in curves.items():
        expected = _numpy_curves(logits, labels, weights, gamma)
        for group in ("positive", "negative"):
            assert groups[group].shape == expected[group].shape
            np.testing.assert_allclose(groups[group], expected[group], rtol=2e-5, atol=1e-6,
                                       err_msg=f"gamma {gamma} {group}")
    # The hardest 10% of the negatives carry more of the loss as gamma grows (the paper's point).
    shares = [loss_curves.share_of_hardest(curves[g]["negative"], 0.1)
              for g in (0.0, 0.5, 1.0, 2.0)]
    assert shares == sorted(shares) and shares[-1] > shares[0] + 0.1
    num_negatives = int(np.sum((labels < 0) & (weights > 0)))
    numpy_share = 1.0 - _numpy_curves(logits, labels, weights, 2.0)["negative"][
        -1 - math.ceil(0.1 * num_negatives)]
    assert shares[-1] == pytest.approx(numpy_share, rel=1e-5)


def test_curves_of_an_empty_group_and_all_zero_losses():
    assert loss_curves.share_of_hardest(np.zeros(1), 0.1) != loss_curves.share_of_hardest(
        np.zeros(1), 0.1)  # NaN: no anchor.
    np.testing.assert_array_equal(loss_curves.cumulative_share(np.zeros(3)), np.zeros(4))
    assert loss_curves.curve_points(np.zeros(1)) == []


def test_bad_shapes_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"logits has shape \(3,\), expected \[anchors, classes\]"):
        loss_curves.cumulative_loss_curves(np.zeros(3), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match=r"labels has shape \(2,\) and weights \(3,\), expected "):
        loss_curves.cumulative_loss_curves(np.zeros((3, 2)), np.zeros(2), np.ones(3))


def test_docstring_examples_run():
    assert doctest.testmod(loss_curves).failed == 0
