"""Step time of the trainer as 1 process x 4 devices against 2 processes x 2 devices (CPU).

The same `python -m train` command and config, once as one process with 4 CPU devices and once
as two processes on localhost (`--distributed`, JAX's own runtime, gloo collectives across the
processes) with 2 devices each: the difference is what the collectives cost across processes.
The config is the tiny RetinaNet of the trainer tests (64x64 images of the "tiny" shapes data,
two FPN levels of 16 channels, synchronized batch norm), 16 images a step, so that the collectives
are a visible share of the step. The time per step is the trainer's own
`train/images_per_second` (each logging window without its first step), the median of the windows
after the first; the layouts alternate, `--rounds` runs each, so that both see the same load.

  python benchmarks/multihost_bench.py            # the table in BENCHMARKS.md
  python benchmarks/multihost_bench.py --rounds 3 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 16

CONFIG = '''
import ml_collections
from configs import shapes_retinanet


def get_config():
    config = shapes_retinanet.get_config()
    config.dataset.builder_kwargs = ml_collections.ConfigDict({{"config": "tiny"}})
    config.dataset.data_dir = {data_dir!r}
    config.dataset.image_size = (64, 64)
    model = config.model
    model.norm = "sync_bn"
    model.min_level, model.max_level = 3, 4
    model.fpn_channels = model.head_channels = 16
    model.head_convs = 1
    config.batch_size = config.eval_batch_size = {batch}
    config.num_train_steps = {steps}
    config.log_every_steps = {log_every}
    config.checkpoint_every_steps = 0
    config.eval_every_steps = 0
    return config
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(layout: str, config_file: str, workdir: str) -> float:
    """Median seconds per step of one run of `layout` ("1x4" or "2x2")."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": ""}
    command = [sys.executable, "-m", "train", "--config", config_file, "--workdir", workdir]
    if layout == "1x4":
        processes = [subprocess.Popen(command, cwd=ROOT, env={**env, "JAX_NUM_CPU_DEVICES": "4"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    else:
        port = _free_port()
        processes = [
            subprocess.Popen(
                [*command, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}"],
                cwd=ROOT, env={**env, "JAX_NUM_CPU_DEVICES": "2"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for i in range(2)
        ]
    try:
        codes = [p.wait(timeout=900) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    if codes != [0] * len(processes):
        raise RuntimeError(f"{layout} run failed with {codes} in {workdir}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [r["train/images_per_second"] for r in map(json.loads, f)
                 if r.get("train/images_per_second")]
    return statistics.median(BATCH / rate for rate in rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config_file = os.path.join(tmp, "bench_config.py")
        with open(config_file, "w") as f:
            f.write(CONFIG.format(data_dir=os.path.join(tmp, "tfds"), batch=BATCH,
                                  steps=args.steps, log_every=args.steps // 6))
        times: dict[str, list[float]] = {"1x4": [], "2x2": []}
        for round_ in range(args.rounds):
            for layout in times:
                workdir = os.path.join(tmp, f"{layout}_{round_}")
                times[layout].append(_run(layout, config_file, workdir))
                print(f"round {round_}: {layout} {times[layout][-1] * 1e3:.0f} ms/step",
                      flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{BATCH} images of 64x64 a step, {args.steps} steps a run, {args.rounds} runs each")
    print("| layout | ms / step (median of runs) | ratio to 1 x 4 |\n|---|---:|---:|")
    base = statistics.median(times["1x4"])
    for layout, values in times.items():
        value = statistics.median(values)
        name = "1 process x 4 devices" if layout == "1x4" else "2 processes x 2 devices"
        print(f"| {name} | {value * 1e3:.0f} ({', '.join(f'{v * 1e3:.0f}' for v in values)}) "
              f"| {value / base:.2f} |")


if __name__ == "__main__":
    main()
