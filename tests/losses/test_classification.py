"""Tests of focaljax.losses.classification against independent references."""

import doctest
import itertools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from focaljax import losses
from focaljax.losses import classification
from tests.losses import reference as ref

EXTREME = np.array([-3e38, -1e4, -100.0, -30.0, -17.0, -5.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 5.0, 17.0,
                    30.0, 100.0, 1e4, 3e38], np.float32)
MODERATE = np.linspace(-12.0, 12.0, 97)
GAMMAS = [0.0, 0.3, 0.5, 1.0, 2.0, 2.5, 5.0]
ALPHAS = [None, 0.0, 0.25, 1.0]
MODES = ["pt", "quality"]
SETTINGS = settings(max_examples=60, deadline=None)


def grid(values, targets):
    x, t = np.meshgrid(values, targets, indexing="ij")
    return x.ravel(), t.ravel()


def sum_grad(fn, argnum=0):
    return jax.grad(lambda *args: jnp.sum(fn(*args)), argnums=argnum)


# ------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("gamma, alpha, mode", list(itertools.product(GAMMAS, ALPHAS, MODES)))
def test_sigmoid_focal_matches_float64_reference_over_extreme_logits(gamma, alpha, mode):
    x, t = grid(EXTREME, [0.0, 1.0, 0.3, 0.9])
    got = losses.sigmoid_focal_loss(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32),
                                    alpha=alpha, gamma=gamma, soft_target_mode=mode)
    want = ref.sigmoid_focal(x.astype(np.float32), t, alpha=alpha, gamma=gamma,
                             soft_target_mode=mode)
    chex.assert_shape(got, x.shape)
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_focal_gradient_finite_and_matches_closed_form_at_extreme_logits(gamma):
    for alpha in ALPHAS:
        x, t = grid(EXTREME, [0.0, 1.0])
        fn = lambda x: losses.sigmoid_focal_loss(x, jnp.asarray(t, jnp.float32), alpha=alpha,
                                                 gamma=gamma)
        got = sum_grad(fn)(jnp.asarray(x))
        want = ref.sigmoid_focal_grad_hard(x, t, alpha=alpha, gamma=gamma)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-6, atol=1e-37)


def test_sigmoid_focal_matches_optax_on_hard_targets():
    # optax's implementation is independent of ours; agree where both are accurate.
    x, t = grid(MODERATE, [0.0, 1.0])
    for gamma in (0.0, 1.0, 2.0, 5.0):
        got = losses.sigmoid_focal_loss(jnp.float32(x), jnp.float32(t), alpha=0.25, gamma=gamma)
        want = optax.sigmoid_focal_loss(jnp.float32(x), jnp.float32(t), alpha=0.25, gamma=gamma)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_sigmoid_cross_entropy_equals_optax_and_gamma_zero_focal():
    x, t = grid(MODERATE, [0.0, 0.2, 1.0])
    x, t = jnp.float32(x), jnp.float32(t)
    ce = losses.sigmoid_cross_entropy(x, t)
    np.testing.assert_allclose(ce, optax.sigmoid_binary_cross_entropy(x, t), rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(ce, losses.sigmoid_focal_loss(x, t, alpha=None, gamma=0.0))
    balanced = losses.sigmoid_cross_entropy(x, t, alpha=0.25)
    np.testing.assert_allclose(balanced, (0.25 * t + 0.75 * (1 - t)) * ce, rtol=1e-6)


def test_confident_correct_predictions_cost_exactly_zero_with_zero_gradient():
    x = jnp.array([1e4, 3e38, -1e4, -3e38], jnp.float32)
    t = jnp.array([1.0, 1.0, 0.0, 0.0], jnp.float32)
    for gamma in (0.0, 0.5, 2.0):
        fn = lambda x: losses.sigmoid_focal_loss(x, t, alpha=0.25, gamma=gamma)
        np.testing.assert_array_equal(fn(x), 0.0)
        np.testing.assert_array_equal(sum_grad(fn)(x), 0.0)
    logits = jnp.array([[1e4, 0.0, 0.0], [0.0, 3e38, -3e38]], jnp.float32)
    labels = jnp.array([0, 1])
    fn = lambda x: losses.softmax_focal_loss(x, labels, gamma=2.0)
    np.testing.assert_array_equal(fn(logits), 0.0)
    np.testing.assert_array_equal(sum_grad(fn)(logits), 0.0)


# ------------------------------------------------------------------------ soft-target modes


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_soft_target_equal_to_prediction_costs_nothing_in_quality_and_0_0324_ce_in_pt(alpha):
    with jax.enable_x64(True):
        x = jnp.log(jnp.array([9.0]))  # p = 0.9
        t = jnp.array([0.9])
        ce = losses.sigmoid_cross_entropy(x, t, alpha=alpha)
        pt = losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=2.0, soft_target_mode="pt")
        quality = losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=2.0,
                                             soft_target_mode="quality")
        # 1 - p_t = 1 - (0.9 * 0.9 + 0.1 * 0.1) = 0.18, squared 0.0324.
        np.testing.assert_allclose(pt / ce, 0.0324, rtol=1e-12)
        np.testing.assert_allclose(quality, 0.0, atol=1e-15)
        want = ref.sigmoid_focal(np.log(9.0), 0.9, alpha=alpha, gamma=2.0)
        np.testing.assert_allclose(pt, [want], rtol=1e-12)


