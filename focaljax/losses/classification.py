"""Classification losses for dense detection: focal loss, cross-entropy and FL*.

All losses here are elementwise in the anchor dimensions: the sigmoid losses act on each logit
independently and the softmax losses on each anchor's class vector, so `loss(x)[i]` only depends on
anchor `i` and the functions equal their single-anchor form mapped with `jax.vmap` (tested).

The focal losses have a hand-derived gradient (`jax.custom_vjp`), computed in the same pass as the
loss: the fused forward/backward that Detectron and mmcv wrote as CUDA kernels. Besides speed
this keeps the gradient finite where autodiff of the textbook formula is not, e.g.
`(1 - p_t)^(gamma - 1)` for `0 < gamma < 1` as `p_t -> 1`. Integer `gamma` takes a multiply-only
path (no `exp(gamma * log)`).

For soft targets the sigmoid focal loss has two modulating factors to choose from
(`soft_target_mode`): optax's, torchvision's and Keras's `(1 - p_t)^gamma` (the default) and the
"quality focal" `|t - p|^gamma` of Li et al. 2020; both are the paper's factor for hard targets.

16-bit inputs are computed in float32 and returned in their own dtype.

Reference: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal Loss for Dense Object
Detection", ICCV 2017 (arXiv:1708.02002).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from focaljax.losses import _validation as v

Array = jax.Array


def _integer_power(a: Array, n: int) -> Array:
    return jnp.ones_like(a) if n == 0 else lax.integer_pow(a, n)


def _end_fusion(y: Array) -> Array:
    """`y`, unchanged in value and gradient, behind an op XLA:CPU keeps in a loop fusion.

    XLA:CPU hands a `sum` of a loss to a YNNPACK reduction that absorbs the simple elementwise ops
    before it but not `exp` or `log1p`, which breaks the loss into one materialized array per
    transcendental. Ending the loss on a rounding to its own precision (an identity) keeps the
    whole loss in one fusion feeding the reduction (BENCHMARKS.md).
    """
    info = jnp.finfo(y.dtype)
    return lax.reduce_precision(y, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _safe_div(num: Array, den: Array) -> Array:
    """num / den where den > 0, else 0 (the limit the callers need at den = 0)."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1), 0)


# ---------------------------------------------------------------------------------------------
# Sigmoid focal loss.


