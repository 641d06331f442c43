"""focaljax.losses: pure, jittable losses for dense detection.

Classification: `sigmoid_focal_loss` (soft targets in the `(1 - p_t)^gamma` form of optax,
torchvision and Keras, or in the "quality" form: `soft_target_mode`), `softmax_focal_loss`,
`sigmoid_cross_entropy`, `softmax_cross_entropy`, `focal_loss_star`. Box regression:
`smooth_l1_loss`, `giou_loss`. Reductions: `weighted_sum`, `positive_normalizer`,
`ema_normalizer`. Sampling alternatives: `ohem_mask`, `balanced_sample_mask`. Initialization:
`sigmoid_prior_bias`, `softmax_prior_bias`.
"""

from focaljax.losses.classification import (
    focal_loss_star,
    sigmoid_cross_entropy,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    softmax_focal_loss,
)
from focaljax.losses.init import sigmoid_prior_bias, softmax_prior_bias
from focaljax.losses.reductions import (
    EMA_NORMALIZER_INIT,
    ema_normalizer,
    positive_normalizer,
    weighted_sum,
)
from focaljax.losses.regression import giou_loss, smooth_l1_loss
from focaljax.losses.sampling import balanced_sample_mask, ohem_mask

__all__ = [
    "EMA_NORMALIZER_INIT",
    "balanced_sample_mask",
    "ema_normalizer",
    "focal_loss_star",
    "giou_loss",
    "ohem_mask",
    "positive_normalizer",
    "sigmoid_cross_entropy",
    "sigmoid_focal_loss",
    "sigmoid_prior_bias",
    "smooth_l1_loss",
    "softmax_cross_entropy",
    "softmax_focal_loss",
    "softmax_prior_bias",
    "weighted_sum",
]