@pytest.mark.parametrize(
    "gamma, alpha, mode",
    list(itertools.product([0.0, 0.5, 1.0, 2.0, 2.5, 3.0], [None, 0.25], MODES)),
)
def test_soft_target_gradients_match_float64_analytic_derivative(gamma, alpha, mode):
    rng = np.random.default_rng(7)
    x = rng.uniform(-9, 9, 400)
    t = np.concatenate([rng.uniform(0.01, 0.99, 397), [0.05, 0.5, 0.9]])
    want_dx, want_dt = ref.sigmoid_focal_grad_soft(x, t, alpha=alpha, gamma=gamma,
                                                   soft_target_mode=mode)
    # The reference derivative against central differences of the reference loss.
    h = 1e-6
    fd = lambda dx, dt: ref.sigmoid_focal(x + dx, t + dt, alpha=alpha, gamma=gamma,
                                          soft_target_mode=mode)
    np.testing.assert_allclose(want_dx, (fd(h, 0) - fd(-h, 0)) / (2 * h), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(want_dt, (fd(0, h) - fd(0, -h)) / (2 * h), rtol=1e-5, atol=1e-8)
    with jax.enable_x64(True):
        fn = lambda x, t: losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma,
                                                    soft_target_mode=mode)
        np.testing.assert_allclose(fn(jnp.asarray(x), jnp.asarray(t)),
                                   ref.sigmoid_focal(x, t, alpha=alpha, gamma=gamma,
                                                     soft_target_mode=mode), rtol=1e-12)
        got_dx, got_dt = sum_grad(fn, (0, 1))(jnp.asarray(x), jnp.asarray(t))
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got_dt, want_dt, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_hard_targets_give_bit_identical_loss_and_logit_gradient_in_both_modes(dtype):
    big = float(jnp.finfo(dtype).max) * 0.9
    values = np.concatenate([EXTREME, np.random.default_rng(8).normal(0, 8, 300)])
    x, t = grid(np.clip(values, -big, big), [0.0, 1.0])
    x, t = jnp.asarray(x, dtype), jnp.asarray(t, dtype)
    bits = lambda a: np.asarray(a).view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)
    for gamma, alpha in itertools.product([0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 5.0], [None, 0.25]):
        pt, quality = (
            lambda x, mode=mode: losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma,
                                                           soft_target_mode=mode)
            for mode in MODES)
        np.testing.assert_array_equal(bits(pt(x)), bits(quality(x)))
        np.testing.assert_array_equal(bits(sum_grad(pt)(x)), bits(sum_grad(quality)(x)))


def test_quality_mode_perfect_prediction_of_smoothed_target_costs_nothing():
    eps = 0.1
    t = jnp.array([0.0, 1.0, 1.0, 0.0])
    smoothed = t * (1 - eps) + eps / 2
    logits = jnp.log(smoothed) - jnp.log1p(-smoothed)  # sigmoid(logits) == smoothed target
    for gamma in (1.0, 2.0):
        fn = lambda x: losses.sigmoid_focal_loss(x, t, gamma=gamma, label_smoothing=eps,
                                                 soft_target_mode="quality")
        np.testing.assert_allclose(fn(logits), 0.0, atol=1e-7)
        # The smoothed target is the minimum: moving the prediction either way costs more.
        assert np.all(fn(logits + 0.05) > fn(logits)) and np.all(fn(logits - 0.05) > fn(logits))
    # For gamma > 1 the modulating factor is smooth at p = t and the minimum is stationary.
    fn = lambda x: losses.sigmoid_focal_loss(x, t, gamma=2.0, label_smoothing=eps,
                                             soft_target_mode="quality")
    np.testing.assert_allclose(sum_grad(fn)(logits), 0.0, atol=1e-6)