def _sigmoid_focal_parts(x: Array, t: Array, e: Array, gamma: float, soft_target_mode: str):
    """Loss, d loss / d x and d loss / d t of the unweighted sigmoid focal loss, elementwise.

    Takes e = exp(-|x|) and uses one more log1p per element:
        p = sigmoid(x), q = 1 - p = sigmoid(-x), both from e = exp(-|x|) without cancellation;
        ce = softplus(x) - t x = max(x, 0) - t x + log1p(e);
        d = t - p = t q - (1 - t) p  (exact for hard targets, even when p rounds to 1);
        dce/dx = p - t = -d,  dce/dt = -x.
    The modulating factor m = a^gamma, with a = 1 - p_t = t q + (1 - t) p in mode "pt" and a = |d|
    in mode "quality" (the same number for hard targets). With w = 2t - 1 and s = sign(d):
        "pt":       da/dx = -w p q,  da/dt = q - p;
        "quality":  da/dx = -s p q,  da/dt = s.
    The factor a^(gamma - 1) is only formed for integer gamma >= 1; otherwise it is folded into
    m * (p q / a) and m * (ce / a), which stay finite (for hard targets p q / a is p or q; for soft
    targets in mode "pt" a >= min(t, 1 - t) > 0). For hard targets both modes give the same loss
    and d loss / d x bit for bit (w = s and t q + (1 - t) p = |d| exactly); d loss / d t differs, as
    the two factors only agree at t in {0, 1}.
    """
    log1p_e = jnp.log1p(e)
    inv = 1 / (1 + e)
    nonneg = x >= 0
    p = jnp.where(nonneg, inv, e * inv)
    q = jnp.where(nonneg, e * inv, inv)
    ce = jnp.maximum(x, 0) - t * x + log1p_e
    d = t * q - (1 - t) * p
    if gamma == 0:
        return ce, -d, -x
    integer = float(gamma).is_integer()
    if soft_target_mode == "pt":
        a = t * q + (1 - t) * p
        w = t - (1 - t)  # 2t - 1, sharing 1 - t with d
        if integer:
            # a^(gamma - 1), as a a^(gamma - 2) from gamma = 2 on: the quality mode's
            # d a^(gamma - 2) up to the sign w, so that hard targets round alike in both modes.
            am1 = 1.0 if gamma == 1 else a * _integer_power(a, int(gamma) - 2)
            m = _integer_power(a, int(gamma))
            loss = m * ce
            dx = -am1 * (w * gamma * p * q * ce + a * d)
            dt = gamma * am1 * (q - p) * ce - m * x
            return loss, dx, dt
        m = jnp.exp(gamma * jnp.log(a))  # log(0) = -inf gives m = 0, the right limit for gamma > 0
        loss = m * ce
        dx = -m * (w * gamma * _safe_div(p * q, a) * ce + d)
        dt = gamma * m * (q - p) * _safe_div(ce, a) - m * x
        return loss, dx, dt
    a = jnp.abs(d)
    if integer:
        # s a^(gamma - 1), as d a^(gamma - 2) from gamma = 2 on (no sign needed).
        sm1 = jnp.sign(d) if gamma == 1 else d * _integer_power(a, int(gamma) - 2)
        m = _integer_power(a, int(gamma))
        loss = m * ce
        dx = -sm1 * (gamma * p * q * ce + a * a)
        dt = gamma * sm1 * ce - m * x
        return loss, dx, dt
    s = jnp.sign(d)
    m = jnp.exp(gamma * jnp.log(a))
    loss = m * ce
    dx = -s * m * (gamma * _safe_div(p * q, a) * ce + a)
    dt = gamma * s * m * _safe_div(ce, a) - m * x
    return loss, dx, dt


