"""Speed of greedy NMS: focaljax vs a NumPy reference vs TensorFlow, and of RetinaNet inference.

Every NMS candidate keeps at most `max_output` of `N` random boxes at IoU threshold 0.5, in this
one process, on the same inputs:

  focaljax  `focaljax.ops.non_max_suppression`, jitted (exact greedy, tiled, fixed-shape output)
  numpy     the usual vectorized NumPy loop: take the best remaining box, drop those overlapping it
  tf        `tf.image.non_max_suppression` (TensorFlow's C++ kernel)

The boxes imitate a detector's raw output on a 640x640 image: jittered copies of N / 20 objects
of varied size and shape, uniform random scores, so that suppression chains are realistic. All
three must return the same indices (checked; the "agree" column). Times are the median of
`--repeats` calls after a warm-up call.

The last row times the whole `focaljax.ops.retinanet_postprocess` of one 640x640 image: logits
of 80 classes and deltas on the 76,725 anchors of P3-P7 -> per-level top 1000, score threshold
0.05, decoding, per-class NMS at 0.5, 100 detections.

  python benchmarks/nms_bench.py                      # the table in BENCHMARKS.md
  python benchmarks/nms_bench.py --sizes 5000 --max-outputs 100 --repeats 50
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from focaljax.ops import (  # noqa: E402
    generate_anchors,
    non_max_suppression,
    num_anchors_per_level,
    retinanet_postprocess,
)

IMAGE_SIZE = 640
IOU_THRESHOLD = 0.5


def random_detections(num_boxes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`[N, 4]` xyxy boxes clustered on N / 20 objects and `[N]` uniform scores, float32."""
    rng = np.random.default_rng(seed)
    num_objects = max(1, num_boxes // 20)
    centre = rng.uniform(0, IMAGE_SIZE, (num_objects, 2))
    size = np.exp(rng.uniform(np.log(16), np.log(320), (num_objects, 1))) * np.exp(
        rng.uniform(-0.5, 0.5, (num_objects, 2))
    )
    owner = rng.integers(0, num_objects, num_boxes)
    box_size = size[owner] * np.exp(rng.normal(0, 0.15, (num_boxes, 2)))
    box_centre = centre[owner] + rng.normal(0, 0.1, (num_boxes, 2)) * size[owner]
    boxes = np.concatenate([box_centre - box_size / 2, box_centre + box_size / 2], axis=1)
    boxes = np.clip(boxes, 0, IMAGE_SIZE)
    return boxes.astype(np.float32), rng.random(num_boxes).astype(np.float32)


def numpy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, max_output: int):
    """Greedy NMS as commonly written in NumPy (py-faster-rcnn's `py_cpu_nms`, with `>`)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and len(keep) < max_output:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return np.asarray(keep, np.int64)


def median_seconds(fn: Callable, *args, repeats: int) -> tuple[float, object]:
    result = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def nms_row(num_boxes: int, max_output: int, *, repeats: int, tile_size: int | None) -> dict:
    boxes, scores = random_detections(num_boxes)
    jax_boxes, jax_scores = jax.device_put(boxes), jax.device_put(scores)
    focaljax_nms = jax.jit(
        lambda b, s: non_max_suppression(
            b, s, iou_threshold=IOU_THRESHOLD, max_output_size=max_output, tile_size=tile_size
        )
    )
    tf_boxes = tf.constant(boxes[:, [1, 0, 3, 2]])  # TensorFlow wants (y1, x1, y2, x2)
    tf_scores = tf.constant(scores)

    def tf_nms(b, s):
        return tf.image.non_max_suppression(b, s, max_output, iou_threshold=IOU_THRESHOLD).numpy()

    t_focaljax, kept = median_seconds(focaljax_nms, jax_boxes, jax_scores, repeats=repeats)
    t_numpy, kept_numpy = median_seconds(
        numpy_nms, boxes, scores, IOU_THRESHOLD, max_output, repeats=repeats
    )
    t_tf, kept_tf = median_seconds(tf_nms, tf_boxes, tf_scores, repeats=repeats)
    kept = np.asarray(kept)
    kept = kept[kept >= 0]
    agree = np.array_equal(kept, kept_numpy) and np.array_equal(kept, kept_tf)
    return {
        "N": num_boxes,
        "max_output": max_output,
        "kept": len(kept),
        "focaljax": t_focaljax,
        "numpy": t_numpy,
        "tf": t_tf,
        "agree": agree,
    }


def postprocess_seconds(*, repeats: int) -> tuple[float, int]:
    size = (IMAGE_SIZE, IMAGE_SIZE)
    anchors = generate_anchors(size)
    per_level = num_anchors_per_level(size)
    rng = np.random.default_rng(0)
    # A trained detector's logits: almost all background, a few confident (anchor, class) pairs.
    logits = rng.normal(-6.0, 1.5, (len(anchors), 80)).astype(np.float32)
    hot = rng.random(logits.shape) < 1e-3
    logits[hot] = rng.normal(1.0, 2.0, hot.sum())
    deltas = rng.normal(0.0, 0.2, (len(anchors), 4)).astype(np.float32)
    fn = jax.jit(
        lambda x, d: retinanet_postprocess(
            x, d, anchors=jnp.asarray(anchors), anchors_per_level=per_level, image_size=size
        )
    )
    seconds, _ = median_seconds(fn, jax.device_put(logits), jax.device_put(deltas), repeats=repeats)
    return seconds, len(anchors)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--max-outputs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tile-size", type=int, default=None, help="default: the library's")
    parser.add_argument("--skip-postprocess", action="store_true")
    args = parser.parse_args()

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {device.platform} ({device.device_kind}), "
        f"tensorflow {tf.__version__}, numpy {np.__version__}, {platform.processor() or 'cpu'} "
        f"x{os.cpu_count()} cores; IoU threshold {IOU_THRESHOLD}, median of {args.repeats}\n"
    )
    print(
        "| boxes | max_output | kept | focaljax ms | NumPy ms | TF ms | NumPy / focaljax "
        "| TF / focaljax | agree |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for num_boxes in args.sizes:
        for max_output in args.max_outputs:
            row = nms_row(num_boxes, max_output, repeats=args.repeats, tile_size=args.tile_size)
            print(
                f"| {row['N']} | {row['max_output']} | {row['kept']} "
                f"| {milliseconds(row['focaljax'])} | {milliseconds(row['numpy'])} "
                f"| {milliseconds(row['tf'])} | {row['numpy'] / row['focaljax']:.2f} "
                f"| {row['tf'] / row['focaljax']:.2f} | {'yes' if row['agree'] else 'NO'} |",
                flush=True,
            )
    if not args.skip_postprocess:
        seconds, num_anchors = postprocess_seconds(repeats=args.repeats)
        print(
            f"\n`retinanet_postprocess`, one {IMAGE_SIZE}x{IMAGE_SIZE} image, {num_anchors} "
            f"anchors x 80 classes (top 1000 per level, 100 detections): "
            f"{milliseconds(seconds)} ms"
        )


if __name__ == "__main__":
    main()