def test_pt_mode_pushes_a_smoothed_target_towards_its_hard_label():
    # (1 - p_t)^gamma CE is not minimal at p = t: for t = 0.95, gamma 2, it is at p ~ 0.995.
    eps = 0.1
    t = jnp.array([0.0, 1.0])
    smoothed = t * (1 - eps) + eps / 2
    logits = jnp.log(smoothed) - jnp.log1p(-smoothed)
    fn = lambda x: losses.sigmoid_focal_loss(x, t, gamma=2.0, label_smoothing=eps)
    assert np.all(fn(logits) > 0)
    toward_label = logits + jnp.where(t == 1, 1.0, -1.0)
    assert np.all(fn(toward_label) < fn(logits))
    np.testing.assert_array_less(0.0, -jnp.where(t == 1, 1.0, -1.0) * sum_grad(fn)(logits))


@pytest.mark.parametrize("mode", MODES)
def test_label_smoothing_is_the_loss_at_the_smoothed_target(mode):
    eps = 0.1
    x = jnp.float32(MODERATE)
    for label in (0.0, 1.0):
        hard = jnp.full_like(x, label)
        got = losses.sigmoid_focal_loss(x, hard, alpha=0.25, gamma=2.0, label_smoothing=eps,
                                        soft_target_mode=mode)
        smoothed = np.full(x.shape, label * (1 - eps) + eps / 2)
        want = ref.sigmoid_focal(np.float32(MODERATE), smoothed, alpha=0.25, gamma=2.0,
                                 soft_target_mode=mode)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "gamma, alpha", list(itertools.product([0.0, 0.5, 2.0, 5.0], [None, 0.25]))
)
def test_softmax_focal_matches_float64_reference(gamma, alpha):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(64, 5)) * rng.choice([0.1, 3.0, 30.0, 1e3], size=(64, 1)))
    labels = rng.integers(0, 5, size=64)
    got = losses.softmax_focal_loss(jnp.float32(logits), jnp.int32(labels), alpha=alpha,
                                    gamma=gamma)
    want = ref.softmax_focal(np.float32(logits), labels, alpha=alpha, gamma=gamma)
    # float32 log-softmax is exact up to the rounding of logits - logsumexp, ~1 ulp of max |x|.
    atol = 4 * np.finfo(np.float32).eps * np.abs(np.float32(logits)).max(axis=1)
    assert np.all(np.abs(np.asarray(got, np.float64) - want) <= atol + 5e-6 * np.abs(want))


def test_softmax_alpha_forms():
    rng = np.random.default_rng(1)
    logits = jnp.float32(rng.normal(size=(40, 4)))
    labels = jnp.int32(rng.integers(0, 4, size=40))
    per_class = np.array([0.1, 0.2, 0.3, 0.4])
    got = losses.softmax_focal_loss(logits, labels, alpha=per_class, gamma=2.0)
    want = ref.softmax_focal(logits, labels, alpha=per_class, gamma=2.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Detectron convention: 1 - alpha on the background class, alpha on the others.
    for bg in (0, 3):
        got = losses.softmax_focal_loss(logits, labels, alpha=0.25, background_class=bg)
        plain = losses.softmax_focal_loss(logits, labels, alpha=None)
        np.testing.assert_allclose(got, np.where(labels == bg, 0.75, 0.25) * plain, rtol=1e-6)


def test_softmax_cross_entropy_equals_optax():
    rng = np.random.default_rng(2)
    logits = jnp.float32(rng.normal(size=(50, 7)) * 10)
    labels = jnp.int32(rng.integers(0, 7, size=50))
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels),
                               optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                               rtol=1e-6, atol=1e-6)