def _two_copies(e: Array) -> tuple[Array, Array]:
    """`(e, e)`; on CPU as two values XLA cannot merge back into one.

    The loss and its gradient both start from `e = exp(-|x|)`. On XLA:CPU, which has no
    multi-output fusion, an `exp`, `log1p` or division with consumers in two fusions is computed
    once into its own array: five arrays written and read again. With its own copy of `e`, each
    of the two fusions (loss, gradient) computes its own `log1p` and division from one shared
    array: cheaper here than the memory traffic it saves (BENCHMARKS.md). Elsewhere the two are
    one value, fused as the compiler likes.
    """
    return lax.platform_dependent(
        e, cpu=lambda e: lax.optimization_barrier((e, e)), default=lambda e: (e, e)
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _sigmoid_focal(x: Array, t: Array, gamma: float, soft_target_mode: str) -> Array:
    return _sigmoid_focal_parts(x, t, jnp.exp(-jnp.abs(x)), gamma, soft_target_mode)[0]


def _sigmoid_focal_fwd(x, t, gamma, soft_target_mode):
    e_loss, e_grad = _two_copies(jnp.exp(-jnp.abs(x)))
    loss = _sigmoid_focal_parts(x, t, e_loss, gamma, soft_target_mode)[0]
    _, dx, dt = _sigmoid_focal_parts(x, t, e_grad, gamma, soft_target_mode)
    return loss, (dx, dt)


def _sigmoid_focal_bwd(gamma, soft_target_mode, residuals, g):
    dx, dt = residuals
    return g * dx, g * dt


_sigmoid_focal.defvjp(_sigmoid_focal_fwd, _sigmoid_focal_bwd)


def _alpha_t(alpha: ArrayLike, t: Array) -> Array:
    return alpha * t + (1 - alpha) * (1 - t)


SOFT_TARGET_MODES = ("pt", "quality")


def sigmoid_focal_loss(
        logits: ArrayLike,
        targets: ArrayLike,
        *,
        alpha: float | ArrayLike | None = 0.25,
        gamma: float = 2.0,
        label_smoothing: float = 0.0,
        soft_target_mode: str = "pt",
) -> Array:
    r"""Sigmoid focal loss, elementwise (Lin et al. 2017, eq. 5).

    .. math::
        FL(x, t) = -\alpha_t \, m(p, t) \, [t \log p + (1 - t) \log(1 - p)],
        \quad p = \sigma(x), \quad \alpha_t = \alpha t + (1 - \alpha)(1 - t),

    with the modulating factor `m` chosen by `soft_target_mode`:

    .. math::
        m_{pt} = (1 - p_t)^\gamma, \quad p_t = p t + (1 - p)(1 - t); \qquad
        m_{quality} = |t - p|^\gamma.

    For hard targets `t` in {0, 1} both are the paper's `(1 - p_t)^gamma` and the loss is
    `-alpha_t (1 - p_t)^gamma log(p_t)`; the two modes then give the same loss and gradient with
    respect to `logits`, bit for bit (not with respect to `targets`: the two factors only agree at
    0 and 1). They differ for soft targets (label smoothing, soft labels):

    * `"pt"` (default): `1 - p_t = t (1 - p) + (1 - t) p`, the form of `optax.sigmoid_focal_loss`,
      `torchvision.ops.sigmoid_focal_loss` and `keras.losses.BinaryFocalCrossentropy`: the same
      loss as those for the same `alpha`, `gamma` and targets (docs/coming_from.md). The factor
      is not 0 at `p = t` (at `t = p = 0.9` it is 0.0324 for gamma 2), and for `t != 1/2` the
      loss is minimal beyond the target, towards the nearer hard label (for `t = 0.95`, gamma 2:
      at `p ~ 0.995`).
    * `"quality"`: the "quality focal" factor of Li et al., "Generalized Focal Loss", NeurIPS 2020
      (arXiv:2006.04388): the loss is 0, and minimal, where `p = t`, so a smoothed or soft target
      is kept, not pushed towards 0 or 1.

    `"pt"` is the default because it is the paper's `(1 - p_t)` read literally for soft `t`, and
    what every peer computes, so that a model ported from one of them trains on the same loss.
    For hard targets, which is what the detectors here and the shipped configs use
    (`model.loss.label_smoothing = 0.0`), the choice changes nothing. Before the mode existed,
    soft targets took the `"quality"` form.

    Label smoothing replaces `t` by `t (1 - label_smoothing) + label_smoothing / 2` (Keras's
    `label_smoothing`) in the cross-entropy, in `alpha_t` and in the modulating factor.

    Args:
        logits: float array of any shape, e.g. `[anchors, classes]`.
        targets: array of the shape of `logits`, values in [0, 1] (bool and integer one-hot
            accepted).
        alpha: weight of the positive class in [0, 1] (a scalar, or an array broadcastable to
            `logits` such as one value per class); `None` disables alpha-weighting.
        gamma: focusing parameter, >= 0. `gamma=0` is exactly (alpha-balanced) binary cross-entropy.
        label_smoothing: in [0, 1).
        soft_target_mode: `"pt"` or `"quality"`, the modulating factor for soft targets (above).

    Returns:
        The loss, of the shape and dtype of `logits`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from focaljax.losses import sigmoid_focal_loss
        >>> x = jnp.log(jnp.array([9.0]))  # sigmoid(x) = 0.9
        >>> t = jnp.array([0.9])
        >>> ce = sigmoid_focal_loss(x, t, alpha=None, gamma=0.0)
        >>> pt = sigmoid_focal_loss(x, t, alpha=None)  # (1 - p_t)^2 = (1 - 0.82)^2
        >>> print(f"{float(pt[0] / ce[0]):.4f}")
        0.0324
        >>> quality = sigmoid_focal_loss(x, t, alpha=None, soft_target_mode="quality")
        >>> print(f"{float(quality[0]):.6f}")
        0.000000
        >>> hard = jnp.array([1.0])
        >>> bool(sigmoid_focal_loss(x, hard) == sigmoid_focal_loss(x, hard,
        ...                                                       soft_target_mode="quality"))
        True
    """
    v.check_floating("logits", logits)
    v.check_same_shape("targets", targets, "logits", logits)
    gamma = v.check_static_number("gamma", gamma, minimum=0.0)
    label_smoothing = v.check_static_number("label_smoothing", label_smoothing, minimum=0.0)
    if label_smoothing >= 1:
        raise ValueError(f"label_smoothing must be < 1, got {label_smoothing}")
    v.check_alpha(alpha)
    if not isinstance(soft_target_mode, str) or soft_target_mode not in SOFT_TARGET_MODES:
        raise ValueError(f"soft_target_mode is {soft_target_mode!r}, expected one of "
                         f"{SOFT_TARGET_MODES}")
    return _sigmoid_focal_loss(logits, targets, alpha, gamma, label_smoothing, soft_target_mode)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _sigmoid_focal_loss(logits, targets, alpha, gamma, label_smoothing, soft_target_mode):
    dtype = v.compute_dtype(logits.dtype)
    x = logits.astype(dtype)
    t = jnp.asarray(targets).astype(dtype)
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / 2
    loss = _sigmoid_focal(x, t, gamma, soft_target_mode)
    if alpha is not None:
        loss = _alpha_t(jnp.asarray(alpha, dtype), t) * loss
    return _end_fusion(loss).astype(logits.dtype)


def sigmoid_cross_entropy(
        logits: ArrayLike,
        targets: ArrayLike,
        *,
        alpha: float | ArrayLike | None = None,
) -> Array:
    r"""Binary cross-entropy on logits, elementwise; alpha-balanced when `alpha` is given.

    .. math:: CE(x, t) = -\alpha_t [t \log \sigma(x) + (1 - t) \log(1 - \sigma(x))]

    computed as `max(x, 0) - t x + log1p(exp(-|x|))`, exact for any finite logit. This is
    `sigmoid_focal_loss` with `gamma=0` (the paper's "CE" and "alpha-balanced CE", Table 1a), where
    both soft-target modes are the same loss (the modulating factor is 1).

    Examples:
        >>> logits, targets = jnp.array([2.0, -1.0, 0.0]), jnp.array([1.0, 0.0, 1.0])
        >>> sigmoid_cross_entropy(logits, targets)  # log 2 at logit 0
        Array([0.126928 , 0.3132617, 0.6931472], dtype=float32)
        >>> sigmoid_cross_entropy(logits, targets, alpha=0.25)  # x 0.25 positives, x 0.75 negatives
        Array([0.031732  , 0.23494627, 0.1732868 ], dtype=float32)
    """
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=0.0)


