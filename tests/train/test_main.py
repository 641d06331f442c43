"""`python -m train`: config overrides from the command line and errors for the user."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from focaljax.errors import ConfigError, MissingFileError
from train import cli
from train import main as main_lib

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
        env={**os.environ, "JAX_PLATFORMS": "cpu"},  # With tests/conftest.py's XLA_FLAGS.
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(message)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # Nothing was started.


@pytest.mark.parametrize("error", [ConfigError("config.x is 1, expected 2"),
                                   MissingFileError("/data/train does not exist")])
def test_a_users_mistake_inside_training_ends_in_one_line(error, monkeypatch, capsys):
    _train_raising(error, monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        main_lib.main(["train"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: {error}\n"


def test_a_bugs_value_error_inside_training_keeps_its_traceback(monkeypatch):
    # Only focaljax.errors' types are the user's; any other ValueError is a bug.
    _train_raising(ValueError("operands could not be broadcast together"), monkeypatch)
    with pytest.raises(ValueError, match="operands could not be broadcast"):
        main_lib.main(["train"])


def _train_raising(error, monkeypatch):
    """`python -m train`'s main with parsed flags, whose training raises `error`."""
    flags = type("Flags", (), {"distributed": False, "workdir": "/nonexistent/run",
                               "config": ml_collections.ConfigDict({"seed": 0})})
    monkeypatch.setattr(main_lib, "FLAGS", flags)
    monkeypatch.setattr(cli, "quiet_libraries", lambda: None)

    def train_and_evaluate(config, workdir):
        raise error

    monkeypatch.setattr(main_lib.train, "train_and_evaluate", train_and_evaluate)
