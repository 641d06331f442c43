"""Speed of the sigmoid focal loss's value and gradient: focaljax vs optax vs plain jnp vs a floor.

Every candidate computes `jax.value_and_grad` of the summed loss over `[N anchors, 80 classes]`
logits and one-hot targets of one dtype (float32, bfloat16; alpha 0.25, gamma 2), jitted, in this
one process:

  focaljax  `focaljax.losses.sigmoid_focal_loss` (hand-written gradient, `custom_vjp`)
  optax     `optax.losses.sigmoid_focal_loss` (autodiff)
  jnp       the paper's formula transcribed with `jax.nn` (autodiff)
  floor     not a loss: reads logits and targets, computes one `exp` and one `log1p` per element
            (in float32) and writes one array of the same size and dtype, the least any
            loss-and-gradient pass must do.

Times are medians of `--repeats` calls, taken in four turns per candidate, each after an untimed
call (`median_milliseconds`); the "CPU time" column compares this process's CPU time instead of
wall time (meaningful on a CPU backend). On a GPU the achieved bandwidth counts the bytes a fused
pass must move: logits and targets in, the gradient out.

  python benchmarks/loss_bench.py                     # the table in BENCHMARKS.md
  python benchmarks/loss_bench.py --sizes 200000 --repeats 30 --dtypes float32
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
    # In float32, as the losses compute 16-bit inputs. Without the sum of a value-and-gradient:
    # summing this array would add ~2% (BENCHMARKS.md), so the ratios to it err on the high side.
    x, t = logits.astype(jnp.float32), targets.astype(jnp.float32)
    return (jnp.log1p(jnp.exp(x)) * t).astype(logits.dtype)


def median_milliseconds(fns: dict[str, Callable], *args, repeats: int,
                        rounds: int = 4) -> dict[str, tuple[float, float]]:
    """Median wall and CPU time of each of `fns`, in `rounds` turns of `repeats / rounds` calls.

    Each turn starts with an untimed call: a function called over and over, as a training step
    is, reaches its own steady state (memory the allocator kept or gave back), which the
    function timed before it would otherwise set. The turns spread every candidate over the
    whole run, so that a load that changes (a training job beside it) weighs on all alike. CPU
    time (this process's, all threads, kernel included) counts the work done, which a job beside
    it slows down less than it slows the wall clock.
    """
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            jax.block_until_ready(fn(*args))
            for _ in range(max(1, repeats // rounds)):
                start, start_cpu = time.perf_counter(), time.process_time()
                jax.block_until_ready(fn(*args))
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {name: (1e3 * statistics.median(wall[name]), 1e3 * statistics.median(cpu[name]))
            for name in fns}


def inputs(num_anchors: int, dtype: str = "float32",
           seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(-4.0, 2.0, (num_anchors, NUM_CLASSES))
    labels = rng.integers(-1, NUM_CLASSES, num_anchors)  # -1: background anchor
    targets = labels[:, None] == np.arange(NUM_CLASSES)
    return jax.device_put(jnp.asarray(logits, dtype)), jax.device_put(jnp.asarray(targets, dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000, 200_000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"optax {optax.__version__}\n")
    gpu = jax.default_backend() == "gpu"
    header = ("| dtype | N anchors x 80 | focaljax ms | optax ms | jnp ms | floor ms "
              "| optax / focaljax | focaljax / floor | focaljax / floor, CPU time |"
              + (" focaljax GB/s |" if gpu else ""))
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    fns = {name: value_and_grad_fn(loss) for name, loss in CANDIDATES.items()}
    fns["floor"] = floor
    for dtype in args.dtypes:
        for n in args.sizes:
            x, t = inputs(n, dtype)
            timings = median_milliseconds(fns, x, t, repeats=args.repeats)
            ms = {name: wall for name, (wall, _) in timings.items()}
            cpu_ratio = timings["focaljax"][1] / timings["floor"][1]
            row = (
                f"| {dtype} | {n:,} | {ms['focaljax']:.2f} | {ms['optax']:.2f} | "
                f"{ms['jnp']:.2f} | {ms['floor']:.2f} | {ms['optax'] / ms['focaljax']:.1f}x | "
                f"{ms['focaljax'] / ms['floor']:.2f}x | {cpu_ratio:.2f}x |"
            )
            if gpu:
                row += f" {3 * x.nbytes / (ms['focaljax'] * 1e-3) / 1e9:.0f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
