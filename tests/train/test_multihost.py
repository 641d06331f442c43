"""The trainer as several real processes: `python -m train --distributed` twice on localhost, each
with 2 CPU devices, through JAX's own distributed runtime (gloo collectives), against the same run
as one process with 4 devices (this test process).

The config makes the two layouts see the same global batches: the training split is one global
batch (8 images), without flips, so every step trains on all of it, whichever device holds which
image; the normalizers and synchronized batch norm count over the global batch. What differs is
only the order of floating-point sums. A score threshold of 0 keeps detections after the few steps,
so that the recall of the evaluation shows whether every image of the split was scored once.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from tests.conftest import COMPILER_XLA_FLAGS
from tests.train.conftest import tiny_config
from train import train
from train import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS = 6
HEARTBEAT_TIMEOUT_S = 5
# Every wait on a process is bounded; this one covers start-up, compilation and 6 steps.
RUN_TIMEOUT_S = 420


def multihost_config(data_dir: str) -> ml_collections.ConfigDict:
    config = tiny_config(data_dir)
    config.dataset.train_split = "train[:8]"
    config.dataset.horizontal_flip = False
    config.batch_size = config.eval_batch_size = 8
    config.num_train_steps = NUM_STEPS
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 0
    config.model.postprocess.score_threshold = 0.0
    # SGD, not the shapes config's AdamW: the bias of a convolution followed by group norm has a
    # gradient of 0 up to rounding, which Adam's normalization turns into whole steps of the
    # learning rate in a direction set by the rounding (1e-3 apart between the layouts).
    config.optimizer.name = "sgd"
    config.model.postprocess.max_detections = 100
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(config_file: pathlib.Path, workdir: pathlib.Path, cache_dir: str) -> list:
    """Starts the 2 processes of one run; their output goes to `workdir`.p{i}.log."""
    port = _free_port()
    env = {
        **os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2",
        # tests/conftest.py's compiler flags, without its 4 devices a process.
        "XLA_FLAGS": COMPILER_XLA_FLAGS,
        "JAX_COMPILATION_CACHE_DIR": cache_dir, "PYTHONUNBUFFERED": "1",
    }
    processes = []
    for process_id in range(2):
        log = open(f"{workdir}.p{process_id}.log", "w")  # noqa: SIM115
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "train", "--config", str(config_file),
             "--workdir", str(workdir), "--distributed",
             "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
             "--process_id", str(process_id), f"--heartbeat_timeout={HEARTBEAT_TIMEOUT_S}",
             "--initialization_timeout=120"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))
        log.close()
    return processes


def _wait(processes: list, workdir: pathlib.Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a process of {workdir} still runs after {timeout} s:\n{_logs(workdir)}")
    return codes


def _logs(workdir: pathlib.Path) -> str:
    return "\n".join(
        f"--- process {i}:\n" + pathlib.Path(f"{workdir}.p{i}.log").read_text()[-3000:]
        for i in range(2)
    )


def _kill_all(processes: list) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _run_two_processes(config_file, workdir, cache_dir) -> None:
    processes = _start(config_file, workdir, cache_dir)
    try:
        codes = _wait(processes, workdir, RUN_TIMEOUT_S)
    finally:
        _kill_all(processes)
    assert codes == [0, 0], _logs(workdir)


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _assert_same_params(workdir, reference) -> None:
    """Equal to float rounding: the parameters move by about 1e-3 a step (learning rate 1e-3 at
    most), so summing the gradients in another order (2 x 2 devices through gloo, 4 in one
    process) and then synchronized batch norm leave differences of a few 1e-6 after 6 steps (2.7e-6
    measured), where a batch seen differently would move them by 1e-4 or more."""
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        _params(workdir), _params(reference),
    )


def _params(workdir) -> dict:
    variables, step = workdir_lib.restore_variables(str(workdir))
    assert step == NUM_STEPS
    return jax.tree.map(np.asarray, variables)


@pytest.fixture(scope="module")
def setup(tiny_data_dir, tmp_path_factory):
    """The config file of the runs, a compilation cache the runs share, and the one-process,
    four-device run of the same config."""
    root = tmp_path_factory.mktemp("multihost")
    config_file = root / "multihost_config.py"
    config_file.write_text(
        "from tests.train.test_multihost import multihost_config\n\n\n"
        f"def get_config():\n    return multihost_config({tiny_data_dir!r})\n"
    )
    reference = root / "one_process"
    assert jax.device_count() == 4
    metrics = train.train_and_evaluate(multihost_config(tiny_data_dir), str(reference))
    return config_file, str(root / "cache"), reference, metrics


def test_two_processes_train_and_evaluate_as_one_process_does(setup, tmp_path):
    config_file, cache_dir, reference, reference_metrics = setup
    workdir = tmp_path / "two_processes"
    _run_two_processes(config_file, workdir, cache_dir)

    # One set of logs, by process 0, with the one-process run's numbers.
    records, expected = _records(workdir), _records(reference)
    assert [r["step"] for r in records] == [r["step"] for r in expected]
    for got, want in zip(records, expected, strict=True):
        for key, value in want.items():
            if key == "train/images_per_second" or value is None:
                continue
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    assert sorted(p.name for p in workdir.glob("events.out.tfevents.*")).__len__() == 1
    assert len(list(workdir.glob("detections_step_*.png"))) == 1
    # Every image of the split scored once: the recall of the whole split, not of a half.
    final = records[-1]
    assert reference_metrics["AR100"] > 0
    for name in ("AP", "AP50", "AR1", "AR10", "AR100"):
        np.testing.assert_allclose(final[f"eval/{name}"], reference_metrics[name], atol=1e-6,
                                   err_msg=name)
    # Parameters after the same steps, from the checkpoints orbax wrote from both processes.
    _assert_same_params(workdir, reference)


def test_a_lost_process_stops_the_other_and_a_rerun_resumes(setup, tmp_path):
    config_file, cache_dir, reference, _ = setup
    workdir = tmp_path / "killed"
    processes = _start(config_file, workdir, cache_dir)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (workdir / "checkpoints" / "2").is_dir():
            assert all(p.poll() is None for p in processes), _logs(workdir)
            assert time.monotonic() < deadline, _logs(workdir)
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        code = _wait(processes[:1], workdir, 6 * HEARTBEAT_TIMEOUT_S + 60)[0]
        stopped_after = time.monotonic() - killed_at
    finally:
        _kill_all(processes)
    assert code != 0, _logs(workdir)
    assert stopped_after < 6 * HEARTBEAT_TIMEOUT_S + 60
    # The survivor says what happened: the trainer's message when its next collective failed
    # first, or JAX's, naming the lost process, when the heartbeats timed out first.
    survivor = pathlib.Path(f"{workdir}.p0.log").read_text()
    assert ("another process was probably lost" in survivor
            or re.search(r"stopped sending heartbeats\):\s*1\b", survivor)
            or "Task 1 heartbeat timeout" in survivor), _logs(workdir)
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < NUM_STEPS

    _run_two_processes(config_file, workdir, cache_dir)
    assert f"Resuming from the checkpoint at step {saved[-1]}" in _logs(workdir)
    _assert_same_params(workdir, reference)
