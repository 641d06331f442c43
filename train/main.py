"""Command line of the trainer: flags only, the work is in `train.train`.

  python -m train --config configs/shapes_retinanet.py --workdir runs/shapes_retinanet

Any config field can be overridden, e.g. `--config.num_train_steps=500 --config.batch_size=8`.
Rerunning the same command with the same `--workdir` resumes from its latest checkpoint. SIGTERM
or Ctrl-C saves a checkpoint of the current step, then exits with status 128 + the signal number.
Library logs (orbax, TFDS) are shown from warnings up, and preparing a data set shows one progress
bar; `--verbose` (or `--verbosity=0`) shows the libraries' info lines and TFDS's own output.

Several hosts: start the same command on every host with `--distributed`, which calls
`jax.distributed.initialize()` (coordinator, process count and id come from the cluster environment
on Cloud TPU and SLURM, or from `--coordinator_address`, `--num_processes` and `--process_id`).
Each host reads its own share of the data; gradients are averaged over all devices of all hosts.
"""

from __future__ import annotations

import os
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from train import cli, distributed, train

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and detection images.")
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file; override fields with --config.<field>=<value>.",
    lock_config=True,
)
flags.DEFINE_bool("distributed", False, "Join a multi-host run: jax.distributed.initialize().")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, if not auto-detected.")
flags.DEFINE_integer("num_processes", None, "Processes in the run, if not auto-detected.")
flags.DEFINE_integer("process_id", None, "This process's index, if not auto-detected.")
flags.DEFINE_integer(
    "initialization_timeout", 300,
    "Seconds to wait for every process to join the run (jax.distributed.initialize).",
)
flags.DEFINE_integer(
    "heartbeat_timeout", 100,
    "Seconds without a heartbeat after which a process counts as lost and the others stop.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_libraries()  # The progress bar is the trainer's output: orbax's logs would bury it.
    if FLAGS.distributed:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            initialization_timeout=FLAGS.initialization_timeout,
            heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
        )
        # Every process says it: any of them may be the one left when another is lost.
        print(
            f"Process {jax.process_index()} of {jax.process_count()}: if a process is lost, the "
            f"others stop at their next collective, or after --heartbeat_timeout="
            f"{FLAGS.heartbeat_timeout} s without its heartbeats (JAX then names it: \"tasks are "
            "unhealthy (stopped sending heartbeats): N\"); rerunning the same command on every "
            "host resumes from the last checkpoint.",
            file=sys.stderr,
        )
    logging.info("Config:\n%s", FLAGS.config)
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except train.TrainingInterruptedError as stop:
        _exit(str(stop), 128 + stop.signum)
    except (cli.ConfigError, train.TrainingDivergedError) as error:
        # The user's mistakes and a diverged run are for the user, not stack traces; anything
        # else is a bug and keeps its traceback.
        _exit(f"error: {error}", 1)
    except Exception as error:
        if jax.process_count() == 1:
            raise
        lost = distributed.lost_peer(error)
        if lost is None:  # A bug: the traceback, without the hang.
            message = traceback.format_exc()
        else:
            message = (
                f"error: process {jax.process_index()} of {jax.process_count()} stopped: a "
                f"collective over the processes failed ({lost}); another process was probably "
                "lost, see its log. Rerunning the same command on every host resumes from the last "
                f"checkpoint in {os.path.join(FLAGS.workdir, 'checkpoints')}."
            )
        _exit(message, 1)


def _exit(message: str, status: int) -> None:
    """Prints `message` and exits with `status`. In a multi-process run the process leaves at
    once: the graceful shutdown waits for every process, and those still running wait in a
    collective, so both would hang; without this process's heartbeats they stop within
    --heartbeat_timeout instead."""
    print(message, file=sys.stderr)
    if jax.process_count() > 1:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(status)
    sys.exit(status)


def run() -> None:
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
