"""Running a study: each run of the grid trained (or resumed, or skipped when finished) in its own
sub-workdir, and the outputs written after every run from the runs' own files."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from focaljax.inference.workdir import latest_checkpoint_step
from train import cli
from train import train as trainer
from train.study import data_report
from train.study import figure4 as figure4_lib
from train.study import grid as grid_lib
from train.study import report as report_lib
from train.study import runs as runs_lib
from train.study import studies as studies_lib
from train.study.grid import Request, Run, StudyError


def resolve_request(study: str, preset: str, base_config: str | None, *, setting: str = "",
                    full_grid: bool = False, seeds: int | None = None,
                    runs: Sequence[str] = ()) -> Request:
    """The command line's flags as a `Request`; `StudyError` with the valid values for an
    unknown study or preset, and for a base config that is missing, broken or of another
    detector."""
    names = [s.strip() for s in study.split(",") if s.strip()]
    unknown = [s for s in names if s not in studies_lib.STUDIES]
    if unknown or not names:
        raise StudyError(f"unknown study {','.join(unknown) or repr(study)}; valid studies: "
                         f"{', '.join(studies_lib.STUDIES)} (several: comma-separated)")
    if preset not in grid_lib.PRESETS:
        raise StudyError(f"unknown preset {preset!r}; valid presets: "
                         f"{', '.join(grid_lib.PRESETS)}")
    bases = {}
    for name in names:
        path = base_config or studies_lib.STUDIES[name].default_base_config
        try:
            config = cli.load_config(path, flag="--base_config")
        except cli.ConfigError as error:
            raise StudyError(str(error)) from None
        detector = studies_lib.STUDIES[name].detector
        if config.get("model", {}).get("name") != detector:
            raise StudyError(
                f"--base_config {path} trains {config.get('model', {}).get('name')!r}, but study "
                f"{name} needs a {detector} config (default "
                f"{studies_lib.STUDIES[name].default_base_config}); run the studies separately"
            )
        bases[name] = (path, config)
    return Request(tuple(names), bases, grid_lib.PRESETS[preset], setting, full_grid, seeds,
                   tuple(runs))


def write_json(path: str, value: Any) -> None:
    """Writes `value` to `path` atomically: a reader sees the old file or the whole new one."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(temporary, path)


