"""focaljax's R50-FPN RetinaNet train step against keras-hub's (JAX backend), in one process.

The peer: keras-hub's `RetinaNetObjectDetector` on its `RetinaNetBackbone` over a ResNet-50 v1
(`ResNetBackbone` in the layout of its `resnet_50_imagenet` preset), 80 classes, P3-P7 with P6
from C5, 9 anchors a location, no norm in the heads, its default losses (binary focal
cross-entropy and Huber) with its label encoder inside the loss, `keras.optimizers.SGD(0.01,
momentum=0.9)`, one step a `train_on_batch` (jitted by Keras). Random weights.

focaljax, set to do the same work: `configs/coco_retinanet_r50.py` from scratch but with the
peer's normalization and freezing (batch norm computed on the batch, nothing frozen, no norm in
the heads), SGD with momentum, one `jax.pmap` step as the trainer compiles it (with
`train.compilation`'s options for the backend). Both get the same random images (`--image-size`,
`--batch` images) with three random boxes each, in their own box format.

What still differs, besides the implementations: focaljax's L1 box loss against Huber, its weight
decay (on weights only), its loss normalizer. Both steps' FLOPs are not compared (Keras does not
expose its compiled step); the architectures are the same.

The two steps alternate in `--rounds` rounds of `--steps` steps, after an untimed first step
each; the table gives the median wall-clock and CPU time (this process, all threads) a step and
the ratio to keras-hub's. XLA:CPU's convolution path: `--ynn` `default` leaves XLA's defaults to
keras-hub (focaljax compiles its step with its CPU options as always); `off` sets
`--xla_cpu_experimental_ynn_fusion_type=` for the whole process, so both use XLA's own
convolutions.

keras-hub is not a dependency of focaljax; install it beside (its tokenizer imports need regex,
rich, kagglehub, sentencepiece, tokenizers) or point `--keras-hub-path` at a folder holding it:

  pip install --target /tmp/khlib --no-deps keras-hub regex rich kagglehub kagglesdk==0.1.28 \\
      sentencepiece tokenizers markdown-it-py mdurl pygments
  python benchmarks/keras_hub_bench.py --keras-hub-path /tmp/khlib
  python benchmarks/keras_hub_bench.py --keras-hub-path /tmp/khlib --ynn off
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-hub-path", default="", help="folder holding keras_hub")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps a round")
    parser.add_argument("--ynn", choices=("default", "off"), default="default")
    return parser.parse_args(argv)


def random_data(batch: int, size: int, seed: int = 2):
    """Images `[batch, size, size, 3]` and three random boxes each, xyxy pixels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x0, x1 = np.sort(rng.uniform(0, size, (2, batch, 3)), axis=0)
    y0, y1 = np.sort(rng.uniform(0, size, (2, batch, 3)), axis=0)
    boxes = np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)
    labels = rng.integers(0, 80, (batch, 3)).astype(np.int32)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    return images, boxes, labels


def keras_hub_step(images, boxes, labels):
    """`step()` running one `train_on_batch` of keras-hub's RetinaNet on the data."""
    import keras
    import keras_hub

    size = images.shape[1]
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        use_pre_activation=False, image_shape=(size, size, 3),
    )
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=False,
        image_shape=(size, size, 3),
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=80, bounding_box_format="xyxy",
    )
    detector.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    targets = {"boxes": boxes, "labels": labels}
    # keras.Model's own train_on_batch (a jitted train step): keras-hub's PipelineModel version,
    # for preprocessing, converts `y` as one tensor and cannot take the dict of boxes and labels.
    return lambda: keras.Model.train_on_batch(detector, images, targets)


def focaljax_step(images, boxes, labels):
    """`step()` running one train step of focaljax's RetinaNet, set up as the module docstring
    says, on the same data."""
    import coco_scale_bench
    import jax
    import numpy as np

    from train import compilation

    batch, size = images.shape[0], images.shape[1]
    config = coco_scale_bench.coco_config("retinanet", "float32", (size, size), batch)
    config.model.norm = "bn"
    config.model.head_norm = "none"
    config.model.freeze_at = 0
    config.model.stride_in_1x1 = False
    _, step, state = coco_scale_bench.train_step(config)
    max_boxes = config.dataset.max_boxes
    padded = np.zeros((1, batch, max_boxes, 4), np.float32)
    padded[0, :, :3] = boxes
    padded_labels = np.full((1, batch, max_boxes), -1, np.int32)
    padded_labels[0, :, :3] = labels
    # The pipeline's normalization, so that both see inputs of the same scale.
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    data = {
        "image": ((images - mean) / std).astype(np.float32)[None],
        "boxes": padded, "labels": padded_labels,
        "is_crowd": np.zeros((1, batch, max_boxes), bool),
    }
    step = compilation.with_compiler_options(step, compilation.compiler_options(config))
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], data)
        jax.block_until_ready(metrics)

    return run


def timed(step, steps: int) -> tuple[float, float]:
    """Mean wall and CPU seconds a step over `steps` steps."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps, (time.process_time() - start_cpu) / steps


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.ynn == "off":
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {YNN_OFF}".strip()
    if args.keras_hub_path:
        sys.path.insert(0, args.keras_hub_path)
    try:
        import keras_hub  # noqa: F401
    except ImportError as error:
        sys.exit(f"keras_hub cannot be imported ({error}); install it beside focaljax or pass "
                 "--keras-hub-path (see this script's docstring)")
    import jax

    images, boxes, labels = random_data(args.batch, args.image_size)
    candidates = {}
    for name, make in (("focaljax", focaljax_step), ("keras-hub", keras_hub_step)):
        start = time.perf_counter()
        candidates[name] = make(images, boxes, labels)
        candidates[name]()  # compilation and a first step, untimed
        print(f"{name}: built, compiled and one step in {time.perf_counter() - start:.0f} s",
              flush=True)
    wall = {name: [] for name in candidates}
    cpu = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, step in candidates.items():
            seconds, cpu_seconds = timed(step, args.steps)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    print(f"jax {jax.__version__}, keras {__import__('keras').__version__}, keras-hub "
          f"{keras_hub.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores; "
          f"{args.batch} images of {args.image_size}x{args.image_size}, float32; "
          f"{args.rounds} rounds of {args.steps} steps; XLA:CPU convolutions: {args.ynn}")
    print("| train step | s / step (wall) | CPU s / step | ratio to keras-hub (wall) | "
          "ratio (CPU) | rounds (wall s) |")
    print("|---|---:|---:|---:|---:|---|")
    reference = statistics.median(wall["keras-hub"]), statistics.median(cpu["keras-hub"])
    for name in candidates:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        rounds = ", ".join(f"{x:.2f}" for x in wall[name])
        print(f"| {name} | {w:.2f} | {c:.2f} | {w / reference[0]:.2f} | {c / reference[1]:.2f} "
              f"| {rounds} |")


if __name__ == "__main__":
    main()
