"""`python -m train`: config overrides from the command line and errors for the user."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("overrides", "message"), [
    (("--config.batch_size=6", "--config.dataset.image_size=(64,64)"),
     "error: config.batch_size is 6, expected a positive multiple of the 4 local devices "
     "(each device gets batch_size / 4 images)"),
    # A loss hyper-parameter is refused before the data set is prepared or anything traced.
    (("--config.model.loss.gamma=-1",),
     "error: model.loss.gamma is -1.0, expected a number in [0, inf)"),
])
def test_command_line_overrides_reach_the_config_and_bad_values_exit_with_a_message(
    overrides, message, tmp_path
):
    result = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/shapes_retinanet.py",
         "--workdir", str(tmp_path / "run"), *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(message)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # Nothing was started.
