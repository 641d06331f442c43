"""Speed of the `make train` steps: with and without the config's XLA options, and Faster R-CNN
against RetinaNet.

`--compare options` (the default): the train step of `configs/shapes_retinanet.py` (tiny
ResNet-FPN RetinaNet, 16 images of 128x128, focal + GIoU loss, AdamW) is compiled twice in this
one process, once with `config.compiler_options` (by default XLA:CPU's own convolutions instead of
YNNPACK's) and once without. Both take their first step from the same state on the same batch;
its loss and gradient norm are printed to show that they compute the same thing (to float
tolerance: the convolutions sum in another order, so later steps drift apart as any two float
orders of training do).

`--compare detectors`: the train steps of `configs/shapes_retinanet.py` and
`configs/shapes_faster_rcnn.py` (the same tiny ResNet-FPN backbone and batch; FL-RPN, RoI head),
both with their compiler options; the ratio is Faster R-CNN's time over RetinaNet's.

`--compare ablation`: as `detectors`, plus Faster R-CNN with 4 RoIs an image instead of 32 (the
second stage nearly gone) and with 64 proposals a level before NMS and 32 after instead of 1000
and 300 (the proposals nearly gone): where Faster R-CNN's extra time goes. These two change the
model; they are a measurement, not a setting to train with.

Every candidate runs on the same pre-loaded batches of the shapes data set (generated on the
first run, about 15 s). The candidates alternate in rounds of `--steps` steps so that all see the
same load; the table gives the median time per step of the rounds (wall clock, and this process's
CPU time, all threads, which other jobs on the machine disturb less) and the ratio to the last
row.

  python benchmarks/train_step_bench.py                       # the tables in BENCHMARKS.md
  python benchmarks/train_step_bench.py --compare detectors
  python benchmarks/train_step_bench.py --compare ablation --rounds 4
  python benchmarks/train_step_bench.py --rounds 10 --steps 20
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# configs/ and train/ run from the checkout; they are not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from configs import shapes_faster_rcnn, shapes_retinanet  # noqa: E402
from focaljax import data as data_lib  # noqa: E402
from focaljax import detectors  # noqa: E402
from train import (
    cli,
    compilation,
    optim,
    train,  # noqa: E402
)


def pmapped_step(config, num_classes: int, *, donate: bool = False):
    """`(detector, pmapped train step, replicated initial state)` of `config`, without compiler
    options; `donate`: the state donated, as the trainer pmaps the step."""
    image_size = tuple(config.dataset.image_size)
    detector = detectors.build(
        config.model, num_classes=num_classes, image_size=image_size, axis_name=train.AXIS_NAME
    )
    learning_rate_fn = optim.create_learning_rate_fn(config, config.num_train_steps, ())
    tx = optim.create_optimizer(config, learning_rate_fn, frozen=detector.frozen)
    initial = train.create_train_state(jax.random.PRNGKey(0), detector, tx, image_size)
    step = jax.pmap(
        functools.partial(
            train.train_step, detector=detector, tx=tx, learning_rate_fn=learning_rate_fn,
            rng=jax.random.PRNGKey(1),
        ),
        axis_name=train.AXIS_NAME,
        donate_argnums=(0,) if donate else (),
    )
    return detector, step, train.replicate(initial)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=("options", "detectors", "ablation"),
                        default="options")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    args = parser.parse_args()

    config = shapes_retinanet.get_config()
    dataset = data_lib.build(config.dataset)
    num_classes = dataset.info.num_classes
    per_device = config.batch_size // jax.local_device_count()
    batches = iter(dataset.train_iterator(per_device, config.seed))
    batches = [next(batches) for _ in range(args.steps + 1)]

    candidates = {}  # name -> [step, state]
    if args.compare == "options":
        options = compilation.compiler_options(config)
        _, step, state = pmapped_step(config, num_classes)
        candidates[f"with {options}"] = [compilation.with_compiler_options(step, options), state]
        candidates["without"] = [step, train.replicate(jax.tree.map(lambda x: x[0], state))]
    else:
        variants = [("faster_rcnn", shapes_faster_rcnn, {})]
        if args.compare == "ablation":
            variants += [
                ("faster_rcnn, 4 RoIs an image", shapes_faster_rcnn,
                 {"model.roi.num_samples": 4}),
                ("faster_rcnn, proposals 64 / 32", shapes_faster_rcnn,
                 {"model.rpn.train_pre_nms_topk": 64, "model.rpn.train_post_nms_topk": 32}),
            ]
        variants.append(("retinanet", shapes_retinanet, {}))
        for name, module, changes in variants:
            other = cli.set_fields(module.get_config(), changes)
            assert other.batch_size == config.batch_size
            _, step, state = pmapped_step(other, num_classes)
            candidates[name] = [
                compilation.with_compiler_options(step, compilation.compiler_options(other)), state
            ]
    first: dict[str, tuple[float, float]] = {}
    for name, candidate in candidates.items():  # Compilation and a warm-up step.
        candidate[1], metrics = candidate[0](candidate[1], batches[0])
        first[name] = (float(metrics["loss"][0]), float(metrics["grad_norm"][0]))
    times: dict[str, list[float]] = {name: [] for name in candidates}
    cpu_times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, candidate in candidates.items():
            step, state = candidate
            start, start_cpu = time.perf_counter(), time.process_time()
            for batch in batches[1:]:
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - start) / args.steps)
            cpu_times[name].append((time.process_time() - start_cpu) / args.steps)
            candidate[1] = state

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}; batch {config.batch_size}, "
          f"{args.rounds} rounds of {args.steps} steps")
    print("| train step | ms / step | images/s | ratio | CPU ms / step | ratio (CPU) | "
          "first step: loss, gradient norm |")
    print("|---|---:|---:|---:|---:|---:|---|")
    last = list(candidates)[-1]
    reference = statistics.median(times[last])
    reference_cpu = statistics.median(cpu_times[last])
    for name in candidates:
        median = statistics.median(times[name])
        median_cpu = statistics.median(cpu_times[name])
        print(f"| {name} | {median * 1e3:.0f} | {config.batch_size / median:.1f} | "
              f"{median / reference:.2f} | {median_cpu * 1e3:.0f} | "
              f"{median_cpu / reference_cpu:.2f} | {first[name][0]:.7f}, {first[name][1]:.7f} |")


if __name__ == "__main__":
    main()