def test_softmax_focal_finite_for_extreme_logits():
    values = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], np.float32)
    logits = jnp.asarray(list(itertools.product(values, repeat=3)), jnp.float32)
    for label, gamma in itertools.product(range(3), (0.0, 0.3, 2.0)):
        labels = jnp.full(logits.shape[:1], label)
        fn = lambda x: losses.softmax_focal_loss(x, labels, gamma=gamma)
        assert np.all(np.isfinite(fn(logits)))
        assert np.all(np.isfinite(sum_grad(fn)(logits)))
    # The largest float32 logit is fine as long as the true loss is representable.
    one_sided = jnp.array([[3e38, 0.0, 0.0], [3e38, 3e38, -5.0]], jnp.float32)
    fn = lambda x: losses.softmax_focal_loss(x, jnp.array([1, 0]), gamma=0.5)
    assert np.all(np.isfinite(fn(one_sided))) and np.all(np.isfinite(sum_grad(fn)(one_sided)))


def test_focal_loss_star_matches_reference_and_is_ce_at_gamma_one():
    x, t = grid(np.float32(EXTREME[1:-1]), [0.0, 1.0])
    for gamma, beta in ((1.0, 0.0), (2.0, 1.0), (4.0, 0.0)):
        got = losses.focal_loss_star(jnp.float32(x), jnp.float32(t), gamma=gamma, beta=beta)
        want = ref.focal_loss_star(np.float32(x), t, gamma=gamma, beta=beta)
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(
        losses.focal_loss_star(jnp.float32(x), jnp.float32(t), gamma=1.0, beta=0.0),
        losses.sigmoid_cross_entropy(jnp.float32(x), jnp.float32(t)), rtol=1e-6)


# --------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("gamma, mode",
                         list(itertools.product([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 2.5], MODES)))
def test_sigmoid_gradient_matches_autodiff_of_textbook_formula_in_float64(gamma, mode):
    with jax.enable_x64(True):
        # Where the textbook's log(1 - p) still has ~13 digits; extreme logits are covered by
        # the closed-form reference above.
        x, t = grid(np.linspace(-8, 8, 101), [0.0, 1.0, 0.05, 0.3, 0.9])
        x, t = jnp.asarray(x), jnp.asarray(t)

        def textbook(x, t):
            p = jax.nn.sigmoid(x)
            ce = -(t * jnp.log(p) + (1 - t) * jnp.log(1 - p))
            p_t = p * t + (1 - p) * (1 - t)
            factor = 1 - p_t if mode == "pt" else jnp.abs(t - p)
            return (0.25 * t + 0.75 * (1 - t)) * factor**gamma * ce

        ours = lambda x, t: losses.sigmoid_focal_loss(x, t, alpha=0.25, gamma=gamma,
                                                      soft_target_mode=mode)
        for argnum in (0, 1):
            got = sum_grad(ours, argnum)(x, t)
            want = sum_grad(textbook, argnum)(x, t)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.7])
def test_softmax_gradient_matches_autodiff_of_textbook_formula_in_float64(gamma):
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        logits = jnp.asarray(rng.normal(size=(100, 6)) * 4)
        labels = jnp.asarray(rng.integers(0, 6, size=100))

        def textbook(x):
            p = jax.nn.softmax(x)
            p_y = jnp.take_along_axis(p, labels[:, None], axis=1)[:, 0]
            alpha_y = jnp.where(labels == 0, 0.75, 0.25)
            return jnp.sum(-alpha_y * (1 - p_y) ** gamma * jnp.log(p_y))

        got = sum_grad(lambda x: losses.softmax_focal_loss(x, labels, gamma=gamma))(logits)
        np.testing.assert_allclose(got, jax.grad(textbook)(logits), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "gamma, mode, alpha, smoothing",
    list(itertools.product([0.0, 0.5, 2.0, 5.0], MODES, [None, 0.25, "per class"], [0.0, 0.1])),
)
def test_sigmoid_gradients_for_alpha_and_smoothed_targets_match_autodiff_of_textbook_in_float64(
        gamma, mode, alpha, smoothing):
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        x = jnp.asarray(rng.uniform(-8, 8, (60, 5)))
        soft = rng.uniform(0.05, 0.95, (60, 5))
        t = jnp.asarray(np.where(rng.random((60, 5)) < 0.5, soft, rng.random((60, 5)) < 0.3))
        a = {None: None, 0.25: jnp.float64(0.25),
             "per class": jnp.asarray([0.1, 0.25, 0.5, 0.75, 0.9])}[alpha]

        def textbook(x, t, a):
            t = t * (1 - smoothing) + smoothing / 2
            p = jax.nn.sigmoid(x)
            ce = -(t * jax.nn.log_sigmoid(x) + (1 - t) * jax.nn.log_sigmoid(-x))
            p_t = p * t + (1 - p) * (1 - t)
            factor = 1 - p_t if mode == "pt" else jnp.abs(t - p)
            loss = factor**gamma * ce
            return loss if a is None else (a * t + (1 - a) * (1 - t)) * loss

        ours = lambda x, t, a: losses.sigmoid_focal_loss(x, t, alpha=a, gamma=gamma,
                                                         label_smoothing=smoothing,
                                                         soft_target_mode=mode)
        argnums = (0, 1) if a is None else (0, 1, 2)
        got = sum_grad(ours, argnums)(x, t, a)
        want = sum_grad(textbook, argnums)(x, t, a)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and g.dtype == jnp.float64
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma, alpha, mode, targets", list(itertools.product(
    [0.0, 0.5, 2.0, 5.0], [None, 0.25], MODES, ["soft", "smoothed"])))
