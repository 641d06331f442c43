"""`benchmarks/input_pipeline_bench.py --quick` writes, prepares and reads its COCO-format folder
through the training pipeline and the floor, and prints their table (issue #25). Nothing here is
timed."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_pipeline_benchmark_prints_the_pipeline_the_floor_and_the_stages_between():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "benchmarks/input_pipeline_bench.py", "--quick", "--profile"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in result.stdout.splitlines() if line.startswith("|")][2:]
    assert [row[0] for row in rows] == ["pipeline", "floor", "records", "+ normalize"]
    for row in rows:
        assert all(float(cell) > 0 for cell in row[1:]), row
    assert rows[1][4] == rows[1][5] == "1.00"  # The floor against itself.
    assert "8 JPEGs -> 64x64, batches of 2" in result.stdout
