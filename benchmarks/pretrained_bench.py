"""ImageNet ResNet-50 weights: the time to load and convert a file of each format, and what
freezing the stem and C2 saves in a RetinaNet R50-FPN train step.

Load: a random ResNet-50 (torchvision's definition, 25.6M values with the classifier) is written
in each of `focaljax.models.pretrained.FORMATS` by the test helpers of
`tests/models/weight_files.py` (safetensors, torch .pth zip, detectron2 / MSRA .pkl, Keras .h5),
into a temporary folder. Each row is the median of `--repeats` calls of `load_resnet_weights`
(read, check every array, convert in float64, return float32) for the ResNet-50 of the
`configs/coco_retinanet_r50.py` recipe with weights (frozen BN; the stride in the 1x1 conv for
the MSRA and Keras layouts, in the 3x3 conv for the torch ones).

Train step: the RetinaNet R50-FPN of that recipe (80 classes, P3-P7, 4-conv heads, SGD with
momentum and weight decay, the config's compiler options), started from the .pkl file, on
`--image-size` square images, `--batch` per step, a fixed batch of random images with three
boxes each. The step of `freeze_at=2` (the paper's: stem and C2 frozen, no backward pass through
them, no optimizer state for them) and of `freeze_at=0` (the whole ResNet trains) are compiled
in this one process and alternate in rounds of `--steps` steps after a first, compiling step;
the table gives the median time per step of the rounds and the ratio to freeze_at=0.

  python benchmarks/pretrained_bench.py                # the tables in BENCHMARKS.md
  python benchmarks/pretrained_bench.py --image-size 512 --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import pickle
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The file writers are the test helpers, which live in the repository, not in the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from configs import coco_retinanet_r50  # noqa: E402
from focaljax import detectors  # noqa: E402
from focaljax.models import build_resnet, load_resnet_weights  # noqa: E402
from tests.models import weight_files  # noqa: E402
from train import (  # noqa: E402
    compilation,
    optim,
    train,
)
from train import state as train_state  # noqa: E402

NUM_CLASSES = 80
STRIDE_IN_1X1 = {"safetensors": False, "pth": False, "msra_pkl": True, "keras_h5": True}


def write_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """A random ResNet-50 in each format, the statistics form of BN in all of them."""
    net = weight_files.random_resnet(
        np.random.default_rng(0), "bottleneck", (3, 4, 6, 3), num_classes=1000
    )
    state = weight_files.torchvision_state(net)
    files = {
        "safetensors": folder / "resnet50.safetensors",
        "pth": folder / "resnet50.pth",
        "msra_pkl": folder / "R-50.pkl",
        "keras_h5": folder / "resnet50_notop.h5",
    }
    save_file(state, str(files["safetensors"]))
    weight_files.write_torch_zip(files["pth"], state)
    with open(files["msra_pkl"], "wb") as f:
        pickle.dump(weight_files.msra_blobs(net), f, protocol=2)
    weight_files.write_keras_h5(files["keras_h5"], net)
    return files


def time_loads(files: dict[str, pathlib.Path], repeats: int) -> dict[str, float]:
    seconds = {}
    for name, path in files.items():
        resnet = build_resnet(50, norm="frozen_bn", stride_in_1x1=STRIDE_IN_1X1[name])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            load_resnet_weights(path, resnet)
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
    return seconds


def pmapped_step(config, freeze_at: int):
    """`(step, replicated initial state)` of `config` at `freeze_at`, from its
    `model.backbone_weights`, with its compiler options."""
    config = config.copy_and_resolve_references()
    config.model.freeze_at = freeze_at
    image_size = tuple(config.dataset.image_size)
    detector = detectors.build(
        config.model, num_classes=NUM_CLASSES, image_size=image_size, axis_name=train.AXIS_NAME
    )
    learning_rate_fn = optim.create_learning_rate_fn(config, config.num_train_steps, ())
    tx = optim.create_optimizer(config, learning_rate_fn, frozen=detector.frozen)
    rng = jax.random.PRNGKey(0)
    initial_variables = train_state.initial_variables(rng, detector, image_size)
    variables, _ = detector.load_pretrained(initial_variables)
    initial = train_state.create_train_state(rng, detector, tx, image_size, variables=variables)
    step = jax.pmap(
        functools.partial(
            train.train_step, detector=detector, tx=tx, learning_rate_fn=learning_rate_fn,
            rng=jax.random.PRNGKey(1),
        ),
        axis_name=train.AXIS_NAME,
    )
    options = compilation.compiler_options(config)
    return compilation.with_compiler_options(step, options), train_state.replicate(initial)


def random_batch(num_devices: int, per_device: int, size: int, max_boxes: int) -> dict:
    """Random images with three random boxes each, `[devices, per_device, ...]`."""
    rng = np.random.default_rng(2)
    shape = (num_devices, per_device)
    x0, x1 = np.sort(rng.uniform(0, size, (2, *shape, 3)), axis=0)
    y0, y1 = np.sort(rng.uniform(0, size, (2, *shape, 3)), axis=0)
    boxes = np.zeros((*shape, max_boxes, 4), np.float32)
    boxes[..., :3, :] = np.stack([x0, y0, x1, y1], axis=-1)
    labels = np.full((*shape, max_boxes), -1, np.int32)
    labels[..., :3] = rng.integers(0, NUM_CLASSES, (*shape, 3))
    return {
        "image": rng.normal(size=(*shape, size, size, 3)).astype(np.float32),
        "boxes": boxes,
        "labels": labels,
        "is_crowd": np.zeros((*shape, max_boxes), bool),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="loads per format")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    args = parser.parse_args()
    num_devices = jax.local_device_count()
    if args.batch % num_devices:
        parser.error(f"--batch {args.batch} is not a multiple of the {num_devices} devices")

    with tempfile.TemporaryDirectory() as folder:
        files = write_files(pathlib.Path(folder))
        sizes = {name: os.path.getsize(path) for name, path in files.items()}
        load_seconds = time_loads(files, args.repeats)

        config = coco_retinanet_r50.get_config(str(files["msra_pkl"]))
        config.dataset.image_size = (args.image_size, args.image_size)
        config.batch_size = args.batch
        batch = random_batch(num_devices, args.batch // num_devices, args.image_size,
                             config.dataset.max_boxes)
        candidates = {}  # name -> [step, state]
        first = {}
        for freeze_at in (2, 0):
            name = f"freeze_at={freeze_at}"
            step, state = pmapped_step(config, freeze_at)
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            first[name] = time.perf_counter() - start
            candidates[name] = [step, state]

    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, candidate in candidates.items():
            step, state = candidate
            start = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - start) / args.steps)
            candidate[1] = state

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}")
    print(f"\nload_resnet_weights, random ResNet-50, median of {args.repeats}")
    print("| format | file MB | load + convert, s |")
    print("|---|---:|---:|")
    for name, seconds in load_seconds.items():
        print(f"| {name} | {sizes[name] / 1e6:.1f} | {seconds:.2f} |")
    print(f"\nRetinaNet R50-FPN train step, {args.batch} images of {args.image_size}x"
          f"{args.image_size}, {args.rounds} rounds of {args.steps} steps")
    print("| backbone | first step (compiles), s | ms / step | images/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    reference = statistics.median(times[list(candidates)[-1]])
    for name in candidates:
        median = statistics.median(times[name])
        print(f"| {name} | {first[name]:.0f} | {median * 1e3:.0f} | "
              f"{args.batch / median:.2f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
