"""The optimizer and its learning-rate schedule, from `config.optimizer` and `config.schedule`.

  num_steps, decay_steps = resolve_steps(config, num_train_examples)
  learning_rate_fn = create_learning_rate_fn(config, num_steps, decay_steps)
  tx = create_optimizer(config, learning_rate_fn)

detectron2's recipe by default: SGD with momentum and coupled weight decay, a linear warm-up, then
steps of x0.1; the learning rate scales linearly with the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from focaljax.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")


def resolve_steps(
    config: ml_collections.ConfigDict, num_train_examples: int
) -> tuple[int, tuple[int, ...]]:
    """`(num_train_steps, decay_steps)` from the config's steps, or from its epochs."""
    steps_per_epoch = num_train_examples / config.batch_size
    num_steps = config.num_train_steps
    if num_steps <= 0:
        num_steps = math.ceil(config.num_epochs * steps_per_epoch)
    decay_steps = tuple(int(s) for s in config.schedule.decay_steps)
    if config.schedule.decay_epochs:
        decay_steps = tuple(round(e * steps_per_epoch) for e in config.schedule.decay_epochs)
    if list(decay_steps) != sorted(decay_steps) or any(not 0 < s < num_steps for s in decay_steps):
        raise ConfigError(
            f"learning-rate decay steps {decay_steps} must increase and lie in (0, {num_steps}), "
            "the training steps"
        )
    return num_steps, decay_steps


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, num_steps: int, decay_steps: tuple[int, ...]
) -> optax.Schedule:
    """lr(step) = base * warmup(step) * decay(step), detectron2's warm-up times its schedule.

    `base = optimizer.learning_rate * batch_size / optimizer.reference_batch_size` (linear scaling,
    Goyal et al. 2017); warm-up rises linearly from `warmup_factor` to 1 over `warmup_steps`; decay
    is `decay_factor ** (number of decay_steps passed)` ("step"), half a cosine to 0 over the run
    ("cosine"), or 1 ("constant").
    """
    opt = config.optimizer
    base = opt.learning_rate * config.batch_size / opt.reference_batch_size
    schedule = config.schedule
    warmup_steps = schedule.warmup_steps
    boundaries = jnp.asarray(decay_steps, jnp.int32)

    def learning_rate(step):
        step = jnp.asarray(step)
        if warmup_steps > 0:
            alpha = jnp.minimum(step / warmup_steps, 1.0)
            warmup = schedule.warmup_factor * (1 - alpha) + alpha
        else:
            warmup = 1.0
        if schedule.name == "step":
            decay = schedule.decay_factor ** jnp.sum(step >= boundaries)
        elif schedule.name == "cosine":
            decay = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step / num_steps, 1.0)))
        else:
            decay = 1.0
        return base * warmup * decay

    return learning_rate


def decay_mask(params: Any) -> Any:
    """True for the weights that get weight decay: kernels, not biases or norm scales (all 1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    *,
    frozen: Callable[[Any], Any],
) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (detectron2), or AdamW; optional clipping of the
    global gradient norm first. Weight decay skips biases and norm parameters (`decay_mask`).

    The parameters that `frozen` marks (`Detector.frozen`: a ResNet's stem and stages up to
    `config.model.freeze_at`) are left out altogether: their update is zero and they have no
    optimizer state. Their gradient is zero already (the ResNet stops it), but both weight
    decays would still move them.
    """
    opt = config.optimizer
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.name == "sgd":
        if opt.weight_decay > 0:
            parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(learning_rate_fn, momentum=opt.momentum, nesterov=opt.nesterov))
    else:
        parts.append(
            optax.adamw(
                learning_rate_fn, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                mask=decay_mask,
            )
        )
    def labels(params: Any) -> Any:
        return jax.tree.map(lambda is_frozen: "frozen" if is_frozen else "trained",
                            frozen(params))

    return optax.multi_transform(
        {"trained": optax.chain(*parts), "frozen": optax.set_to_zero()}, labels
    )
