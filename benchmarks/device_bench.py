"""One accelerator, one command: the focal loss, the R50-FPN train steps, NMS, as Markdown tables.

On one GPU or TPU (the first device), in about 8 minutes, this prints the tables that go into
BENCHMARKS.md:

  loss         value and gradient of `focaljax.losses.sigmoid_focal_loss` over 200k anchors x 80
               classes, float32 and bfloat16 (`benchmarks/loss_bench.py`'s candidates, floor and
               timing), and its achieved memory bandwidth: logits and targets read, the gradient
               written, over the median time, beside the device's peak from its datasheet
               (`PEAK_GB_S`, "unknown" for a device not listed)
  train step   RetinaNet and Faster R-CNN R50-FPN of the COCO recipes with a weight file
               (`benchmarks/coco_scale_bench.py`'s models and random batch), 800x1344, 2 images,
               float32 and bfloat16: compile time, images/s (median of `--steps` after a first
               step), the device's peak memory (`memory_stats()["peak_bytes_in_use"]`, each
               model and dtype in a process of its own so that each peak is its own) beside
               XLA's memory analysis of the step (arguments + outputs - aliased + temporaries)
  NMS          `focaljax.ops.non_max_suppression` on 1k-20k boxes (`benchmarks/nms_bench.py`'s
               boxes and timing), 100 and 1000 outputs
  pipeline     `benchmarks/input_pipeline_bench.py` on the host's CPUs at reduced size: 64 generated
               COCO-sized JPEGs through the training pipeline at 800x1344 against the bare
               decode-resize floor, images/s, images per CPU-second and the cores to feed 10
               images/s (an estimate from the per-core rate)

On a CPU (`--quick`) the same runs at reduced sizes (resnet_tiny, narrow FPN and heads, RetinaNet
on P3-P4 only, 128x128 images, 1 image, small loss and NMS sizes, 8 pipeline images of 64x48) in
one process; `tests/test_device_bench.py` runs it for RetinaNet in float32 only, the step in a
process of its own as on an accelerator (compiling all four steps takes minutes on 2 cores), so
that the script is known to run before an accelerator is lent.

  python benchmarks/device_bench.py                 # on the accelerator: the BENCHMARKS.md table
  python benchmarks/device_bench.py --quick         # CPU, reduced sizes: minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The other benchmarks, configs/ and train/ run from the checkout; they are not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import coco_scale_bench  # noqa: E402
import input_pipeline_bench  # noqa: E402
import jax  # noqa: E402
import loss_bench  # noqa: E402
import ml_collections  # noqa: E402
import nms_bench  # noqa: E402

from focaljax.ops import non_max_suppression  # noqa: E402
from train import compilation  # noqa: E402

# TensorFlow (nms_bench's import, the input pipeline) runs on the host: keep it off the accelerator.
nms_bench.tf.config.set_visible_devices([], "GPU")

# Peak memory bandwidth in GB/s by `device_kind`, from the vendors' datasheets.
PEAK_GB_S = {
    "NVIDIA H200": 4800,
    "NVIDIA H100 80GB HBM3": 3350,
    "NVIDIA H100 PCIe": 2000,
    "NVIDIA A100-SXM4-80GB": 2039,
    "NVIDIA A100-SXM4-40GB": 1555,
    "NVIDIA A100 80GB PCIe": 1935,
    "NVIDIA L4": 300,
    "Tesla V100-SXM2-16GB": 900,
    "Tesla T4": 320,
    "TPU v4": 1200,
    "TPU v5 lite": 819,
    "TPU v5": 2765,
    "TPU v6 lite": 1640,
}


def quick_model(config: ml_collections.ConfigDict) -> None:
    """Shrinks the model of a COCO config to seconds of compilation on a CPU."""
    model = config.model
    model.backbone = "resnet_tiny"
    model.stride_in_1x1 = False  # A basic block has no 1x1 convolution.
    model.fpn_channels = 16
    if model.name == "retinanet":
        model.head_channels = 16
        model.head_convs = 1
        model.min_level, model.max_level = 3, 4
    else:
        model.rpn.train_pre_nms_topk = model.rpn.test_pre_nms_topk = 100
        model.rpn.train_post_nms_topk = model.rpn.test_post_nms_topk = 50
        model.roi.num_samples = 16
        model.roi.sampling_ratio = 1
        model.roi.head_fc_dim = 32


def loss_rows(sizes: Sequence[int], dtypes: Sequence[str], repeats: int) -> list[str]:
    device = jax.devices()[0]
    peak = PEAK_GB_S.get(device.device_kind)
    fns = {"focaljax": loss_bench.value_and_grad_fn(loss_bench.CANDIDATES["focaljax"]),
           "floor": loss_bench.floor}
    rows = [
        "| dtype | anchors x 80 | focaljax ms | floor ms | focaljax / floor | focaljax GB/s "
        "| device peak GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype in dtypes:
        for n in sizes:
            logits, targets = loss_bench.inputs(n, dtype)
            ms = {name: wall for name, (wall, _) in
                  loss_bench.median_milliseconds(fns, logits, targets, repeats=repeats).items()}
            # Logits and targets in, the gradient out: what a fused pass must move.
            gb_s = 3 * logits.nbytes / (ms["focaljax"] * 1e-3) / 1e9
            rows.append(f"| {dtype} | {n:,} | {ms['focaljax']:.3f} | {ms['floor']:.3f} "
                        f"| {ms['focaljax'] / ms['floor']:.2f}x | {gb_s:.3g} "
                        f"| {peak if peak else 'unknown'} |")
    return rows


def step_result(model: str, dtype: str, image_size: Sequence[int], batch: int, steps: int,
                quick: bool) -> dict:
    """Compiles and runs the train step of `model` in `dtype`; times, images/s and memory."""
    num_devices = jax.local_device_count()
    config = coco_scale_bench.coco_config(model, dtype, image_size, batch * num_devices)
    if quick:
        quick_model(config)
    _, step, state = coco_scale_bench.train_step(config)
    inputs = coco_scale_bench.random_batch(num_devices, batch, image_size,
                                           config.dataset.max_boxes)
    start = time.perf_counter()
    compiled = step.lower(state, inputs).compile(
        compiler_options=compilation.compiler_options(config)
    )
    compile_s = time.perf_counter() - start
    state, _, _, _ = coco_scale_bench.timed_steps(compiled, state, inputs, 1)
    _, wall, _, metrics = coco_scale_bench.timed_steps(compiled, state, inputs, steps)
    seconds = statistics.median(wall)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "model": model, "dtype": dtype, "compile_s": compile_s, "step_s": seconds,
        "images_per_s": batch * num_devices / seconds, "loss": float(metrics["loss"][0]),
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "xla_bytes": coco_scale_bench.memory(compiled)["sum"],
    }


def step_rows(models: Sequence[str], dtypes: Sequence[str], image_size: Sequence[int],
              batch: int, steps: int, quick: bool, isolate: bool) -> list[str]:
    rows = [
        "| model | dtype | compile s | ms / step | images/s | device peak GB "
        "| XLA memory analysis GB | first timed loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(rows), flush=True)  # Then each row as it is measured.
    for model in models:
        for dtype in dtypes:
            if isolate:
                command = [sys.executable, __file__, "--step", model, dtype,
                           "--image-size", *map(str, image_size), "--batch", str(batch),
                           "--steps", str(steps)] + (["--quick"] if quick else [])
                output = subprocess.run(command, capture_output=True, text=True)
                if output.returncode:
                    raise RuntimeError(f"the {model} {dtype} step's process failed:\n"
                                       f"{output.stderr[-3000:]}")
                result = json.loads(output.stdout.strip().splitlines()[-1])
            else:
                result = step_result(model, dtype, image_size, batch, steps, quick)
            peak = result["peak_bytes"]
            rows.append(
                f"| {model} | {dtype} | {result['compile_s']:.1f} "
                f"| {result['step_s'] * 1e3:.1f} | {result['images_per_s']:.2f} "
                f"| {f'{peak / 1e9:.2f}' if peak else 'n/a (no memory_stats)'} "
                f"| {result['xla_bytes'] / 1e9:.2f} | {result['loss']:.4f} |"
            )
            print(rows[-1], flush=True)
    return rows


def nms_rows(sizes: Sequence[int], max_outputs: Sequence[int], repeats: int) -> list[str]:
    rows = ["| boxes | max_output | kept | focaljax ms |", "|---:|---:|---:|---:|"]
    for num_boxes in sizes:
        boxes, scores = nms_bench.random_detections(num_boxes)
        boxes, scores = jax.device_put(boxes), jax.device_put(scores)
        for max_output in max_outputs:
            nms = jax.jit(lambda b, s, m=max_output: non_max_suppression(
                b, s, iou_threshold=nms_bench.IOU_THRESHOLD, max_output_size=m))
            seconds, kept = nms_bench.median_seconds(nms, boxes, scores, repeats=repeats)
            rows.append(f"| {num_boxes} | {max_output} | {int((kept >= 0).sum())} "
                        f"| {seconds * 1e3:.3f} |")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes for a CPU (the test's)")
    parser.add_argument("--models", nargs="+", choices=tuple(coco_scale_bench.MODELS),
                        default=list(coco_scale_bench.MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--batch", type=int, default=None, help="images a device")
    parser.add_argument("--steps", type=int, default=None, help="timed train steps")
    parser.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                        help="each train step in a process of its own (auto: unless on CPU)")
    parser.add_argument("--step", nargs=2, metavar=("MODEL", "DTYPE"),
                        help=argparse.SUPPRESS)  # One isolated train step; prints JSON.
    args = parser.parse_args(argv)
    image_size = args.image_size or ((128, 128) if args.quick else (800, 1344))
    batch = args.batch or (1 if args.quick else 2)
    steps = args.steps or (1 if args.quick else 10)
    if args.step:
        print(json.dumps(step_result(*args.step, image_size, batch, steps, args.quick)))
        return

    start = time.perf_counter()
    device = jax.devices()[0]
    isolate = {"yes": True, "no": False, "auto": device.platform != "cpu"}[args.isolate]
    print(f"# {device.device_kind} ({device.platform}), jax {jax.__version__}, "
          f"{jax.local_device_count()} local device(s), the first used\n", flush=True)
    loss_sizes = (1000,) if args.quick else (200_000,)
    print(f"## Sigmoid focal loss, value and gradient, alpha 0.25, gamma 2, "
          f"{'median of 4' if args.quick else 'median of 40'}\n")
    print("\n".join(loss_rows(loss_sizes, args.dtypes, 4 if args.quick else 40)), flush=True)

    height, width = image_size
    print(f"\n## R50-FPN train steps, {batch} images of {height}x{width} a device, "
          f"{steps} timed steps after a first one"
          + (" (quick: resnet_tiny, narrow FPN and heads)" if args.quick else "") + "\n")
    step_rows(args.models, args.dtypes, image_size, batch, steps, args.quick, isolate)

    print("\n## NMS, IoU 0.5, random clustered boxes on a 640x640 image\n")
    sizes = (1000,) if args.quick else (1000, 5000, 20000)
    print("\n".join(nms_rows(sizes, (100, 1000), 3 if args.quick else 20)), flush=True)

    quick = args.quick
    pipeline = input_pipeline_bench.run(
        num_images=8 if quick else 64,
        sizes=input_pipeline_bench.QUICK_SIZES if quick else input_pipeline_bench.COCO_SIZES,
        image_size=(64, 64) if quick else None, batch=2 if quick else None,
        batches=2 if quick else 3, rounds=1 if quick else 2, profile=False,
    )
    height, width = pipeline["image_size"]
    print(f"\n## Input pipeline, {pipeline['num_images']} JPEGs -> {height}x{width}, batches of "
          f"{pipeline['batch']}, on the host's CPUs: {pipeline['cores']}\n")
    print("\n".join(input_pipeline_bench.table(pipeline)), flush=True)
    print(f"\nTotal: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
