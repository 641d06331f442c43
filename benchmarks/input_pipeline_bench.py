"""The training input pipeline at COCO's scale against its floor: images/s, images per CPU-second,
and the cores it takes to feed a GPU.

A COCO-format folder of real JPEGs at COCO's sizes (`--num-images` of them, 640x480, 480x640,
640x427, ... at quality 90: smooth noise and colour gradients with a few filled shapes, whose
boxes are the annotations) is written to a temporary folder and prepared with the project's own
`coco_folder` builder, through `focaljax.data.build` as the trainer does it. Then, in the same
process, taking turns (`--rounds`, each timing every candidate over `--batches` batches after an
untimed first one, on a fresh iterator):

  pipeline   `focaljax.data.build(config.dataset).train_iterator(...)`, as `train.train` calls it,
             with `configs/coco_retinanet_r50.py`'s dataset fields (800x1344, that is 800x1333
             padded to a multiple of 32, horizontal flips, its scale jitter, 100 box rows) and
             `config.batch_size` images a batch (`--batch`): the numpy batches the trainer hands
             to `jax_utils.prefetch_to_device`
  floor      a bare tf.data loop on the same JPEG files: `tf.io.read_file`, `tf.io.decode_jpeg`,
             `tf.image.resize` to fit 800x1344 keeping the aspect ratio, `tf.pad` to 800x1344
             (the least that makes a dense batch), the same `map` parallelism (AUTOTUNE,
             deterministic), `batch` and `prefetch`, iterated as numpy

With `--profile`, the stages between the two, each the one before plus one step of the pipeline:
"records" (the prepared TFRecords, parsed and decoded as the pipeline reads them, in place of
the files), "+ normalize" (`pipeline._normalize_and_pad`: ImageNet mean and std, then the pad).

Rates are images/s (wall clock) and images per CPU-second (the CPU time of all of this
process's threads: tf.data's and TensorFlow's thread pools and Python), medians over the rounds.
Images per CPU-second is the rate per core kept busy: a machine shared with other jobs disturbs
it less than the wall clock, and the cores it takes to feed `--target` images/s (10: one V100 at
detectron2's 0.205 s an iteration of 16 images on 8 GPUs) is estimated from it, as
target / (images per CPU-second), assuming the rate scales with the cores.

  nice -n 10 python benchmarks/input_pipeline_bench.py --profile      # the BENCHMARKS.md table
  python benchmarks/input_pipeline_bench.py --quick                   # 8 tiny images, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# configs/ runs from the checkout; it is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from configs import coco_retinanet_r50  # noqa: E402
from focaljax import data  # noqa: E402
from focaljax.data import pipeline  # noqa: E402

# (width, height) of COCO images: the commonest sizes of train2017, landscape and portrait.
COCO_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 426), (640, 424),
              (500, 375), (375, 500), (640, 360), (612, 612))
QUICK_SIZES = ((64, 48), (48, 64))
CATEGORIES = [{"id": i + 1, "name": name} for i, name in
              enumerate(("rectangle", "ellipse", "triangle"))]
JPEG_QUALITY = 90
# detectron2's RetinaNet R50-FPN 1x: 0.205 s an iteration of 16 images on 8 V100s.
V100_IMAGES_PER_S = 16 / 8 / 0.205


def natural_image(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, list]:
    """A photograph-like RGB image (smooth noise over a colour gradient, 1-6 blurred-edge shapes)
    and its COCO annotations `[(category_id, [x, y, w, h])]`."""
    coarse = rng.uniform(0, 255, (max(height // 32, 2), max(width // 32, 2), 3)).astype(np.uint8)
    noise = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(-1, 1, 2)
    ramp = (xs / width * direction[0] + ys / height * direction[1])[..., None]
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    pixels = 0.5 * noise + 0.5 * (colours[0] + ramp * (colours[1] - colours[0]))
    pixels += rng.normal(0, 4, pixels.shape)  # Sensor grain, so that the JPEG has detail to code.
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    annotations = []
    for _ in range(rng.integers(1, 7)):
        w, h = (int(rng.uniform(0.05, 0.5) * s) + 2 for s in (width, height))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        if category == 1:
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill)
        elif category == 2:
            draw.ellipse([x, y, x + w - 1, y + h - 1], fill=fill)
        else:
            draw.polygon([(x, y + h - 1), (x + w // 2, y), (x + w - 1, y + h - 1)], fill=fill)
        annotations.append((category, [x, y, w, h]))
    return image.filter(ImageFilter.GaussianBlur(0.7)), annotations


def write_folder(root: pathlib.Path, num_images: int, sizes: Sequence[tuple[int, int]],
                 seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """`num_images` JPEGs in `root/images` and their COCO-format JSON; (image folder, JSON)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = sizes[(image_id - 1) % len(sizes)]
        image, boxes = natural_image(rng, width, height)
        file_name = f"{image_id:012d}.jpg"
        image.save(image_dir / file_name, quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category, bbox in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category, "bbox": bbox,
                                "area": float(bbox[2] * bbox[3]), "iscrowd": 0})
    annotation_file = root / "train.json"
    annotation_file.write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": CATEGORIES}
    ))
    return image_dir, annotation_file