# ---------------------------------------------------------------------------------------------
# Softmax focal loss: one anchor's class vector at a time.


def _softmax_focal_parts(x: Array, y: Array, gamma: float):
    """Loss and d loss / d x of `-(1 - p_y)^gamma log p_y` for one anchor: x `[C]`, y scalar.

    With l = log p_y (from logsumexp) and q = 1 - p_y = -expm1(l):
        d loss / d x_j = -(onehot_j - p_j) * (q^gamma - gamma q^(gamma - 1) p_y l),
    where q^(gamma - 1) l = q^gamma (l / q) and l / q -> -1 as q -> 0, so the bracket stays finite.
    """
    log_p = x - jax.nn.logsumexp(x)
    p = jnp.exp(log_p)
    onehot = jnp.arange(x.shape[-1]) == y
    l = log_p[y]
    if gamma == 0:
        return -l, -(onehot - p)
    q = -jnp.expm1(l)
    p_y = jnp.exp(l)
    if float(gamma).is_integer():
        q1 = _integer_power(q, int(gamma) - 1)
        m = q1 * q
        scale = q1 * (q - gamma * p_y * l)
    else:
        m = jnp.exp(gamma * jnp.log(q))
        l_over_q = jnp.where(q > 0, l / jnp.where(q > 0, q, 1), -1)
        scale = m * (1 - gamma * p_y * l_over_q)
    return -m * l, -(onehot - p) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _softmax_focal_one(x: Array, y: Array, gamma: float) -> Array:
    return _softmax_focal_parts(x, y, gamma)[0]


