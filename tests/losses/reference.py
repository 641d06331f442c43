"""Independent float64 NumPy transcriptions of the paper's formulas, for the loss tests.

Written from the paper (Lin et al. 2017, eqs. 1-5 and appendix A), not from focaljax's code: the
probabilities come from `np.logaddexp`, the modulating factor from `p_t` directly, and gradients
from a separate derivation in terms of `x_t`.
"""

import numpy as np


def log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def sigmoid_focal(x, t, *, alpha, gamma):
    """-alpha_t |t - p|^gamma [t log p + (1 - t) log(1 - p)]; |t - p| = 1 - p_t for hard t."""
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    log_p, log_1mp = log_sigmoid(x), log_sigmoid(-x)
    p, one_minus_p = np.exp(log_p), np.exp(log_1mp)
    one_minus_pt = np.where(t == 1, one_minus_p, np.where(t == 0, p, np.abs(t - p)))
    # t * log_p is 0 * -inf for t = 0 at huge x; the paper's CE only has the term of the true class.
    ce = -(np.where(t == 0, 0.0, t * log_p) + np.where(t == 1, 0.0, (1 - t) * log_1mp))
    alpha_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    with np.errstate(divide="ignore"):
        mod = np.where(one_minus_pt == 0, 0.0 if gamma > 0 else 1.0, one_minus_pt**gamma)
    return alpha_t * mod * ce


def sigmoid_focal_grad_hard(x, t, *, alpha, gamma):
    """d FL / d x for t in {0, 1}, derived via x_t = (2t - 1) x and u = 1 - p_t = sigmoid(-x_t).

    FL = alpha_t u^gamma softplus(-x_t);  dFL/dx_t = -alpha_t u^gamma (gamma (1 - u) softplus(-x_t)
    + u).
    """
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    sign = 2 * t - 1
    xt = sign * x
    log_u = log_sigmoid(-xt)
    u = np.exp(log_u)
    softplus = -log_sigmoid(xt)
    alpha_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    u_gamma = np.exp(gamma * log_u) if gamma > 0 else np.ones_like(u)
    return sign * -alpha_t * u_gamma * (gamma * (1 - u) * softplus + u)


def softmax_focal(x, y, *, alpha, gamma, background_class=0):
    """-alpha_y (1 - p_y)^gamma log p_y per row of x `[N, C]`."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    log_p = x - (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))
    log_py = np.take_along_axis(log_p, np.asarray(y)[..., None], axis=-1)[..., 0]
    one_minus_py = -np.expm1(log_py)
    if alpha is None:
        alpha_y = 1.0
    elif np.ndim(alpha) == 0:
        alpha_y = np.where(np.asarray(y) == background_class, 1 - alpha, alpha)
    else:
        alpha_y = np.asarray(alpha, np.float64)[y]
    return -alpha_y * one_minus_py**gamma * log_py


def focal_loss_star(x, t, *, gamma, beta):
    x = np.asarray(x, np.float64)
    xt = np.where(np.asarray(t) == 1, x, -x)
    return -log_sigmoid(gamma * xt + beta) / gamma
