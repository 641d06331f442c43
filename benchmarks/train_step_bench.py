"""Speed of the `make train` step: compiled with the config's XLA options vs without them.

The train step of `configs/shapes_retinanet.py` (tiny ResNet-FPN RetinaNet, 16 images of 128x128,
focal + GIoU loss, AdamW) is compiled twice in this one process, once with
`config.compiler_options` (by default XLA:CPU's own convolutions instead of YNNPACK's) and once
without, and run on the same pre-loaded batches of the shapes data set (generated on the first
run, about 15 s). The two alternate in rounds of `--steps` steps so that both see the same load;
the table gives the median time per step of the rounds and the ratio. Both take their first step
from the same state on the same batch; its loss and gradient norm are printed to show that they
compute the same thing (to float tolerance: the convolutions sum in another order, so later
steps drift apart as any two float orders of training do).

  python benchmarks/train_step_bench.py                 # the table in BENCHMARKS.md
  python benchmarks/train_step_bench.py --rounds 10 --steps 20
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

from configs import shapes_retinanet  # noqa: E402
from focaljax import data as data_lib  # noqa: E402
from focaljax import detectors  # noqa: E402
from train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    args = parser.parse_args()

    config = shapes_retinanet.get_config()
    options = train.compiler_options(config)
    dataset = data_lib.build(config.dataset)
    per_device = config.batch_size // jax.local_device_count()
    batches = iter(dataset.train_iterator(per_device, config.seed))
    batches = [next(batches) for _ in range(args.steps + 1)]
    image_size = tuple(config.dataset.image_size)
    detector = detectors.build(
        config.model, num_classes=dataset.info.num_classes, image_size=image_size,
        axis_name=train.AXIS_NAME,
    )
    learning_rate_fn = train.create_learning_rate_fn(config, config.num_train_steps, ())
    tx = train.create_optimizer(config, learning_rate_fn)
    initial = train.create_train_state(jax.random.PRNGKey(0), detector, tx, image_size)
    pmapped = jax.pmap(
        functools.partial(
            train.train_step, detector=detector, tx=tx, learning_rate_fn=learning_rate_fn,
            rng=jax.random.PRNGKey(1),
        ),
        axis_name=train.AXIS_NAME,
    )
    candidates = {
        f"with {options}": train.with_compiler_options(pmapped, options),
        "without": pmapped,
    }
    states = {name: train.replicate(initial) for name in candidates}
    first: dict[str, tuple[float, float]] = {}
    for name, step in candidates.items():  # Compilation and a warm-up step.
        states[name], metrics = step(states[name], batches[0])
        first[name] = (float(metrics["loss"][0]), float(metrics["grad_norm"][0]))
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, step in candidates.items():
            start = time.perf_counter()
            for batch in batches[1:]:
                states[name], metrics = step(states[name], batch)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - start) / args.steps)

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}; batch {config.batch_size}, "
          f"{args.rounds} rounds of {args.steps} steps")
    print("| compiled | ms / step | images/s | ratio | first step: loss, gradient norm |")
    print("|---|---:|---:|---:|---|")
    reference = statistics.median(times["without"])
    for name in candidates:
        median = statistics.median(times[name])
        print(f"| {name} | {median * 1e3:.0f} | {config.batch_size / median:.1f} | "
              f"{median / reference:.2f} | {first[name][0]:.7f}, {first[name][1]:.7f} |")


if __name__ == "__main__":
    main()