def test_float32_gradients_match_float64_derivative_up_to_logits_of_100(gamma, alpha, mode,
                                                                        targets):
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.uniform(-100, 100, 300), rng.uniform(-9, 9, 300),
                        [0.0, 1e-3, -1e-3, 100.0, -100.0]]).astype(np.float32)
    smoothing = 0.1 if targets == "smoothed" else 0.0
    if targets == "soft":
        t = rng.uniform(0.01, 0.99, x.size).astype(np.float32)
    else:
        t = (rng.random(x.size) < 0.5).astype(np.float32)
    smoothed = t * (1 - smoothing) + smoothing / 2
    want_dx, want_dt = ref.sigmoid_focal_grad_soft(x, smoothed, alpha=alpha, gamma=gamma,
                                                   soft_target_mode=mode)
    fn = lambda x, t: losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma,
                                                label_smoothing=smoothing, soft_target_mode=mode)
    got_dx, got_dt = sum_grad(fn, (0, 1))(jnp.asarray(x), jnp.asarray(t))
    got_dx, got_dt = np.asarray(got_dx, np.float64), np.asarray(got_dt, np.float64)
    assert np.all(np.abs(got_dx - want_dx) <= 1e-6 + 2e-5 * np.abs(want_dx))
    # d/dt carries -alpha_t m x, as large as the logit.
    want_dt = want_dt * (1 - smoothing)
    assert np.all(np.abs(got_dt - want_dt) <= 1e-6 * (1 + np.abs(x)) + 2e-5 * np.abs(want_dt))


def _ulp(value, dtype):
    """The spacing of `dtype`'s numbers at `value`, subnormals included."""
    info = jnp.finfo(dtype)
    binade = np.floor(np.log2(np.maximum(np.abs(value), float(info.smallest_normal))))
    return 2.0 ** (binade - info.nmant)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_gradients_are_within_a_unit_in_the_last_place_of_the_exact_gradient(dtype):
    rng = np.random.default_rng(13)
    x = jnp.asarray(np.concatenate([rng.uniform(-30, 30, 3000), rng.normal(0, 4, 3000)]), dtype)
    x64 = np.asarray(x, np.float64)
    p = 1 / (1 + np.exp(-x64))
    for hard, gamma, alpha, mode in itertools.product([True, False], [0.5, 2.0, 5.0],
                                                      [None, 0.25], MODES):
        t = rng.random(x.size) < 0.5 if hard else rng.uniform(0.02, 0.98, x.size)
        t = jnp.asarray(t, dtype)
        t64 = np.asarray(t, np.float64)
        want = ref.sigmoid_focal_grad_soft(x64, t64, alpha=alpha, gamma=gamma,
                                           soft_target_mode=mode)[0]
        fn = lambda x: losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma,
                                                 soft_target_mode=mode)
        got = np.asarray(sum_grad(fn)(x).astype(jnp.float32), np.float64)
        # XLA:CPU flushes float32 subnormals to zero: gradients below ~1e-38 may read 0.
        tolerance = _ulp(want, dtype) + 1e-37
        if dtype == jnp.bfloat16:
            # From the loss rounded to bfloat16: plus a unit of the larger of the gradient's two
            # terms, alpha_t m (p - t) and the modulating factor's, where they cancel.
            alpha_t = 1.0 if alpha is None else alpha * t64 + (1 - alpha) * (1 - t64)
            a = t64 * (1 - p) + (1 - t64) * p if mode == "pt" else np.abs(t64 - p)
            ce_term = alpha_t * a**gamma * (p - t64)
            tolerance += _ulp(np.abs(want - ce_term) + np.abs(ce_term), dtype)
        assert np.all(np.abs(got - want) <= tolerance), (hard, gamma, alpha, mode)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_loss_is_the_same_number_with_and_without_its_gradient(dtype):
    x, t = grid(np.clip(EXTREME, -6e4, 6e4), [0.0, 1.0, 0.3])
    x, t = jnp.asarray(x, dtype), jnp.asarray(t, dtype)
    for gamma, alpha, mode, smoothing in itertools.product([0.0, 0.5, 2.0], [None, 0.25], MODES,
                                                           [0.0, 0.1]):
        fn = lambda x: losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma,
                                                 label_smoothing=smoothing, soft_target_mode=mode)
        # Both jitted: the smoothed targets' constants fold alike.
        with_gradient = jax.jit(lambda x: jax.vjp(fn, x)[0])(x)
        chex.assert_trees_all_equal(with_gradient, jax.jit(fn)(x))