def _write_text(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def _config_json(config: ml_collections.ConfigDict) -> Any:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def config_differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """The dotted fields whose value in `recorded` (a run's stored config) the `current` config
    does not reproduce: changed or gone. Fields that only `current` has are not differences: a
    field added to the schema defaults to the behaviour from before it (DEVELOPERS.md)."""
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return [] if recorded == current else [prefix or "<config>"]
    differences = []
    for key, value in recorded.items():
        field = f"{prefix}.{key}" if prefix else key
        if key not in current:
            differences.append(f"{field} (no longer in the config)")
        else:
            differences += config_differences(value, current[key], field)
    return differences


def check_spec(run: Run, run_dir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a run directory made from another config (another preset, base config or
    setting, or a field whose default has changed since), which resuming would silently mix."""
    path = os.path.join(run_dir, runs_lib.SPEC_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        spec = json.load(f)
    differences = config_differences(spec["config"], _config_json(config))
    if differences:
        shown = ", ".join(differences[:4]) + (", ..." if len(differences) > 4 else "")
        raise StudyError(
            f"{run_dir} was made from another config than run {run.key} of this study ({shown} "
            "differ; another --preset, --base_config or setting?); use another --workdir, or "
            "delete that run"
        )


# How often a training segment adds its time so far to the run's `runs.TIME_FILE`: a segment cut
# off without warning (the machine going down) loses at most this much of its time.
CLOCK_SECONDS = 60.0


@contextlib.contextmanager
def segment_clock(run_dir: str, every: float = CLOCK_SECONDS) -> Iterator[Callable[[], float]]:
    """Times one training segment of the run in `run_dir`: its `runs.TIME_FILE` holds the earlier
    segments' seconds plus this one's so far, rewritten every `every` seconds while it runs and
    once more when it ends (also by an exception). Yields a function giving that total, which
    stops growing when the segment ends."""
    path = os.path.join(run_dir, runs_lib.TIME_FILE)
    earlier = runs_lib.trained_seconds(run_dir)
    start = time.perf_counter()
    end: list[float] = []

    def total() -> float:
        return earlier + (end[0] if end else time.perf_counter()) - start

    ended = threading.Event()

    def tick() -> None:
        while not ended.wait(every):
            write_json(path, {"seconds": total()})

    ticker = threading.Thread(target=tick, name="study-clock", daemon=True)
    ticker.start()
    try:
        yield total
    finally:
        ended.set()
        ticker.join()
        end.append(time.perf_counter())
        write_json(path, {"seconds": total()})


def set_aside_lost_segments(run_dir: str) -> dict[str, Any] | None:
    """Before a run trains: when it has trained before (its `metrics.jsonl` or time is on disk) but
    none of its checkpoints is left (the run's files came to a new machine without the ignored
    checkpoints, or they were deleted), it starts over from step 0, so its earlier log and time
    are moved to the next `runs.LOST_DIR/N/` and the run's log and time become those of the run that
    produces its result. Returns what was set aside (`dir`, `last_step` logged, `seconds`), or
    None when there was nothing to set aside."""
    traces = [name for name in ("metrics.jsonl", runs_lib.TIME_FILE)
              if os.path.exists(os.path.join(run_dir, name))]
    if not traces or latest_checkpoint_step(run_dir) is not None:
        return None
    train_records, evaluations = runs_lib.read_metrics(run_dir)
    seconds = runs_lib.trained_seconds(run_dir)
    number = 1
    while os.path.exists(os.path.join(run_dir, runs_lib.LOST_DIR, str(number))):
        number += 1
    destination = os.path.join(run_dir, runs_lib.LOST_DIR, str(number))
    os.makedirs(destination)
    for name in traces:
        os.replace(os.path.join(run_dir, name), os.path.join(destination, name))
    return {"dir": destination, "last_step": max([*train_records, *evaluations], default=0),
            "seconds": seconds}


def train_run(run: Run, run_dir: str, config: ml_collections.ConfigDict) -> float:
    """Trains (or resumes) one run and writes its result file; returns the seconds it took in
    all, its earlier segments included.

    Raises:
      trainer.TrainingInterruptedError: on SIGTERM or Ctrl-C, after the trainer saved the step.
    """
    os.makedirs(run_dir, exist_ok=True)
    if not os.path.exists(os.path.join(run_dir, runs_lib.SPEC_FILE)):
        write_json(os.path.join(run_dir, runs_lib.SPEC_FILE), {
            "run": run.key, "overrides": runs_lib.jsonable(run.overrides),
            "config": _config_json(config),
        })
    result: dict[str, Any] = {"run": run.key}
    # Also when interrupted: the resumed run adds its next segment to this one.
    with segment_clock(run_dir) as seconds:
        try:
            trainer.train_and_evaluate(config, run_dir)
            result["status"] = "finished"
        except trainer.TrainingDivergedError as error:
            result.update(status="diverged", error=str(error))
        except cli.ConfigError as error:
            raise StudyError(f"run {run.key}: {error}") from None
    write_json(os.path.join(run_dir, runs_lib.RESULT_FILE), {**result, "seconds": seconds()})
    return seconds()


def _format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def seconds_left(pending: Sequence[float], measured: Sequence[tuple[float, float]],
                 seconds_per_run: float) -> tuple[float, float]:
    """The time the pending runs will take, and the time a run of the preset's length takes.

    Args:
      pending: the training each pending run has left, in runs of the preset's length (2 for a
        schedule check not started, 0.5 for a run of the preset's length resumed halfway).
      measured: (seconds, length) of each run ended so far; their mean time a unit length
        replaces the preset's `seconds_per_run` once there is one.
    """
    per_run = (float(np.mean([seconds / length for seconds, length in measured]))
               if measured else seconds_per_run)
    return per_run * float(sum(pending)), per_run


def plan(request: Request, workdir: str) -> tuple[list[Run], dict[str, dict[str, Any]]]:
    """The grid of the request and the measured figures of each of its settings (measured once
    and kept in `workdir`: the OHEM batches are sized by their positives an image)."""
    settings = {name: data_report.setting_figures(workdir, name, config)
                for name, (_, config) in grid_lib.settings_of(request).items()}
    grid = grid_lib.expand_grid(
        request, {name: figures["positives_per_image"] for name, figures in settings.items()})
    return grid, settings


def run_study(request: Request, workdir: str, *, echo: Callable[[str], None] = print,
              report_only: bool = False) -> dict[str, Any]:
    """Trains every run of the request (those matching `request.runs`, when given) not finished
    yet in `workdir`, writing the outputs after each one (once, when none trains); returns the
    content of study.json. The outputs cover the whole grid, whichever runs this call trains:
    every run finished in `workdir` enters the tables, and the others are listed as pending.
    `report_only` trains nothing and writes the outputs from the runs as they are.

    Raises:
      StudyError: for a workdir made from other configs.
      trainer.TrainingInterruptedError: on SIGTERM or Ctrl-C, once the running run's step is
        saved and the outputs written; the same call resumes.
    """
    grid, settings = plan(request, workdir)
    to_train = [] if report_only else grid_lib.select_runs(grid, request.runs)
    base_configs = {label: config for label, config in request.bases.values()}
    runs_dir = os.path.join(workdir, "runs")
    configs = {run.key: grid_lib.run_config(run, base_configs[run.base]) for run in grid}
    for run in grid:  # Before anything trains: a mixed-up workdir fails at once.
        check_spec(run, os.path.join(runs_dir, run.key), configs[run.key])
    preset = request.preset
    header = {"studies": list(request.studies), "preset": preset.name,
              "seeds": request.num_seeds, "full_grid": request.full_grid,
              "base_configs": sorted(base_configs)}

    def length(run: Run) -> float:  # in runs of the preset's length
        return (configs[run.key].num_train_steps
                / preset.overrides[run.detector]["num_train_steps"])

    def length_left(run: Run) -> float:  # what its latest checkpoint leaves to train
        step = latest_checkpoint_step(os.path.join(runs_dir, run.key)) or 0
        return length(run) * (1.0 - step / configs[run.key].num_train_steps)

    def finished(run: Run) -> bool:
        return os.path.exists(os.path.join(runs_dir, run.key, runs_lib.RESULT_FILE))

    def write_outputs() -> dict[str, Any]:
        return write_study(workdir, grid, request.studies, header, settings, configs,
                           full_grid=request.full_grid)

    content = None  # The outputs as the last run trained in this call left them.
    try:
        for index, run in enumerate(to_train, start=1):
            if finished(run):
                echo(f"[study] run {index}/{len(to_train)} {run.key}: finished before, skipped")
                continue
            pending = [r for r in to_train if not finished(r)]
            measured = [(ended[0], length(r)) for r in grid if (ended := runs_lib.ended_seconds(
                os.path.join(runs_dir, r.key))) is not None]
            left, per_run = seconds_left([length_left(r) for r in pending], measured,
                                         preset.seconds_per_run)
            estimate = "measured" if measured else "preset's estimate"
            echo(f"[study] run {index}/{len(to_train)} {run.key}: {len(to_train) - len(pending)} "
                 f"finished, about {_format_minutes(left)} left ({estimate} of "
                 f"{_format_minutes(per_run)} a run of the preset's length)")
            lost = set_aside_lost_segments(os.path.join(runs_dir, run.key))
            if lost is not None:
                echo(f"[study] {run.key} has no checkpoint left: it starts over from step 0; "
                     f"its earlier log (to step {lost['last_step']:,}) and time "
                     f"({_format_minutes(lost['seconds'])}) moved to {lost['dir']}")
            train_run(run, os.path.join(runs_dir, run.key), configs[run.key])
            content = write_outputs()
    except trainer.TrainingInterruptedError:
        write_outputs()
        raise
    if content is None:  # Nothing trained: the outputs from the runs as they are.
        content = write_outputs()
    with open(os.path.join(workdir, "study.md")) as f:
        echo(f.read())
    return content


def write_study(
    workdir: str,
    grid: Sequence[Run],
    studies: Sequence[str],
    header: Mapping[str, Any],
    settings: Mapping[str, Mapping[str, Any]],
    configs: Mapping[str, ml_collections.ConfigDict],
    *,
    full_grid: bool,
) -> dict[str, Any]:
    """study.json (no timings, so that a resumed study writes the one an uninterrupted study
    writes), study.md (with the time each ended run took) and the plots, from the runs' own
    files."""
    runs_dir = os.path.join(workdir, "runs")
    records = {run.key: runs_lib.collect_run(run, os.path.join(runs_dir, run.key))
               for run in grid}
    figure4 = None
    if "figure4" in studies:
        first_seed = min(r.seed for r in grid)
        run = next((r for r in grid if r.variant == studies_lib.FIGURE4_VARIANT
                    and r.seed == first_seed), None)
        if run is not None and records[run.key]["status"] == "finished":
            figure4 = figure4_lib.figure4_result(configs[run.key], run.key,
                                                 os.path.join(runs_dir, run.key))
    report = report_lib.build_report(grid, records, studies, full_grid=full_grid,
                                     settings=settings, figure4=figure4)
    content = {**header, "runs": records, **report, "figure4": figure4}
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "study.json"), runs_lib.jsonable(content))
    _write_text(os.path.join(workdir, "study.md"),
                report_lib.render_markdown(report, header, figure4, {
                    (f"{run.setting}/{run.variant}", run.seed): ended for run in grid
                    if (ended := runs_lib.ended_seconds(os.path.join(runs_dir, run.key)))
                    is not None}, {
                    run.key: lost for run in grid
                    if (lost := runs_lib.lost_seconds(os.path.join(runs_dir, run.key)))}))
    report_lib.plot_table1(report, os.path.join(workdir, "table1.png"))
    report_lib.plot_ap_vs_step(report, os.path.join(workdir, "ap_vs_step.png"))
    if figure4 is not None:
        report_lib.plot_figure4(figure4, os.path.join(workdir, "figure4.png"))
    report_lib.plot_rpn_losses(grid, runs_dir, os.path.join(workdir, "rpn_losses.png"))
    return content