def dataset_config(data_dir: str, image_dir: pathlib.Path, annotation_file: pathlib.Path,
                   image_size: Sequence[int] | None) -> ml_collections.ConfigDict:
    """`configs/coco_retinanet_r50.py`'s dataset fields, on the folder as a `coco_folder`."""
    config = coco_retinanet_r50.get_config().dataset
    config.name = "coco_folder"
    config.data_dir = data_dir
    config.builder_kwargs = ml_collections.ConfigDict({
        "name": "input_pipeline_bench",
        "splits": {"train": {"images": str(image_dir), "annotations": str(annotation_file)}},
    })
    config.eval_split = "train"
    if image_size:
        config.image_size = tuple(image_size)
    return config


def _fit_and_pad(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """The floor's work on a decoded image: resize to fit `image_size`, pad to it."""
    height, width = image_size
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(height / size[0], width / size[1])
    resized = tf.image.resize(image, tf.cast(tf.round(size * scale), tf.int32))
    shape = tf.shape(resized)
    # Padded as rows of width * 3 values, as the pipeline pads: the cheaper way to tf.pad.
    rows = tf.reshape(resized, [shape[0], shape[1] * 3])
    rows = tf.pad(rows, [[0, height - shape[0]], [0, 3 * (width - shape[1])]])
    return tf.reshape(rows, [height, width, 3])


def _batched(ds: tf.data.Dataset, batch: int) -> Iterator:
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True  # As the pipeline's.
    return ds.with_options(options).as_numpy_iterator()


def floor_iterator(paths: Sequence[str], image_size: tuple[int, int], batch: int) -> Iterator:
    """The floor: JPEG files -> decode, resize to fit, pad; batched as the pipeline batches."""

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return {"image": _fit_and_pad(image, image_size)}

    ds = tf.data.Dataset.from_tensor_slices(list(paths)).repeat()
    return _batched(ds.map(load, num_parallel_calls=tf.data.AUTOTUNE), batch)


def records_iterator(builder, image_size: tuple[int, int], batch: int, normalize: bool
                     ) -> Iterator:
    """The floor on the prepared TFRecords, parsed and decoded as the pipeline reads them;
    with `normalize`, also normalized as the pipeline normalizes."""
    image_feature = builder.info.features["image"]

    def load(example):
        image = image_feature.decode_example(example["image"])
        image.set_shape([None, None, 3])
        if not normalize:
            return {"image": _fit_and_pad(image, image_size)}
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = pipeline._fit_scale(size, image_size)
        resized = tf.image.resize(image, pipeline._resized_size(size, scale))
        return {"image": pipeline._normalize_and_pad(resized, image_size)}

    ds = pipeline.read_records(builder, "train", 0).repeat()
    return _batched(ds.map(load, num_parallel_calls=tf.data.AUTOTUNE), batch)


def rates(make_iterator: Callable[[], Iterator], batches: int, batch: int) -> tuple[float, float]:
    """(images/s, images per CPU-second) of `batches` batches after an untimed first one."""
    iterator = make_iterator()
    next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    del iterator
    gc.collect()  # Stops this iterator's threads before the next candidate starts.
    return batches * batch / wall, batches * batch / cpu


def cores_used() -> dict[str, int | None]:
    """The cores this process may run on and tf.data's and TensorFlow's thread pool sizes
    (0 or None: TensorFlow's default, one thread per schedulable core)."""
    return {
        "os.cpu_count": os.cpu_count(),
        "schedulable": len(os.sched_getaffinity(0)),
        "tf.data private_threadpool_size": tf.data.Options().threading.private_threadpool_size,
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def run(*, num_images: int, sizes: Sequence[tuple[int, int]], image_size: Sequence[int] | None,
        batch: int | None, batches: int, rounds: int, profile: bool,
        target: float = V100_IMAGES_PER_S) -> dict:
    """Writes and prepares the folder, times the candidates; their median rates and the setup."""
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        image_dir, annotation_file = write_folder(root / "source", num_images, sizes)
        config = dataset_config(str(root / "tfds"), image_dir, annotation_file, image_size)
        dataset = data.build(config)
        builder = dataset.builder  # Prepares it.
        batch = batch or coco_retinanet_r50.get_config().batch_size
        paths = sorted(str(p) for p in image_dir.iterdir())
        size = tuple(config.image_size)
        candidates = {
            "pipeline": lambda: dataset.train_iterator(batch, seed=0),
            "floor": lambda: floor_iterator(paths, size, batch),
        }
        if profile:
            candidates["records"] = lambda: records_iterator(builder, size, batch, False)
            candidates["+ normalize"] = lambda: records_iterator(builder, size, batch, True)
        measured = {name: [] for name in candidates}
        for _ in range(rounds):
            for name, make_iterator in candidates.items():
                measured[name].append(rates(make_iterator, batches, batch))
    medians = {name: (statistics.median(w for w, _ in values),
                      statistics.median(c for _, c in values))
               for name, values in measured.items()}
    return {"rates": medians, "rounds": measured, "batch": batch, "image_size": size,
            "num_images": num_images, "cores": cores_used(), "target": target}


def table(result: dict) -> list[str]:
    """The Markdown rows of a `run` result."""
    cores = result["cores"]["schedulable"]
    target = result["target"]
    floor_wall, floor_cpu = result["rates"]["floor"]
    rows = [
        f"| candidate | images/s | images/s per core ({cores} cores) | images / CPU-s "
        f"| / floor (CPU) | / floor (wall) | cores for {target:.2f} images/s (estimate) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (wall, cpu) in result["rates"].items():
        rows.append(f"| {name} | {wall:.1f} | {wall / cores:.1f} | {cpu:.1f} "
                    f"| {cpu / floor_cpu:.2f} | {wall / floor_wall:.2f} | {target / cpu:.2g} |")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="8 images of 64x48 into 64x64 batches of 2 (a smoke test)")
    parser.add_argument("--num-images", type=int, default=None, help="default 256")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="default: the config's")
    parser.add_argument("--batch", type=int, default=None, help="default: config.batch_size")
    parser.add_argument("--batches", type=int, default=None, help="timed batches, default 6")
    parser.add_argument("--rounds", type=int, default=None, help="default 3")
    parser.add_argument("--profile", action="store_true", help="the stages between the two")
    parser.add_argument("--target", type=float, default=V100_IMAGES_PER_S,
                        help="images/s to feed (default: one V100 at detectron2's rate)")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    quick = args.quick
    result = run(
        num_images=args.num_images or (8 if quick else 256),
        sizes=QUICK_SIZES if quick else COCO_SIZES,
        image_size=args.image_size or ((64, 64) if quick else None),
        batch=args.batch or (2 if quick else None),
        batches=args.batches or (2 if quick else 6),
        rounds=args.rounds or (1 if quick else 3),
        profile=args.profile,
        target=args.target,
    )
    height, width = result["image_size"]
    print(f"{platform.processor() or platform.machine()}, TensorFlow {tf.__version__}; "
          f"cores: {result['cores']}; {result['num_images']} JPEGs -> {height}x{width}, batches "
          f"of {result['batch']}, {args.batches or (2 if quick else 6)} timed batches x "
          f"{len(next(iter(result['rounds'].values())))} rounds\n")
    print("\n".join(table(result)))
    print("\nimages / CPU-s by round: " + "; ".join(
        f"{name} " + ", ".join(f"{c:.1f}" for _, c in values)
        for name, values in result["rounds"].items()))


if __name__ == "__main__":
    main()