def test_integer_and_boolean_targets_give_the_gradient_of_float_targets():
    x = jnp.float32(MODERATE)
    hard = np.arange(x.size) % 3 == 0
    fn = lambda t: sum_grad(lambda x: losses.sigmoid_focal_loss(x, t, label_smoothing=0.1))(x)
    want = fn(jnp.float32(hard))
    chex.assert_trees_all_equal(fn(jnp.asarray(hard)), want)
    chex.assert_trees_all_equal(fn(jnp.int32(hard)), want)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_summed_loss_and_its_gradient_keep_no_other_array_on_cpu(dtype):
    # The gradient is computed from the loss and written over its array once the loss is summed:
    # the only [N, C] array left is the gradient itself (BENCHMARKS.md).
    if jax.default_backend() != "cpu":
        pytest.skip("a property of XLA:CPU's fusion and scheduling")
    shape = (20000, 80)
    x = jax.ShapeDtypeStruct(shape, dtype)
    w = jax.ShapeDtypeStruct((shape[0], 1), jnp.float32)
    for reduce in (jnp.sum, lambda loss, w: jnp.sum(loss * w) / 7.0):
        for mode in MODES:
            fn = lambda x, t, *w: reduce(losses.sigmoid_focal_loss(x, t, soft_target_mode=mode),
                                         *w)
            args = (x, x, w) if reduce is not jnp.sum else (x, x)
            compiled = jax.jit(jax.value_and_grad(fn)).lower(*args).compile()
            temporaries = compiled.memory_analysis().temp_size_in_bytes
            assert temporaries < 0.1 * np.prod(shape) * jnp.dtype(dtype).itemsize, (reduce, mode)


def test_custom_gradients_pass_numerical_check_in_float64():
    with jax.enable_x64(True):
        x = jnp.array([-4.0, -0.7, 0.3, 2.0, 6.0])
        t = jnp.array([0.0, 1.0, 0.4, 0.8, 1.0])
        for gamma, mode in itertools.product((0.5, 2.0), MODES):
            check_grads(lambda x, t: losses.sigmoid_focal_loss(x, t, gamma=gamma,
                                                               soft_target_mode=mode), (x, t),
                        order=1, modes=["rev"], eps=1e-6)
            check_grads(lambda x: losses.softmax_focal_loss(
                x.reshape(1, 5), jnp.array([2]), gamma=gamma), (x,), order=1, modes=["rev"],
                eps=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_loss_and_gradient_finite_everywhere(dtype):
    big = float(jnp.finfo(dtype).max) * 0.9
    x, t = grid(np.clip(EXTREME, -big, big), [0.0, 1.0, 0.5])
    x, t = jnp.asarray(x, dtype), jnp.asarray(t, dtype)
    for gamma, alpha, mode in itertools.product([0.0, 0.1, 0.5, 1.0, 2.0, 5.0], ALPHAS, MODES):
        fn = lambda x: losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma,
                                                 soft_target_mode=mode)
        value, grad = fn(x), sum_grad(fn)(x)
        chex.assert_type([value, grad], dtype)
        chex.assert_tree_all_finite([value.astype(jnp.float32), grad.astype(jnp.float32)])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    x = jnp.asarray(MODERATE, dtype)
    t = jnp.asarray(np.arange(x.size) % 2, dtype)
    got = losses.sigmoid_focal_loss(x, t)
    want = losses.sigmoid_focal_loss(x.astype(jnp.float32), t.astype(jnp.float32)).astype(dtype)
    chex.assert_type(got, dtype)
    chex.assert_trees_all_equal(got, want)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), dtype)
    labels = jnp.arange(8) % 3
    chex.assert_type(losses.softmax_focal_loss(logits, labels), dtype)


