"""focaljax's focal losses against the peers' own functions, as docs/coming_from.md lists them.

Each test calls the peer (optax, Keras) itself and the focaljax call the table gives for it.
torchvision is not a dependency: its formula is the "pt" form that test_classification checks
against a float64 NumPy transcription.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from focaljax import losses


def soft_and_hard_inputs(seed, shape=(64, 10), scale=4.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, scale, shape)
    t = rng.random(shape)
    t[: shape[0] // 4] = t[: shape[0] // 4] < 0.3  # a quarter of the rows: hard 0/1 labels
    return x, t


def total_grad(fn):
    return jax.grad(lambda x, t: jnp.sum(fn(x, t)))


@pytest.mark.parametrize("gamma, alpha", list(itertools.product([0.0, 0.5, 1.0, 2.0, 3.0],
                                                                [None, 0.25, 0.6])))
def test_sigmoid_focal_pt_mode_equals_optax_on_soft_labels(gamma, alpha):
    x, t = soft_and_hard_inputs(0)
    ours = lambda x, t: losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma,
                                                  soft_target_mode="pt")
    theirs = lambda x, t: optax.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma)
    with jax.enable_x64(True):
        x64, t64 = jnp.asarray(x, jnp.float64), jnp.asarray(t, jnp.float64)
        np.testing.assert_allclose(ours(x64, t64), theirs(x64, t64), rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(total_grad(ours)(x64, t64), total_grad(theirs)(x64, t64),
                                   rtol=1e-12, atol=1e-15)
    x32, t32 = jnp.float32(x), jnp.float32(t)
    np.testing.assert_allclose(ours(x32, t32), theirs(x32, t32), rtol=5e-6, atol=1e-30)
    np.testing.assert_allclose(total_grad(ours)(x32, t32), total_grad(theirs)(x32, t32),
                               rtol=1e-5, atol=1e-6)


def test_optax_default_alpha_is_none_in_focaljax():
    # optax's alpha defaults to None (no weighting), focaljax's to the paper's 0.25.
    x, t = soft_and_hard_inputs(1)
    x, t = jnp.float32(x), jnp.float32(t)
    np.testing.assert_allclose(losses.sigmoid_focal_loss(x, t, alpha=None),
                               optax.sigmoid_focal_loss(x, t), rtol=5e-6)
    assert not np.allclose(losses.sigmoid_focal_loss(x, t), optax.sigmoid_focal_loss(x, t))


def test_quality_mode_differs_from_optax_only_on_soft_labels():
    x, t = soft_and_hard_inputs(2)
    x, t = jnp.float32(x), jnp.float32(t)
    quality = losses.sigmoid_focal_loss(x, t, alpha=None, soft_target_mode="quality")
    theirs = optax.sigmoid_focal_loss(x, t)
    hard = (t == 0) | (t == 1)
    np.testing.assert_allclose(quality[hard], theirs[hard], rtol=5e-6)
    assert np.all(np.abs(quality[~hard] - theirs[~hard]) > 1e-6 * np.abs(theirs[~hard]))


@pytest.mark.parametrize("balanced, label_smoothing, reduction",
                         list(itertools.product([False, True], [0.0, 0.1],
                                                [None, "sum", "sum_over_batch_size"])))
def test_sigmoid_focal_equals_keras_binary_focal_crossentropy(balanced, label_smoothing,
                                                              reduction):
    keras = pytest.importorskip("keras")
    x, t = soft_and_hard_inputs(3, shape=(32, 6), scale=2.0)
    x, t = np.float32(x), np.float32(t)
    theirs = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=balanced, alpha=0.3, gamma=2.0, from_logits=True,
        label_smoothing=label_smoothing, reduction=reduction)(t, x)
    per_logit = losses.sigmoid_focal_loss(x, t, alpha=0.3 if balanced else None, gamma=2.0,
                                          label_smoothing=label_smoothing)
    # Keras averages over the last axis, then reduces over the rest.
    ours = {None: jnp.mean(per_logit, axis=-1), "sum": jnp.sum(jnp.mean(per_logit, axis=-1)),
            "sum_over_batch_size": jnp.mean(per_logit)}[reduction]
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=2e-6)


def test_sigmoid_focal_equals_keras_on_probabilities_away_from_its_clipping():
    keras = pytest.importorskip("keras")
    x, t = soft_and_hard_inputs(4, shape=(32, 6), scale=2.0)
    x, t = np.float32(x), np.float32(t)
    probs = np.asarray(jax.nn.sigmoid(x))  # Keras clips these to [1e-7, 1 - 1e-7]
    theirs = keras.losses.BinaryFocalCrossentropy(gamma=2.0, reduction=None)(t, probs)
    ours = jnp.mean(losses.sigmoid_focal_loss(x, t, alpha=None, gamma=2.0), axis=-1)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.25, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
def test_softmax_focal_equals_keras_categorical_focal_crossentropy(alpha):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(5)
    x = np.float32(rng.normal(0.0, 3.0, (32, 6)))
    y = rng.integers(0, 6, 32)
    theirs = keras.losses.CategoricalFocalCrossentropy(alpha=alpha, gamma=2.0, from_logits=True)(
        np.eye(6, dtype=np.float32)[y], x)
    # Keras weights every class by a scalar alpha, where focaljax's scalar alpha is Detectron's
    # background convention: the same weights are one alpha per class.
    per_class = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (6,))
    ours = jnp.mean(losses.softmax_focal_loss(x, y, alpha=per_class, gamma=2.0))
    # Keras takes the log of clipped softmax probabilities, not a log-softmax.
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5)
