"""Command-line mistakes in every `train` entry point: one line naming what was wrong and what was
expected, exit status 2, no traceback."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from configs import shapes_retinanet
from train import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dotted, expected", [
    ("batch_size", None),
    ("model.loss.gamma", None),
    ("batch_sise", "the config has no field 'batch_sise'; did you mean batch_size"),
    ("model.los.gamma", "model has no field 'los'; did you mean loss?"),
    ("model.loss.gamma.x", "model.loss.gamma is a float, it has no field 'x'"),
    ("model.zzz", "model has no field 'zzz'; valid fields of model: "),
])
def test_unknown_fields_are_named_with_the_closest_valid_ones(dotted, expected):
    message = cli.unknown_field(shapes_retinanet.get_config(), dotted)
    if expected is None:
        assert message is None
    else:
        assert message.startswith(expected)
    if dotted == "model.zzz":
        assert "anchor_scales" in message and "loss" in message


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def _the_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == cli.USAGE_ERROR, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("args, expected", [
    (("train", "--config", "configs/shapes_retinanet.py", "--workdir", "{tmp}",
      "--config.batch_sise=8"),
     "error: --config.batch_sise: the config has no field 'batch_sise'; did you mean "
     "batch_size or eval_batch_size?"),
    (("train", "--config", "configs/shapes_retinanet.py", "--workdir", "{tmp}",
      "--config.batch_size=abc"),
     "error: flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc'"),
    (("train", "--config", "configs/no_such.py", "--workdir", "{tmp}", "--config.seed=1"),
     "error: --config configs/no_such.py: no such file; expected a configs/*.py file"),
    (("train", "--config", "configs/no_such.py", "--workdir", "{tmp}"),
     "error: --config configs/no_such.py: no such file; expected a configs/*.py file"),
    (("train.predict", "--workdir", "{tmp}"),
     "error: flag --images=None: Flag --images must have a value other than None.; "
     "flag --output=None: Flag --output must have a value other than None."),
    (("train.export", "--workdir", "{tmp}"),
     "error: flag --output=None: Flag --output must have a value other than None."),
    (("train.prepare_data", "--dataset", "cityscapes"),
     "error: flag --dataset=cityscapes: value should be one of <coco|voc|coco_folder>"),
    (("train.study", "--study", "table1", "--workdir", "{tmp}", "--seeds", "two"),
     "error: flag --seeds=two: invalid literal for int() with base 10: 'two'"),
])
def test_every_entry_point_reports_a_bad_flag_in_one_line(args, expected, tmp_path):
    result = _run(*(arg.format(tmp=tmp_path / "run") for arg in args))
    assert _the_error(result) == expected
    assert not (tmp_path / "run").exists()  # Nothing was started.


@pytest.mark.parametrize("flag, expected", [
    ("--compilation_cache={tmp}/cache", "{tmp}/cache"),
    ("--compilation_cache=", "None"),
    (None, "{tmp}/from_env"),
])
def test_every_entry_point_turns_the_persistent_compilation_cache_on_unless_told_not_to(
    tmp_path, flag, expected
):
    argv = ["x"] + ([flag.format(tmp=tmp_path)] if flag else [])
    result = subprocess.run(
        [sys.executable, "-c", "import sys, jax; from train import cli; "
         f"cli.parse_flags({argv!r}); print(jax.config.jax_compilation_cache_dir)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu",
             "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "from_env")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == expected.format(tmp=tmp_path)