# ----------------------------------------------------------------------------- properties


@SETTINGS
@given(x=hnp.arrays(np.float32, 16, elements=st.floats(-50, 50, width=32)),
       t=hnp.arrays(np.float32, 16, elements=st.sampled_from([0.0, 1.0])),
       gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]), alpha=st.sampled_from([None, 0.25, 0.75]))
def test_focal_loss_never_exceeds_cross_entropy(x, t, gamma, alpha):
    fl = losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma)
    ce = losses.sigmoid_cross_entropy(x, t, alpha=alpha)
    assert np.all(fl <= ce * (1 + 1e-6))


@SETTINGS
@given(x=hnp.arrays(np.float32, 16, elements=st.floats(-30, 30, width=32)),
       t=hnp.arrays(np.float32, 16, elements=st.floats(0, 1, width=32)))
def test_gamma_zero_without_alpha_is_cross_entropy(x, t):
    np.testing.assert_allclose(losses.sigmoid_focal_loss(x, t, alpha=None, gamma=0.0),
                               optax.sigmoid_binary_cross_entropy(x, t), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(p_t=st.floats(0.6, 0.999), positive=st.booleans())
def test_easy_examples_are_down_weighted_by_one_over_one_minus_p_squared(p_t, positive):
    logit = np.log(p_t) - np.log1p(-p_t)
    x = jnp.float32([logit if positive else -logit])
    t = jnp.float32([1.0 if positive else 0.0])
    ratio = losses.sigmoid_cross_entropy(x, t) / losses.sigmoid_focal_loss(x, t, alpha=None,
                                                                            gamma=2.0)
    np.testing.assert_allclose(ratio, 1 / (1 - p_t) ** 2, rtol=1e-3)


@SETTINGS
@given(logits=hnp.arrays(np.float32, (4, 6), elements=st.floats(-20, 20, width=32)),
       shift=st.floats(-100, 100, width=32), gamma=st.sampled_from([0.0, 0.5, 2.0]))
def test_softmax_losses_are_invariant_to_a_constant_logit_shift(logits, shift, gamma):
    labels = jnp.array([0, 1, 2, 5])
    a = losses.softmax_focal_loss(logits, labels, gamma=gamma)
    b = losses.softmax_focal_loss(logits + shift, labels, gamma=gamma)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@SETTINGS
@given(x=hnp.arrays(np.float32, (8, 3), elements=st.floats(-1e4, 1e4, width=32)),
       ignore=hnp.arrays(bool, (8,)))
def test_ignored_anchors_give_zero_gradient(x, ignore):
    t = jnp.zeros((8, 3)).at[:, 1].set(1.0)
    weights = jnp.where(ignore, 0.0, 1.0)[:, None]
    grad = sum_grad(lambda x: losses.weighted_sum(losses.sigmoid_focal_loss(x, t), weights))(x)
    np.testing.assert_array_equal(np.asarray(grad)[np.asarray(ignore)], 0.0)


def test_per_anchor_form_mapped_with_vmap_equals_the_batched_call():
    rng = np.random.default_rng(4)
    x = jnp.float32(rng.normal(size=(2, 30, 5)) * 5)
    t = jnp.float32(rng.random((2, 30, 5)) < 0.2)
    per_anchor = lambda x, t: losses.sigmoid_focal_loss(x, t)
    chex.assert_trees_all_close(jax.vmap(jax.vmap(per_anchor))(x, t), per_anchor(x, t),
                                rtol=1e-6)
    labels = jnp.int32(rng.integers(0, 5, size=(2, 30)))
    one = lambda x, y: losses.softmax_focal_loss(x, y)
    chex.assert_trees_all_close(jax.vmap(jax.vmap(one))(x, labels), one(x, labels), rtol=1e-6)


# ----------------------------------------------------------- jit / no jit / pmap variants


class TransformsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    @parameterized.parameters(0.0, 0.5, 2.0)
    def test_sigmoid_focal_is_the_same_under_every_transform(self, gamma):
        x = jnp.float32(np.linspace(-8, 8, 24).reshape(4, 6))
        t = jnp.float32(np.arange(24).reshape(4, 6) % 3 == 0)
        fn = self.variant(lambda x, t: losses.sigmoid_focal_loss(x, t, gamma=gamma))
        want = ref.sigmoid_focal(np.float32(x), np.asarray(t), alpha=0.25, gamma=gamma)
        np.testing.assert_allclose(fn(x, t), want, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    def test_softmax_focal_is_the_same_under_every_transform(self):
        x = jnp.float32(np.linspace(-8, 8, 24).reshape(4, 6))
        y = jnp.array([0, 2, 5, 1])
        fn = self.variant(lambda x, y: losses.softmax_focal_loss(x, y))
        want = ref.softmax_focal(np.float32(x), np.asarray(y), alpha=0.25, gamma=2.0)
        np.testing.assert_allclose(fn(x, y), want, rtol=1e-6)


def test_pmap_over_four_devices_equals_one_call():
    assert jax.local_device_count() == 4
    x = jnp.float32(np.random.default_rng(5).normal(size=(4, 10, 3)) * 4)
    t = jnp.float32(np.random.default_rng(6).random((4, 10, 3)) < 0.3)
    fn = lambda x, t: losses.sigmoid_focal_loss(x, t)
    chex.assert_trees_all_close(jax.pmap(fn)(x, t), fn(x, t), rtol=1e-6)


# ---------------------------------------------------------------------------------- errors


def test_bad_input_gets_a_clear_error_before_tracing():
    x = jnp.zeros((8, 80))
    with pytest.raises(ValueError, match=r"targets has shape \(8, 4\), expected the shape of "
                                         r"logits \(8, 80\)"):
        losses.sigmoid_focal_loss(x, jnp.zeros((8, 4)))
    with pytest.raises(TypeError, match="logits has dtype int32, expected a floating dtype"):
        losses.sigmoid_focal_loss(jnp.zeros((8, 80), jnp.int32), x)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        losses.sigmoid_focal_loss(x, x, gamma=-1.0)
    with pytest.raises(TypeError, match="gamma must be a Python number"):
        losses.sigmoid_focal_loss(x, x, gamma=jnp.float32(2.0))
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        losses.sigmoid_focal_loss(x, x, alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha has shape \(2, 8, 80\), expected a shape that "
                                         r"broadcasts to the shape of logits \(8, 80\)"):
        losses.sigmoid_focal_loss(x, x, alpha=jnp.ones((2, 8, 80)) / 2)
    with pytest.raises(TypeError, match="labels has dtype float32, expected an integer dtype"):
        losses.softmax_focal_loss(x, jnp.zeros((8,), jnp.float32))
    with pytest.raises(ValueError, match=r"labels has shape \(8, 80\), expected"):
        losses.softmax_focal_loss(x, jnp.zeros((8, 80), jnp.int32))
    with pytest.raises(ValueError, match=r"alpha has shape \(3,\), expected a scalar or \(80,\)"):
        losses.softmax_focal_loss(x, jnp.zeros((8,), jnp.int32), alpha=jnp.ones(3) / 2)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        losses.focal_loss_star(x, x, gamma=0.0)


@pytest.mark.parametrize("mode", ["p_t", "PT", "", None, 1])
def test_unknown_soft_target_mode_is_refused_naming_the_valid_ones(mode):
    x = jnp.zeros((8, 80))
    with pytest.raises(ValueError, match=rf"soft_target_mode is {mode!r}, expected one of "
                                         r"\('pt', 'quality'\)"):
        losses.sigmoid_focal_loss(x, x, soft_target_mode=mode)


def test_docstring_examples_run():
    results = doctest.testmod(classification)
    assert results.attempted > 0 and results.failed == 0
