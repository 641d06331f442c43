"""The COCO recipes' train steps at the paper's scale: compile time, XLA's memory analysis, FLOPs,
the CPU step time; and the CPU convolution path (`train.compilation.BACKEND_DEFAULTS`) on and off.

The models are those of `configs/coco_retinanet_r50.py` and `configs/coco_faster_rcnn_r50.py`
with a weight file (the paper's and detectron2's recipe: frozen BN, stem and C2 frozen, the
stride in the 1x1 convolutions). The weights are random here, and no file is read: they change
nothing that is measured. 80 classes, images of `--image-size` (the configs' 800x1344: 800x1333
padded to a multiple of 32), `--batch` images a device, random images with three random boxes
each (padded to the configs' 100 box rows), the configs' optimizer (SGD with momentum), compute
dtype `model.dtype` (`--dtypes`: float32, bfloat16), the step compiled as the trainer compiles
it (`jax.pmap` of `train.train.train_step`, the state donated, `compilation.compiler_options`).

`--mode scale` (the default), for each model and dtype:

  compile cold   `Lowered.compile()` into an empty persistent compilation cache (a temporary
                 folder), after the lowering (timed apart)
  compile warm   the same again after `jax.clear_caches()`: lowering again, then the executable
                 read back from the persistent cache (the cache's folder must have grown)
  memory         `Compiled.memory_analysis()`: the arguments (the train state and the batch),
                 the outputs, what the outputs alias (the donated state), the temporaries;
                 their sum (arguments + outputs - aliased + temporaries, all live at once) and
                 XLA's own `peak_memory_in_bytes`
  FLOPs          `Compiled.cost_analysis()["flops"]` of the train step, per image; and of the
                 inference forward pass (`detector.apply(..., train=False)`, no post-processing),
                 from the lowered HLO, per image, at the same size and, for RetinaNet, at
                 640x640 beside the published figure. XLA counts a multiply-add as 2 FLOPs.
  CPU step       `--steps` steps after an untimed first one: wall time and this process's CPU
                 time (all threads), median; achieved FLOP/s = the step's FLOPs / wall time.

`--mode detectors`: for each of `--dtypes`, the two models' steps (each compiled as above) in
this one process, `--rounds` alternating rounds of `--steps` steps after a first, untimed step
each: the median time a step and Faster R-CNN's ratio to RetinaNet's, wall and CPU time.

`--mode options`: each model's float32 step compiled with the CPU default options and with none
(YNNPACK's convolutions, XLA:CPU's own default), in this one process, the same state and batch;
`--rounds` alternating rounds of `--steps` steps after a first, untimed step each; the median
time a step and the ratio, and the first step's loss and gradient norm of each (they compute
the same thing, to float32 rounding).

  python benchmarks/coco_scale_bench.py                               # the table in BENCHMARKS.md
  python benchmarks/coco_scale_bench.py --mode options --image-size 512 512
  python benchmarks/coco_scale_bench.py --models retinanet --dtypes float32 --steps 1
  python benchmarks/coco_scale_bench.py --mode detectors --rounds 2 --steps 1
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# configs/ and train/ run from the checkout; they are not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import train_step_bench  # noqa: E402

from configs import coco_faster_rcnn_r50, coco_retinanet_r50  # noqa: E402
from focaljax import detectors  # noqa: E402
from focaljax.models import resnet  # noqa: E402
from train import compilation, train  # noqa: E402

NUM_CLASSES = 80
MODELS = {"retinanet": coco_retinanet_r50, "faster_rcnn": coco_faster_rcnn_r50}
# Only the recipe depends on the name (frozen BN, freeze_at=2, stride in the 1x1): no file is read.
WEIGHTS = "R-50.pkl"
# Published training memory at 2 images a GPU, R50-FPN 1x (from issue #25's text: detectron2's and
# mmdetection's model zoos).
PEER_MEMORY_GB = {
    "retinanet": "detectron2 4.1, mmdetection 3.8",
    "faster_rcnn": "mmdetection 4.0",
}
# TF Model Garden's RetinaNet R50-FPN, one 640x640 image, forward (the figure issue #25 quotes).
PEER_FORWARD_GFLOPS_640 = 97.0


def coco_config(model: str, dtype: str, image_size: Sequence[int], batch_size: int,
                backbone: str = "resnet50") -> ml_collections.ConfigDict:
    """The COCO recipe of `model` from ImageNet weights, at `image_size`, `batch_size` images a
    step, compute dtype `dtype`, with `backbone` (a smaller one for quick runs)."""
    config = MODELS[model].get_config(WEIGHTS)
    config.model.dtype = dtype
    config.model.backbone = backbone
    # Only a bottleneck has a 1x1 convolution to put the stride in.
    config.model.stride_in_1x1 = resnet.PRESETS[backbone]["block"] == "bottleneck"
    config.dataset.image_size = tuple(image_size)
    config.batch_size = batch_size
    return config


def random_batch(num_devices: int, per_device: int, image_size: Sequence[int],
                 max_boxes: int, seed: int = 2) -> dict[str, np.ndarray]:
    """Random images with three random boxes each, `[devices, per_device, ...]`."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    shape = (num_devices, per_device)
    x0, x1 = np.sort(rng.uniform(0, width, (2, *shape, 3)), axis=0)
    y0, y1 = np.sort(rng.uniform(0, height, (2, *shape, 3)), axis=0)
    boxes = np.zeros((*shape, max_boxes, 4), np.float32)
    boxes[..., :3, :] = np.stack([x0, y0, x1, y1], axis=-1)
    labels = np.full((*shape, max_boxes), -1, np.int32)
    labels[..., :3] = rng.integers(0, NUM_CLASSES, (*shape, 3))
    return {
        "image": rng.normal(size=(*shape, height, width, 3)).astype(np.float32),
        "boxes": boxes,
        "labels": labels,
        "is_crowd": np.zeros((*shape, max_boxes), bool),
    }


