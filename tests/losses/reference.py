"""Independent float64 NumPy transcriptions of the paper's formulas, for the loss tests.

Written from the paper (Lin et al. 2017, eqs. 1-5 and appendix A) and, for soft targets, from
the peers' `p_t = p t + (1 - p)(1 - t)` (optax, torchvision, Keras) and Li et al.'s `|t - p|`, not
from focaljax's code: the probabilities come from `np.logaddexp`, the modulating factor from `p_t`
directly, and gradients from separate derivations (in `x_t` for hard targets, in `p` for soft).
"""

import numpy as np


def log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def _one_minus_pt(p, one_minus_p, t, soft_target_mode):
    """1 - p_t with p_t = p t + (1 - p)(1 - t) (optax, torchvision, Keras), or |t - p| (GFL).

    For hard t both are the probability of the wrong class, taken from its own log-sigmoid.
    """
    if soft_target_mode == "pt":
        soft = t * one_minus_p + (1 - t) * p
    elif soft_target_mode == "quality":
        soft = np.abs(t - p)
    else:
        raise ValueError(soft_target_mode)
    return np.where(t == 1, one_minus_p, np.where(t == 0, p, soft))


def sigmoid_focal(x, t, *, alpha, gamma, soft_target_mode="pt"):
    """-alpha_t m [t log p + (1 - t) log(1 - p)], m = (1 - p_t)^gamma or |t - p|^gamma."""
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    log_p, log_1mp = log_sigmoid(x), log_sigmoid(-x)
    p, one_minus_p = np.exp(log_p), np.exp(log_1mp)
    one_minus_pt = _one_minus_pt(p, one_minus_p, t, soft_target_mode)
    # t * log_p is 0 * -inf for t = 0 at huge x; the paper's CE only has the term of the true class.
    ce = -(np.where(t == 0, 0.0, t * log_p) + np.where(t == 1, 0.0, (1 - t) * log_1mp))
    alpha_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    with np.errstate(divide="ignore"):
        mod = np.where(one_minus_pt == 0, 0.0 if gamma > 0 else 1.0, one_minus_pt**gamma)
    return alpha_t * mod * ce


def sigmoid_focal_grad_soft(x, t, *, alpha, gamma, soft_target_mode):
    """(d FL / d x, d FL / d t) for 0 < t < 1 and t != p, by the product rule in p.

    FL = A u^gamma C with A = alpha_t, C = -(t log p + (1 - t) log(1 - p)), dp/dx = p (1 - p):
        dC/dx = p - t,  dC/dt = -(log p - log(1 - p)),  dA/dt = 2 alpha - 1;
        "pt":      u = t (1 - p) + (1 - t) p,  du/dp = 1 - 2t,  du/dt = 1 - 2p;
        "quality": u = |t - p|,               du/dp = -sign(t - p),  du/dt = sign(t - p).
    """
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    log_p, log_1mp = log_sigmoid(x), log_sigmoid(-x)
    p = np.exp(log_p)
    c = -(t * log_p + (1 - t) * log_1mp)
    dc_dx, dc_dt = p - t, -(log_p - log_1mp)
    if soft_target_mode == "pt":
        u = t * (1 - p) + (1 - t) * p
        du_dp, du_dt = 1 - 2 * t, 1 - 2 * p
    else:
        u = np.abs(t - p)
        du_dp, du_dt = -np.sign(t - p), np.sign(t - p)
    a, da_dt = (1.0, 0.0) if alpha is None else (alpha * t + (1 - alpha) * (1 - t), 2 * alpha - 1)
    m = u**gamma
    dm_du = gamma * u ** (gamma - 1)
    dx = a * (dm_du * du_dp * p * (1 - p) * c + m * dc_dx)
    dt = da_dt * m * c + a * (dm_du * du_dt * c + m * dc_dt)
    return dx, dt


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
