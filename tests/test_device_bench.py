"""`benchmarks/device_bench.py` runs on a CPU at reduced sizes and prints its tables, so that it is
ready when an accelerator is lent (issue #25). Nothing here is timed."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

from tests.conftest import COMPILER_XLA_FLAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _table(output: str, heading: str) -> list[list[str]]:
    """The body rows of the Markdown table under `heading`, as lists of cells."""
    lines = output.split(heading, 1)[1].splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    rows = [line for line in lines[:end] if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_the_device_script_prints_every_table_on_a_cpu_at_reduced_sizes():
    # tests/conftest.py's compiler flags, without its 4 devices: the script runs on one.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": COMPILER_XLA_FLAGS,
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "benchmarks/device_bench.py", "--quick", "--models", "retinanet",
         "--dtypes", "float32", "--isolate", "no"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout

    (loss,) = _table(output, "## Sigmoid focal loss")
    assert loss[:2] == ["float32", "1,000"]
    assert float(loss[5]) > 0 and loss[6] == "unknown"  # GB/s; no datasheet peak for a CPU.

    (step,) = _table(output, "## R50-FPN train steps")
    assert step[:2] == ["retinanet", "float32"]
    assert float(step[4]) > 0  # images/s
    assert step[5].startswith("n/a")  # A CPU has no memory_stats.
    assert float(step[6]) > 0  # XLA's memory analysis, GB.
    assert math.isfinite(float(step[7]))  # The loss.

    nms = _table(output, "## NMS")
    assert [(row[0], row[1], row[2]) for row in nms] == [("1000", "100", "100"),
                                                         ("1000", "1000", "111")]
    pipeline = _table(output, "## Input pipeline")
    assert [row[0] for row in pipeline] == ["pipeline", "floor"]
    assert all(float(row[1]) > 0 and float(row[3]) > 0 for row in pipeline)  # images/s, /CPU-s
    assert pipeline[1][4] == "1.00"  # The floor against itself.