def train_step(config: ml_collections.ConfigDict) -> tuple[detectors.Detector, Callable, Any]:
    """`(detector, pmapped train step, replicated initial state)` of `config`, the step as the
    trainer pmaps it (state donated), not compiled yet."""
    return train_step_bench.pmapped_step(config, NUM_CLASSES, donate=True)


def memory(compiled: Any) -> dict[str, int]:
    """XLA's memory analysis of `compiled`, in bytes a device."""
    stats = compiled.memory_analysis()
    sizes = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
        "temporaries": stats.temp_size_in_bytes,
    }
    # Everything live at once at worst: the donated state's buffers serve as outputs.
    sizes["sum"] = sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]
    sizes["xla_peak"] = getattr(stats, "peak_memory_in_bytes", 0)
    return sizes


def flops(analysed: Any) -> float:
    """`cost_analysis()["flops"]` of a `Lowered` or `Compiled` (a dict, or a list of one)."""
    cost = analysed.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost["flops"])


def forward_flops(detector: detectors.Detector, state: Any, image_size: Sequence[int]) -> float:
    """FLOPs of the inference forward pass of one image, from its lowered HLO (`detector`,
    built for `image_size`, with the variables of the replicated `state`)."""
    variables = {"params": state.params, **state.model_state}
    variables = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), variables)
    images = jax.ShapeDtypeStruct((1, *image_size, 3), np.float32)

    def forward(variables, images):
        outputs, _ = detector.apply(variables, {"image": images}, train=False)
        return outputs

    return flops(jax.jit(forward).lower(variables, images))


def timed_steps(compiled: Callable, state: Any, batch: dict, steps: int
                ) -> tuple[Any, list[float], list[float], dict]:
    """`steps` steps of `compiled`: `(state, wall seconds, CPU seconds, last metrics)`."""
    wall, cpu = [], []
    metrics = None
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return state, wall, cpu, metrics


