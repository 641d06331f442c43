"""Speed of `multilevel_roi_align`, forward and forward + gradient, at the Faster R-CNN configs'
sizes, for several sampling ratios, optionally against the function at another git revision.

`--scale shapes` (the default), the shapes of `configs/shapes_faster_rcnn.py`'s train step: P2-P5
maps of 128x128 images (32x32 to 4x4) with 64 channels, 16 images, 32 RoIs an image (sides
log-uniform in 8-128 px, a quarter of them zero padding rows, as `sample_rois` pads). `--scale
coco`, those of `configs/coco_faster_rcnn_r50.py`: 2 images of 800x1344 (P2 200x336 to P5 25x42)
with 256 channels, 512 RoIs an image (sides log-uniform in 16-512 px, no padding). Sides are
drawn independently (aspect ratios up to 32, as some proposals and ground-truth boxes have), or
with `--max-aspect A` from a size and an aspect ratio in [1/A, A]. 7x7 bins, vmapped over the
images as `FasterRCNN` calls it, compiled with the config's XLA options as the train step is.
"fwd+grad" is the gradient of `sum(pooled * w)` with respect to the maps, what the train step
pays for. `--baseline REV` also loads `focaljax/ops/roi_align.py` as it was at git revision REV
and times it in the same process; the largest difference of its values and gradients from this
checkout's, relative to their largest magnitude, shows whether the two compute the same thing.

Every function runs in alternating rounds so that all see the same load; the table gives the
median per call over the rounds, wall-clock and CPU time of the process (on a shared machine the
CPU time is the steadier of the two).

  python benchmarks/roi_align_bench.py                          # the table in BENCHMARKS.md
  python benchmarks/roi_align_bench.py --baseline HEAD          # uncommitted change vs. last commit
  python benchmarks/roi_align_bench.py --scale coco --sampling-ratios 0 --rounds 2 --calls 1 \
      --baseline REV
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# configs/ and train/ run from the checkout; they are not installed.
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import coco_faster_rcnn_r50, shapes_faster_rcnn  # noqa: E402
from focaljax.ops import multilevel_roi_align  # noqa: E402
from train import compilation  # noqa: E402

# `--scale`: the config whose sizes are used, images, box sides in pixels, zero-padded share of
# the RoI rows (`sample_rois` pads a quarter of the shapes config's rows; COCO's 512 are full).
SCALES = {
    "shapes": {"config": shapes_faster_rcnn.get_config, "sides": (8.0, 128.0), "padding": 0.25},
    "coco": {"config": lambda: coco_faster_rcnn_r50.get_config("R-50.pkl"), "images": 2,
             "sides": (16.0, 512.0), "padding": 0.0},
}


def multilevel_roi_align_at(revision: str):
    """`multilevel_roi_align` of `focaljax/ops/roi_align.py` as it was at git `revision`."""
    source = subprocess.run(
        ["git", "show", f"{revision}:focaljax/ops/roi_align.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    path = pathlib.Path(tempfile.mkdtemp()) / "roi_align_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("roi_align_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.multilevel_roi_align


def inputs(config, num_images: int, sides: tuple[float, float], padding: float,
           max_aspect: float = 0.0, seed: int = 0):
    """`(maps per level [N, H_l, W_l, C], boxes [N, K, 4], cotangent [N, K, oh, ow, C])`.

    Box sides are log-uniform in the scale's `SCALES[...]["sides"]` pixels, each side drawn on
    its own (`max_aspect` 0) or the two from one size and an aspect ratio log-uniform in
    `[1 / max_aspect, max_aspect]`; the last `padding` of the rows are zero boxes.
    """
    height, width = config.dataset.image_size
    channels = config.model.fpn_channels
    num_rois, size = config.model.roi.num_samples, config.model.roi.output_size
    rng = np.random.default_rng(seed)
    maps = [
        rng.normal(size=(num_images, -(-height // 2**level), -(-width // 2**level), channels))
        for level in range(2, 6)
    ]
    low, high = sides
    if max_aspect:
        scale = np.exp(rng.uniform(np.log(low), np.log(high), (num_images, num_rois)))
        aspect = np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect), scale.shape))
        side = np.stack([scale * np.sqrt(aspect), scale / np.sqrt(aspect)], axis=-1)
    else:
        side = np.exp(rng.uniform(np.log(low), np.log(high), (num_images, num_rois, 2)))
    side = np.minimum(side, [width, height])
    x1 = rng.uniform(0, width - side[..., 0])
    y1 = rng.uniform(0, height - side[..., 1])
    boxes = np.stack([x1, y1, x1 + side[..., 0], y1 + side[..., 1]], axis=-1)
    boxes[:, num_rois - int(num_rois * padding):] = 0.0
    cotangent = rng.normal(size=(num_images, num_rois, size, size, channels))
    return (
        [jnp.asarray(m, jnp.float32) for m in maps],
        jnp.asarray(boxes, jnp.float32),
        jnp.asarray(cotangent, jnp.float32),
    )


def compiled_functions(pool_boxes, config, sampling_ratio: int, maps, boxes, cotangent):
    """`{"fwd": f(maps, boxes), "fwd+grad": g(maps, boxes, cotangent)}`, compiled."""
    roi = config.model.roi

    def pool(maps, boxes):
        return jax.vmap(
            lambda m, b: pool_boxes(
                m, b, min_level=2, max_level=5, output_size=(roi.output_size, roi.output_size),
                sampling_ratio=sampling_ratio, max_sampling_ratio=roi.max_sampling_ratio or None,
            )
        )(maps, boxes)

    def grad(maps, boxes, cotangent):
        return jax.grad(lambda m: jnp.sum(pool(m, boxes) * cotangent))(maps)

    options = compilation.compiler_options(config)
    return {
        "fwd": jax.jit(pool).lower(maps, boxes).compile(compiler_options=options),
        "fwd+grad": jax.jit(grad).lower(maps, boxes, cotangent).compile(compiler_options=options),
    }


def relative_difference(got, want) -> float:
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    scale = max(float(jnp.abs(w).max()) for w in want)
    return max(float(jnp.abs(g - w).max()) for g, w in zip(got, want, strict=True)) / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=tuple(SCALES), default="shapes")
    parser.add_argument("--baseline", default="", help="git revision to compare with")
    parser.add_argument("--sampling-ratios", default="1,2,0", help="0: the adaptive grid")
    parser.add_argument("--images", type=int, default=0, help="default: the scale's")
    parser.add_argument("--max-aspect", type=float, default=0.0,
                        help="box aspect ratios log-uniform up to this; 0: sides independent")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="calls per round")
    args = parser.parse_args()
    scale = SCALES[args.scale]
    config = scale["config"]()
    images = args.images or scale.get("images", config.batch_size)

    maps, boxes, cotangent = inputs(config, images, scale["sides"], scale["padding"],
                                    args.max_aspect)
    arguments = {"fwd": (maps, boxes), "fwd+grad": (maps, boxes, cotangent)}
    versions = {"this checkout": multilevel_roi_align}
    if args.baseline:
        versions[f"at {args.baseline}"] = multilevel_roi_align_at(args.baseline)
    ratios = [int(r) for r in args.sampling_ratios.split(",")]
    runs = {  # (sampling ratio, version) -> {kind: compiled function}
        (ratio, name): compiled_functions(pool, config, ratio, maps, boxes, cotangent)
        for ratio in ratios
        for name, pool in versions.items()
    }
    results = {
        (key, kind): function(*arguments[kind])
        for key, functions in runs.items()
        for kind, function in functions.items()
    }
    jax.block_until_ready(results)  # Or the first timed call waits for these too.
    wall = {key: [] for key in results}
    cpu = {key: [] for key in results}
    for _ in range(args.rounds):
        for (key, kind) in results:
            function = runs[key][kind]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.calls):
                out = function(*arguments[kind])
            jax.block_until_ready(out)
            wall[key, kind].append((time.perf_counter() - start) / args.calls)
            cpu[key, kind].append((time.process_time() - start_cpu) / args.calls)

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}; {images} images x "
          f"{boxes.shape[1]} RoIs x 7x7 bins x {maps[0].shape[-1]} channels on P2-P5; "
          f"{args.rounds} rounds of {args.calls} calls; median ms per call, wall / CPU")
    first = list(versions)[0]
    print("| sampling ratio | RoIAlign | fwd | fwd+grad | difference to "
          f"{first}: values, gradients |")
    print("|---|---|---:|---:|---|")
    for ratio, name in runs:
        cells = [
            f"{statistics.median(wall[(ratio, name), kind]) * 1e3:.1f} / "
            f"{statistics.median(cpu[(ratio, name), kind]) * 1e3:.1f}"
            for kind in ("fwd", "fwd+grad")
        ]
        difference = ", ".join(
            f"{relative_difference(results[(ratio, name), k], results[(ratio, first), k]):.1e}"
            for k in ("fwd", "fwd+grad")
        )
        label = "adaptive (0)" if ratio == 0 else str(ratio)
        print(f"| {label} | {name} | {cells[0]} | {cells[1]} | {difference} |")


if __name__ == "__main__":
    main()
