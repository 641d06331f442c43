"""Speed of the sigmoid focal loss's value and gradient: focaljax vs optax vs plain jnp vs a floor.

Every candidate computes `jax.value_and_grad` of the summed loss over `[N anchors, 80 classes]`
float32 logits with one-hot targets (alpha 0.25, gamma 2), jitted, in this one process:

  focaljax  `focaljax.losses.sigmoid_focal_loss` (hand-written fused gradient, `custom_vjp`)
  optax     `optax.losses.sigmoid_focal_loss` (autodiff)
  jnp       the paper's formula transcribed with `jax.nn` (autodiff)
  floor     not a loss: reads logits and targets, computes one `exp` and one `log1p` per element
            and writes one array of the same size, the least any loss-and-gradient pass must do.

Times are the median of `--repeats` calls after a warm-up call. On a GPU the achieved bandwidth
counts the bytes a fused pass must move: logits and targets in, the gradient out.

  python benchmarks/loss_bench.py                     # the table in BENCHMARKS.md
  python benchmarks/loss_bench.py --sizes 200000 --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from focaljax.losses import sigmoid_focal_loss

ALPHA, GAMMA = 0.25, 2.0
NUM_CLASSES = 80


def textbook_focal_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Lin et al. eq. 5 as most code bases write it, with `jax.nn` building blocks."""
    p = jax.nn.sigmoid(logits)
    ce = -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = ALPHA * targets + (1 - ALPHA) * (1 - targets)
    return alpha_t * (1 - p_t) ** GAMMA * ce


CANDIDATES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "focaljax": lambda x, t: sigmoid_focal_loss(x, t, alpha=ALPHA, gamma=GAMMA),
    "optax": lambda x, t: optax.losses.sigmoid_focal_loss(x, t, alpha=ALPHA, gamma=GAMMA),
    "jnp": textbook_focal_loss,
}


def value_and_grad_fn(loss: Callable) -> Callable:
    return jax.jit(jax.value_and_grad(lambda x, t: jnp.sum(loss(x, t))))


@jax.jit
def floor(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.log1p(jnp.exp(logits)) * targets


def median_seconds(fn: Callable, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(num_anchors: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(-4.0, 2.0, (num_anchors, NUM_CLASSES)).astype(np.float32)
    labels = rng.integers(-1, NUM_CLASSES, num_anchors)  # -1: background anchor
    targets = (labels[:, None] == np.arange(NUM_CLASSES)).astype(np.float32)
    return jax.device_put(logits), jax.device_put(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000, 200_000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"optax {optax.__version__}\n")
    gpu = jax.default_backend() == "gpu"
    header = "| N anchors x 80 | focaljax ms | optax ms | jnp ms | floor ms | optax / focaljax "
    header += "| focaljax / floor |" + (" focaljax GB/s |" if gpu else "")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    fns = {name: value_and_grad_fn(loss) for name, loss in CANDIDATES.items()}
    for n in args.sizes:
        x, t = inputs(n)
        ms = {name: 1e3 * median_seconds(fn, x, t, repeats=args.repeats)
              for name, fn in fns.items()}
        ms["floor"] = 1e3 * median_seconds(floor, x, t, repeats=args.repeats)
        row = (
            f"| {n:,} | {ms['focaljax']:.2f} | {ms['optax']:.2f} | {ms['jnp']:.2f} | "
            f"{ms['floor']:.2f} | {ms['optax'] / ms['focaljax']:.1f}x | "
            f"{ms['focaljax'] / ms['floor']:.2f}x |"
        )
        if gpu:
            row += f" {3 * x.nbytes / (ms['focaljax'] * 1e-3) / 1e9:.0f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
