r"""Figure 4 of the RetinaNet paper: how a trained model's loss is spread over its anchors.

The paper takes a converged focal-loss model, recomputes the loss of every positive and every
negative anchor at several gamma, sorts each group's losses, and plots the cumulative share of the
group's loss against the fraction of its anchors: at gamma 2 nearly all of the negatives' loss
comes from a small fraction of them, while the positives' curve changes little with gamma.

  curves = cumulative_loss_curves(logits, labels, weights, gammas=(0, 0.5, 1, 2))
  share_of_hardest(curves[2.0]["negative"], 0.1)   # the hardest 10%'s part of the loss
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "anchor_focal_losses",
    "cumulative_loss_curves",
    "cumulative_share",
    "curve_points",
    "share_of_hardest",
]


def anchor_focal_losses(logits: Any, labels: Any, *, gamma: float) -> np.ndarray:
    r"""The focal loss of each anchor without alpha, as Figure 4 scores it:

    .. math:: \ell_a = \begin{cases}
              -(1 - \sigma(x_{a y_a}))^\gamma \log \sigma(x_{a y_a}) & y_a \ge 0
              \text{ (a positive: its ground-truth class's term)} \\
              \sum_c -\sigma(x_{ac})^\gamma \log (1 - \sigma(x_{ac})) & y_a = -1
              \text{ (a negative: every class is a negative term)}
              \end{cases}

    A positive anchor's other classes are negative terms of the sigmoid loss; they are left out
    so that the positives' curve shows how the loss is spread over the objects, not over the
    background classes of object anchors. Computed in float64 (`sigmoid_focal_loss` of
    `focaljax.losses` with `alpha=None` gives the same terms in float32).

    Args:
      logits: float `[N, C]`.
      labels: int `[N]`, the class of each anchor in `0..C-1`, or -1 for background.
      gamma: focusing parameter, >= 0.

    Returns:
      float32 `[N]`.

    Examples:
      >>> logits = np.array([[2.0, -1.0], [-3.0, 0.0]])
      >>> np.round(anchor_focal_losses(logits, np.array([0, -1]), gamma=0.0), 4)
      array([0.1269, 0.7417], dtype=float32)
    """
    x = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    target = labels[:, None] == np.arange(x.shape[-1])
    # log p_t and 1 - p_t in float64, without overflow: log sigma(z) = -log(1 + e^-z).
    z = np.where(target, x, -x)
    log_pt = -np.logaddexp(0.0, -z)
    one_minus_pt = np.exp(-np.logaddexp(0.0, z))
    per_logit = -(one_minus_pt ** float(gamma)) * log_pt
    counted = np.where((labels >= 0)[:, None], target, True)
    return np.sum(per_logit * counted, axis=-1).astype(np.float32)


def cumulative_share(anchor_losses: Any) -> np.ndarray:
    """`[n] -> [n + 1]`: entry `k` is the sum of the `k` smallest losses over the sum of all
    (0 at `k = 0`, 1 at `k = n`; all 0 when every loss is 0), the curve of Figure 4 at the
    fraction `k / n` of the anchors.

    Examples:
      >>> cumulative_share(np.array([3.0, 1.0]))
      array([0.  , 0.25, 1.  ])
    """
    ordered = np.sort(np.asarray(anchor_losses, np.float64))
    cumulative = np.concatenate([[0.0], np.cumsum(ordered)])
    total = cumulative[-1]
    return cumulative / total if total > 0 else cumulative


def cumulative_loss_curves(
    logits: Any,
    labels: Any,
    weights: Any,
    *,
    gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
) -> dict[float, dict[str, np.ndarray]]:
    """For each gamma, the cumulative normalised loss of the positive and of the negative anchors,
    sorted from the smallest loss (RetinaNet paper, Figure 4).

    Positives are the anchors with `labels >= 0` and `weights > 0`, negatives those with
    `labels == -1` and `weights > 0`; ignored anchors (weight 0) are in neither. Each anchor's
    loss is `anchor_focal_losses` at that gamma, and each group's curve is `cumulative_share`
    of its losses.

    Args:
      logits: float `[N, C]`, a trained model's classification logits of N anchors.
      labels: int `[N]`, the matched class of each anchor, -1 for background.
      weights: `[N]`, 0 for ignored anchors.
      gammas: the focusing parameters to recompute the loss at.

    Returns:
      `{gamma: {"positive": [P + 1], "negative": [Q + 1]}}` for P positives and Q negatives.

    Examples:
      >>> logits = np.array([[3.0], [-3.0], [0.0], [-1.0], [2.0]])
      >>> labels = np.array([0, -1, -1, -1, 0])
      >>> curves = cumulative_loss_curves(logits, labels, np.array([1, 1, 1, 1, 0]),
      ...                                 gammas=(0.0, 2.0))
      >>> np.round(curves[0.0]["negative"], 3)
      array([0.   , 0.046, 0.343, 1.   ])
      >>> np.round(curves[2.0]["negative"], 3)  # The hardest negative carries more of the loss.
      array([0.   , 0.001, 0.116, 1.   ])
      >>> curves[2.0]["positive"]  # One positive (the last anchor is ignored).
      array([0., 1.])
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    weights = np.asarray(weights)
    if logits.ndim != 2:
        raise ValueError(f"logits has shape {logits.shape}, expected [anchors, classes]")
    if labels.shape != logits.shape[:1] or weights.shape != logits.shape[:1]:
        raise ValueError(f"labels has shape {labels.shape} and weights {weights.shape}, expected "
                         f"{logits.shape[:1]}, one per anchor of logits {logits.shape}")
    positive = (labels >= 0) & (weights > 0)
    negative = (labels < 0) & (weights > 0)
    curves = {}
    for gamma in gammas:
        anchor_loss = anchor_focal_losses(logits, labels, gamma=gamma)
        curves[float(gamma)] = {"positive": cumulative_share(anchor_loss[positive]),
                                "negative": cumulative_share(anchor_loss[negative])}
    return curves


def share_of_hardest(curve: np.ndarray, fraction: float) -> float:
    """The part of a `cumulative_share` curve's loss carried by its hardest `fraction` of the
    anchors (the `ceil(fraction * n)` largest losses); NaN for an empty curve.

    Examples:
      >>> share_of_hardest(np.array([0.0, 0.25, 1.0]), 0.5)
      0.75
    """
    n = len(curve) - 1
    return float(1.0 - curve[n - math.ceil(fraction * n)]) if n else math.nan


def curve_points(curve: np.ndarray, num_points: int = 201) -> list[float]:
    """The curve at `num_points` evenly spaced fractions of the anchors, 0 to 1 (what a plot or
    a JSON file keeps of a curve over 100k anchors).

    Examples:
      >>> curve_points(np.array([0.0, 0.25, 1.0]), 3)
      [0.0, 0.25, 1.0]
    """
    n = len(curve) - 1
    if n < 1:
        return []
    indices = np.floor(np.linspace(0.0, 1.0, num_points) * n).astype(int)
    return [float(v) for v in curve[indices]]