def _softmax_focal_one_fwd(x, y, gamma):
    loss, dx = _softmax_focal_parts(x, y, gamma)
    return loss, (dx, y)


def _softmax_focal_one_bwd(gamma, residuals, g):
    dx, y = residuals
    # Integer labels take a float0 cotangent (JAX's "no gradient" for integer inputs).
    return g * dx, jnp.zeros(y.shape, jax.dtypes.float0)


_softmax_focal_one.defvjp(_softmax_focal_one_fwd, _softmax_focal_one_bwd)


def softmax_focal_loss(
        logits: ArrayLike,
        labels: ArrayLike,
        *,
        alpha: float | ArrayLike | None = 0.25,
        gamma: float = 2.0,
        background_class: int = 0,
) -> Array:
    r"""Softmax (multi-class) focal loss, one value per anchor.

    .. math:: FL(x, y) = -\alpha_y \, (1 - p_y)^\gamma \log p_y, \quad p = \mathrm{softmax}(x).

    Written for one anchor (`logits [C]`, scalar label) and mapped over all leading dimensions with
    `jax.vmap`.

    Alpha, three forms:
        * a Python float (the default 0.25): the Detectron convention for a softmax whose class
            `background_class` (0 by default) is background: `alpha_y = 1 - alpha` for
            background and `alpha` for every foreground class. The RPN's 2-way softmax
            objectness (Chen et al. 2018) uses this form.
        * an array of shape `[C]`: one weight per class, `alpha_y = alpha[y]`.
        * `None`: no weighting.

    Args:
        logits: float array `[..., C]`.
        labels: integer array `[...]` with values in `[0, C)`.
        alpha: see above.
        gamma: focusing parameter, >= 0; `gamma=0` is softmax cross-entropy.
        background_class: which class the scalar-alpha convention treats as background.

    Returns:
        The loss, shape `[...]`, dtype of `logits`.

    Examples:
        >>> logits, labels = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]]), jnp.array([0, 1])
        >>> softmax_focal_loss(logits, labels, alpha=None)
        Array([0.00414426, 0.00077842], dtype=float32)
        >>> softmax_focal_loss(logits, labels)  # alpha 0.25: x 0.75 background, x 0.25 the rest
        Array([0.00310819, 0.00019461], dtype=float32)
    """
    v.check_floating("logits", logits)
    v.check_integer("labels", labels)
    shape = v.shape_of(logits)
    if len(shape) < 1 or shape[-1] < 1:
        raise ValueError(f"logits has shape {shape}, expected [..., num_classes]")
    if v.shape_of(labels) != shape[:-1]:
        raise ValueError(f"labels has shape {v.shape_of(labels)}, expected the shape of logits "
                                          f"without its class axis {shape[:-1]}")
    gamma = v.check_static_number("gamma", gamma, minimum=0.0)
    v.check_alpha(alpha)
    if alpha is not None and v.shape_of(alpha) not in ((), (shape[-1],)):
        raise ValueError(f"alpha has shape {v.shape_of(alpha)}, expected a scalar or "
                                          f"({shape[-1]},), one weight per class")
    if not 0 <= background_class < shape[-1]:
        raise ValueError(f"background_class is {background_class}, expected a class in "
                                          f"[0, {shape[-1]})")
    return _softmax_focal_loss(logits, labels, alpha, gamma, background_class)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _softmax_focal_loss(logits, labels, alpha, gamma, background_class):
    dtype = v.compute_dtype(logits.dtype)
    num_classes = logits.shape[-1]
    x = logits.astype(dtype).reshape(-1, num_classes)
    y = jnp.asarray(labels).reshape(-1)
    loss = jax.vmap(_softmax_focal_one, in_axes=(0, 0, None))(x, y, gamma)
    if alpha is not None:
        alpha = jnp.asarray(alpha, dtype)
        if alpha.ndim == 0:
            loss = jnp.where(y == background_class, 1 - alpha, alpha) * loss
        else:
            loss = alpha[y] * loss
    return loss.reshape(logits.shape[:-1]).astype(logits.dtype)


