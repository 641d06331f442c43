"""Initialization of the classification bias from a foreground prior (Lin et al. 2017, sec. 3.3).

At initialization every anchor should predict foreground with a small probability `pi`, so that the
many background anchors do not produce a huge, destabilizing loss in the first iterations.
"""

import math

import numpy as np

from focaljax.losses import _validation as v


def _check_pi(pi: float) -> float:
    pi = v.check_static_number("pi", pi)
    if not 0 < pi < 1:
        raise ValueError(f"pi must lie in (0, 1), got {pi}")
    return pi


def sigmoid_prior_bias(pi: float = 0.01) -> float:
    r"""Bias `b = -log((1 - pi) / pi)` so that `sigmoid(b) = pi` (the paper's "prior" init).

    Examples:
      >>> round(sigmoid_prior_bias(0.01), 4)
      -4.5951
    """
    pi = _check_pi(pi)
    return -math.log((1 - pi) / pi)


def softmax_prior_bias(num_classes: int, *, pi: float = 0.01,
                       background_class: int = 0) -> np.ndarray:
    r"""Biases `[num_classes]` for a softmax with a background class (the Detectron form).

    Foreground biases are 0 and the background bias is `log((C - 1)(1 - pi) / pi)`, so the
    foreground classes together get probability `pi` and background `1 - pi` at initialization.
    For the 2-way RPN objectness softmax (`num_classes=2`) this gives `p(object) = pi`.

    Examples:
      >>> softmax_prior_bias(3, pi=0.01)  # log(2 * 0.99 / 0.01) for the background
      array([5.288267, 0.      , 0.      ], dtype=float32)
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background plus at least one class), "
                         f"got {num_classes}")
    if not 0 <= background_class < num_classes:
        raise ValueError(f"background_class is {background_class}, expected a class in "
                         f"[0, {num_classes})")
    pi = _check_pi(pi)
    bias = np.zeros(num_classes, np.float32)
    bias[background_class] = math.log((num_classes - 1) * (1 - pi) / pi)
    return bias
