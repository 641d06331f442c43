"""Time to the first training step of `make train`, with JAX's persistent compilation cache cold,
warm, and off.

  python benchmarks/first_step_bench.py [--config configs/shapes_retinanet.py] [--repeats 2]

Each measurement is a fresh `python -m train` process (the entry point users run, with its
`--compilation_cache` flag) on the config, timed from its start until its metrics.jsonl holds the
first step's training record (`log_every_steps=1`); the process is then stopped. "cold" starts
with an empty cache folder, "warm" reruns into a new workdir with the folder the cold run filled,
"off" passes `--compilation_cache=`. The data set is prepared once before, so that no run
includes building it. Prints a Markdown table: the median over `--repeats` of each, and
warm / cold.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _first_step_seconds(config: str, workdir: str, cache: str, data_dir: str) -> float:
    """Seconds from the start of a `python -m train` process to its first logged step."""
    command = [sys.executable, "-m", "train", "--config", config, "--workdir", workdir,
               f"--compilation_cache={cache}", "--config.log_every_steps=1",
               f"--config.dataset.data_dir={data_dir}", "--config.anchor_coverage_images=0"]
    metrics = os.path.join(workdir, "metrics.jsonl")
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        while process.poll() is None:
            if os.path.exists(metrics):
                with open(metrics) as f:
                    if any("train/loss" in json.loads(line) for line in f if line.strip()):
                        return time.perf_counter() - start
            time.sleep(0.05)
        raise RuntimeError(f"{' '.join(command)} ended before its first step:\n"
                           f"{process.stderr.read()[-3000:]}")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # The trainer saves and stops.
            process.wait(timeout=300)


def _prepare(config: str, data_dir: str) -> None:
    subprocess.run([sys.executable, "-m", "train.prepare_data", "--config", config,
                    f"--config.dataset.data_dir={data_dir}"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shapes_retinanet.py")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"cold": [], "warm": [], "off": []}
    with tempfile.TemporaryDirectory() as root:
        data_dir = os.path.join(root, "data")
        _prepare(args.config, data_dir)
        for repeat in range(args.repeats):
            cache = os.path.join(root, f"cache{repeat}")
            for kind, folder in (("cold", cache), ("warm", cache), ("off", "")):
                workdir = os.path.join(root, f"{kind}{repeat}")
                times[kind].append(_first_step_seconds(args.config, workdir, folder, data_dir))
                print(f"# {kind} {repeat}: {times[kind][-1]:.1f} s", file=sys.stderr)
    median = {kind: statistics.median(values) for kind, values in times.items()}
    print(f"Time to the first step of `python -m train --config {args.config}` (median of "
          f"{args.repeats}, s):\n")
    print("| cache | seconds | all runs |")
    print("|---|---:|---|")
    for kind, values in times.items():
        print(f"| {kind} | {median[kind]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nwarm / cold: {median['warm'] / median['cold']:.2f}")


if __name__ == "__main__":
    main()