def softmax_cross_entropy(
        logits: ArrayLike,
        labels: ArrayLike,
        *,
        alpha: float | ArrayLike | None = None,
        background_class: int = 0,
) -> Array:
    r"""Softmax cross-entropy `-alpha_y log softmax(x)_y` per anchor: `softmax_focal_loss`, gamma 0.

    Stable for any finite logits (log-sum-exp). `alpha` as in `softmax_focal_loss`; `None` (the
    default here) is plain cross-entropy.

    Examples:
        >>> softmax_cross_entropy(jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]]), jnp.array([0, 1]))
        Array([0.16984606, 0.09492302], dtype=float32)
    """
    return softmax_focal_loss(logits, labels, alpha=alpha, gamma=0.0,
                                                        background_class=background_class)


# ---------------------------------------------------------------------------------------------
# FL* (appendix A of the paper).


def focal_loss_star(
        logits: ArrayLike,
        targets: ArrayLike,
        *,
        gamma: float = 1.0,
        beta: float = 0.0,
) -> Array:
    r"""FL*, the paper's alternative focal form (Lin et al. 2017, appendix A), elementwise.

    .. math::
        FL^*(x, t) = -\log \sigma(\gamma x_t + \beta) / \gamma, \quad
        x_t = x \text{ if } t = 1 \text{ else } -x

    (`x_t = (2t - 1) x` for targets in [0, 1]). The paper reports gamma=2, beta=1 at 33.8 AP and
    gamma=4, beta=0 at 33.9 AP. `gamma=1, beta=0` is binary cross-entropy.

    Args:
        logits: float array of any shape.
        targets: array of the shape of `logits`, values in [0, 1].
        gamma: > 0.
        beta: shift of the transformed logit.

    Returns:
        The loss, of the shape and dtype of `logits`.

    Examples:
        >>> logits, targets = jnp.array([2.0, -1.0, 0.0]), jnp.array([1.0, 0.0, 1.0])
        >>> focal_loss_star(logits, targets, gamma=2.0, beta=1.0)
        Array([0.00335767, 0.02429368, 0.15663084], dtype=float32)
        >>> focal_loss_star(logits, targets, gamma=1.0, beta=0.0)  # = sigmoid_cross_entropy
        Array([0.126928 , 0.3132617, 0.6931472], dtype=float32)
    """
    v.check_floating("logits", logits)
    v.check_same_shape("targets", targets, "logits", logits)
    gamma = v.check_static_number("gamma", gamma, strictly_positive=True)
    beta = v.check_static_number("beta", beta)
    return _focal_loss_star(logits, targets, gamma, beta)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _focal_loss_star(logits, targets, gamma, beta):
    dtype = v.compute_dtype(logits.dtype)
    x = logits.astype(dtype)
    t = jnp.asarray(targets).astype(dtype)
    z = gamma * (2 * t - 1) * x + beta
    # -log(sigmoid(z)) = softplus(-z), in its exact form for any finite z.
    loss = (jnp.maximum(-z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z)))) / gamma
    return loss.astype(logits.dtype)
