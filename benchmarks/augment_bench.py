"""What each training augmentation (focaljax.data.augment) and repeat-factor sampling cost in
pipeline throughput: images/s of `focaljax.data.create_train_iterator`, images per CPU-second (the
CPU time of all of this process's threads, which a machine shared with other jobs disturbs less
than the wall clock), and the ratio of the latter to the same pipeline with them off, measured in
the same run.

  python benchmarks/augment_bench.py                        # the table in the final report
  python benchmarks/augment_bench.py --rounds 5 --batches 20 --source_size 480 640

On a "shapes" train split generated in a temporary folder (`--num_train` images of
`--source_size`, PNG), batches of `--batch` images resized to fit `--image_size` (the pipeline's
defaults otherwise: horizontal flip on, no scale jitter). Each round times every setting once, in
turn, over `--batches` batches after the first (which holds the pipeline's start); the table shows
the medians over the rounds, so that a load that drifts during the run weighs on every setting
alike. The ratio is the median images per CPU-second over that of "off".
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import logging  # noqa: E402

from focaljax.data import Augmentations, Shapes, create_train_iterator, shapes_config  # noqa: E402

SETTINGS = (
    ("off", Augmentations(), 0.0),
    ("vertical_flip", Augmentations(vertical_flip=True), 0.0),
    ("rotate90", Augmentations(rotate90=True), 0.0),
    ("brightness 0.4", Augmentations(brightness=0.4), 0.0),
    ("contrast 0.4", Augmentations(contrast=0.4), 0.0),
    ("saturation 0.4", Augmentations(saturation=0.4), 0.0),
    ("hue 0.1", Augmentations(hue=0.1), 0.0),
    ("jpeg_quality (30, 95)", Augmentations(jpeg_quality=(30, 95)), 0.0),
    ("safe_crop (0.5, 1.0)", Augmentations(safe_crop=(0.5, 1.0)), 0.0),
    ("all of the above", Augmentations(
        vertical_flip=True, rotate90=True, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
        jpeg_quality=(30, 95), safe_crop=(0.5, 1.0),
    ), 0.0),
    ("mosaic 0.5", Augmentations(mosaic=0.5), 0.0),
    ("mosaic 1.0", Augmentations(mosaic=1.0), 0.0),
    ("repeat_factor_threshold 1.0", Augmentations(), 1.0),
)


def throughput(builder, args, augmentations, threshold) -> tuple[float, float]:
    """(images per second, images per CPU-second) of one setting."""
    iterator = create_train_iterator(
        builder, image_size=tuple(args.image_size), max_boxes=16, per_device_batch_size=args.batch,
        seed=0, augmentations=augmentations, repeat_factor_threshold=threshold,
    )
    next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
        next(iterator)
    num_images = args.batches * args.batch
    return (num_images / (time.perf_counter() - start),
            num_images / (time.process_time() - cpu_start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source_size", type=int, nargs=2, default=(384, 512))
    parser.add_argument("--image_size", type=int, nargs=2, default=(384, 512))
    parser.add_argument("--num_train", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)

    with tempfile.TemporaryDirectory() as data_dir:
        builder = Shapes(
            config=shapes_config(image_size=tuple(args.source_size), num_train=args.num_train,
                                 num_validation=1, seed=0),
            data_dir=data_dir,
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
        rates = {name: [] for name, _, _ in SETTINGS}
        for _ in range(args.rounds):
            for name, augmentations, threshold in SETTINGS:
                rates[name].append(throughput(builder, args, augmentations, threshold))

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TensorFlow "
          f"{tf.__version__}; shapes {args.source_size[0]}x{args.source_size[1]} -> "
          f"{args.image_size[0]}x{args.image_size[1]}, batch {args.batch}, {args.batches} "
          f"batches x {args.rounds} rounds")
    base = statistics.median(cpu for _, cpu in rates["off"])
    print(f"| {'setting':<28} | images/s | images/CPU-s | ratio to off (CPU) | CPU rounds |")
    print(f"|{'-' * 30}|----------|--------------|--------------------|------------|")
    for name, _, _ in SETTINGS:
        wall = statistics.median(w for w, _ in rates[name])
        cpu = statistics.median(c for _, c in rates[name])
        spread = ", ".join(f"{c:.0f}" for _, c in rates[name])
        print(f"| {name:<28} | {wall:8.1f} | {cpu:12.1f} | {cpu / base:18.2f} | {spread} |")


if __name__ == "__main__":
    main()