def cache_entries(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def scale_row(model: str, dtype: str, args: argparse.Namespace, cache_dir: str) -> dict:
    num_devices = jax.local_device_count()
    config = coco_config(model, dtype, args.image_size, args.batch * num_devices, args.backbone)
    options = compilation.compiler_options(config)
    detector, step, state = train_step(config)
    batch = random_batch(num_devices, args.batch, args.image_size, config.dataset.max_boxes)
    row: dict[str, Any] = {"model": model, "dtype": dtype, "options": options}

    start = time.perf_counter()
    lowered = step.lower(state, batch)
    row["lower_s"] = time.perf_counter() - start
    entries = cache_entries(cache_dir)
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
    row["cold_s"] = time.perf_counter() - start
    jax.clear_caches()
    start = time.perf_counter()
    relowered = step.lower(state, batch)
    row["relower_s"] = time.perf_counter() - start
    written = cache_entries(cache_dir)
    start = time.perf_counter()
    relowered.compile(compiler_options=options)
    row["warm_s"] = time.perf_counter() - start
    row["cache_hit"] = written > entries and cache_entries(cache_dir) == written

    row["memory"] = memory(compiled)
    row["step_flops"] = flops(compiled)
    row["forward_flops"] = forward_flops(detector, state, args.image_size)
    if model == "retinanet" and tuple(args.image_size) != (640, 640):
        config_640 = coco_config(model, dtype, (640, 640), 1, args.backbone)
        detector_640 = detectors.build(
            config_640.model, num_classes=NUM_CLASSES, image_size=(640, 640),
            axis_name=train.AXIS_NAME,
        )
        row["forward_flops_640"] = forward_flops(detector_640, state, (640, 640))
    if args.steps:
        state, _, _, metrics = timed_steps(compiled, state, batch, 1)
        row["first_loss"] = float(metrics["loss"][0])
        state, wall, cpu, _ = timed_steps(compiled, state, batch, args.steps)
        row["step_s"] = statistics.median(wall)
        row["step_cpu_s"] = statistics.median(cpu)
    return row


def cpu_peak() -> tuple[float, str]:
    """Peak float32 FLOP/s of this machine's cores and how it was computed (x86 with AVX2 and FMA:
    two 256-bit FMA units a core, as on AMD Zen 2-4 and Intel since Haswell; AVX-512: the same
    count of units twice as wide is not assumed)."""
    flags, mhz = set(), 0.0
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "cpu MHz" and not mhz:
                mhz = float(value)
    cores = os.cpu_count() or 1
    if not {"avx2", "fma"} <= flags:
        return 0.0, "unknown (no AVX2+FMA)"
    per_cycle = 2 * 8 * 2  # 2 FMA units x 8 float32 lanes x 2 FLOPs a multiply-add.
    peak = cores * per_cycle * mhz * 1e6
    return peak, (f"{cores} cores x {per_cycle} FLOP/cycle (2 x 256-bit FMA, float32) x "
                  f"{mhz:.0f} MHz (/proc/cpuinfo) = {peak / 1e9:.0f} GFLOP/s")


def print_scale(rows: list[dict], args: argparse.Namespace) -> None:
    peak, how = cpu_peak()
    height, width = args.image_size
    print(f"\nTrain step, {args.batch} images of {height}x{width} a device, options "
          f"{rows[0]['options']}; memory in GB (1e9 bytes) a device; CPU peak: {how}")
    print("| model | dtype | lower s | compile cold s | compile warm s (cache hit) "
          "| arguments GB | outputs GB (aliased) | temporaries GB | sum GB | XLA peak GB "
          "| peers' training memory GB | step GFLOPs / image | forward GFLOPs / image |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for row in rows:
        m = {k: v / 1e9 for k, v in row["memory"].items()}
        print(f"| {row['model']} | {row['dtype']} | {row['lower_s']:.1f} | {row['cold_s']:.1f} "
              f"| {row['warm_s']:.1f} ({'yes' if row['cache_hit'] else 'NO'}) "
              f"| {m['arguments']:.2f} | {m['outputs']:.2f} ({m['aliased']:.2f}) "
              f"| {m['temporaries']:.2f} | {m['sum']:.2f} | {m['xla_peak']:.2f} "
              f"| {PEER_MEMORY_GB[row['model']]} "
              f"| {row['step_flops'] / args.batch / 1e9:.0f} "
              f"| {row['forward_flops'] / 1e9:.0f} |")
    for row in rows:
        if "forward_flops_640" in row:
            print(f"\n{row['model']} {row['dtype']}, forward at 640x640: "
                  f"{row['forward_flops_640'] / 1e9:.1f} GFLOPs an image (XLA, 2 a multiply-add)"
                  f" = {row['forward_flops_640'] / 2e9:.1f} G multiply-adds; TF Model Garden: "
                  f"{PEER_FORWARD_GFLOPS_640:.0f} GFLOPs")
    if not args.steps:
        return
    print(f"\nCPU step, median of {args.steps} after a first untimed one")
    print("| model | dtype | first loss | s / step (wall) | CPU s / step | images/s "
          "| achieved GFLOP/s (wall) | of peak | GFLOP/s a CPU-second | of one core's peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    cores = os.cpu_count() or 1
    for row in rows:
        rate = row["step_flops"] / row["step_s"]
        per_cpu_second = row["step_flops"] / row["step_cpu_s"]
        print(f"| {row['model']} | {row['dtype']} | {row['first_loss']:.4f} "
              f"| {row['step_s']:.1f} | {row['step_cpu_s']:.1f} "
              f"| {args.batch / row['step_s']:.3f} | {rate / 1e9:.1f} "
              f"| {rate / peak:.1%} | {per_cpu_second / 1e9:.1f} "
              f"| {per_cpu_second / (peak / cores):.1%} |")


def alternate(candidates: dict[Any, list], rounds: int, steps: int
              ) -> tuple[dict[Any, float], dict[Any, float]]:
    """`candidates[key] = [compiled, state, batch, ...]` stepped in `rounds` alternating rounds
    of `steps` steps (the states advance in place): the median wall and CPU seconds a step of
    each key."""
    times = {key: [] for key in candidates}
    cpu_times = {key: [] for key in candidates}
    for _ in range(rounds):
        for key, candidate in candidates.items():
            compiled, state, batch = candidate[:3]
            candidate[1], wall, cpu, _ = timed_steps(compiled, state, batch, steps)
            times[key].extend(wall)
            cpu_times[key].extend(cpu)
    return ({key: statistics.median(t) for key, t in times.items()},
            {key: statistics.median(t) for key, t in cpu_times.items()})


def first_step(compiled: Callable, state: Any, batch: dict) -> tuple[Any, tuple[float, float]]:
    """One untimed step of `compiled` from a copy of `state`: `(new state, (loss, grad norm))`."""
    state = jax.tree.map(lambda x: x.copy(), state)
    state, _, _, metrics = timed_steps(compiled, state, batch, 1)
    return state, (float(metrics["loss"][0]), float(metrics["grad_norm"][0]))


def options_rows(args: argparse.Namespace) -> list[dict]:
    """Each model's float32 step with `BACKEND_DEFAULTS` options and with none, alternating."""
    num_devices = jax.local_device_count()
    candidates = {}  # (model, name) -> [compiled, state, batch, options]
    first = {}
    for model in args.models:
        config = coco_config(model, "float32", args.image_size, args.batch * num_devices,
                             args.backbone)
        batch = random_batch(num_devices, args.batch, args.image_size, config.dataset.max_boxes)
        _, step, state = train_step(config)
        lowered = step.lower(state, batch)
        for name, options in (("with", compilation.compiler_options(config)), ("without", {})):
            compiled = lowered.compile(compiler_options=options)
            copy, first[model, name] = first_step(compiled, state, batch)
            candidates[model, name] = [compiled, copy, batch, options]
    times, cpu_times = alternate(candidates, args.rounds, args.steps)
    rows = []
    for model in args.models:
        row = {"model": model, "options": candidates[model, "with"][3]}
        for name in ("with", "without"):
            row[f"{name}_s"] = times[model, name]
            row[f"{name}_cpu_s"] = cpu_times[model, name]
            row[f"first_{name}"] = first[model, name]
        rows.append(row)
    return rows


def detectors_rows(args: argparse.Namespace) -> list[dict]:
    """Faster R-CNN's step against RetinaNet's, each dtype, alternating in this one process."""
    num_devices = jax.local_device_count()
    candidates = {}  # (dtype, model) -> [compiled, state, batch]
    first = {}
    for dtype in args.dtypes:
        for model in ("retinanet", "faster_rcnn"):
            config = coco_config(model, dtype, args.image_size, args.batch * num_devices,
                                 args.backbone)
            batch = random_batch(num_devices, args.batch, args.image_size,
                                 config.dataset.max_boxes)
            _, step, state = train_step(config)
            compiled = step.lower(state, batch).compile(
                compiler_options=compilation.compiler_options(config))
            copy, first[dtype, model] = first_step(compiled, state, batch)
            candidates[dtype, model] = [compiled, copy, batch]
            print(f"{model} {dtype}: compiled, first step {first[dtype, model]}", flush=True)
    times, cpu_times = alternate(candidates, args.rounds, args.steps)
    return [{"dtype": dtype, "model": model, "s": times[dtype, model],
             "cpu_s": cpu_times[dtype, model], "first": first[dtype, model],
             "ratio": times[dtype, model] / times[dtype, "retinanet"],
             "cpu_ratio": cpu_times[dtype, model] / cpu_times[dtype, "retinanet"]}
            for dtype, model in candidates]


def print_detectors(rows: list[dict], args: argparse.Namespace) -> None:
    height, width = args.image_size
    print(f"\ntrain step, {args.batch} images of {height}x{width}, median of {args.rounds} "
          f"rounds x {args.steps} steps, alternating")
    print("| dtype | model | s / step (wall) | ratio | CPU s / step | ratio (CPU) "
          "| first step: loss, gradient norm |")
    print("|---|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['dtype']} | {row['model']} | {row['s']:.2f} | {row['ratio']:.2f} "
              f"| {row['cpu_s']:.2f} | {row['cpu_ratio']:.2f} "
              f"| {row['first'][0]:.6f}, {row['first'][1]:.4f} |")


def print_options(rows: list[dict], args: argparse.Namespace) -> None:
    height, width = args.image_size
    print(f"\nfloat32 train step, {args.batch} images of {height}x{width}, median of "
          f"{args.rounds} rounds x {args.steps} steps, alternating")
    print("| model | s / step with the CPU default (CPU s) | s / step without, YNNPACK (CPU s) "
          "| without / with | the same in CPU time "
          "| first step loss, gradient norm: with; without |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        fw, fo = row["first_with"], row["first_without"]
        print(f"| {row['model']} | {row['with_s']:.2f} ({row['with_cpu_s']:.2f}) "
              f"| {row['without_s']:.2f} ({row['without_cpu_s']:.2f}) "
              f"| {row['without_s'] / row['with_s']:.2f}x "
              f"| {row['without_cpu_s'] / row['with_cpu_s']:.2f}x | {fw[0]:.6f}, {fw[1]:.4f}; "
              f"{fo[0]:.6f}, {fo[1]:.4f} |")
    print(f"\nThe CPU default options: {rows[0]['options']}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("scale", "options", "detectors"), default="scale")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--image-size", type=int, nargs=2, default=(800, 1344),
                        metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--batch", type=int, default=2, help="images a device")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (0: none)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--mode options, detectors: rounds")
    parser.add_argument("--backbone", default="resnet50", help="e.g. resnet_tiny for a quick run")
    args = parser.parse_args(argv)

    print(f"jax {jax.__version__}, {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"{jax.local_device_count()} device(s)", flush=True)
    if args.mode == "options":
        print_options(options_rows(args), args)
        return
    if args.mode == "detectors":
        print_detectors(detectors_rows(args), args)
        return
    with tempfile.TemporaryDirectory() as cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        rows = []
        for model in args.models:
            for dtype in args.dtypes:
                rows.append(scale_row(model, dtype, args, cache_dir))
                print(f"{model} {dtype}: {rows[-1]}", flush=True)
    print_scale(rows, args)


if __name__ == "__main__":
    main()
