"""Reading a run's own files: its status, its training log and every evaluation it logged.

A run directory holds what the trainer writes (`metrics.jsonl`, checkpoints) and what the study
adds: `study_run.json` (its overrides and config, written before it trains), `study_time.json`
(the seconds it has trained so far), `study_result.json` (written atomically once it has
ended) and, for a run that lost its checkpoints and started over, `LOST_DIR/N/` (the log and time
of the segments lost).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from train.study import verdicts
from train.study.grid import Run

RESULT_FILE = "study_result.json"
SPEC_FILE = "study_run.json"
TIME_FILE = "study_time.json"
# Where the log and time of a run's segments whose checkpoints were lost are set aside
# (`runner.set_aside_lost_segments`): `LOST_DIR/1/`, `LOST_DIR/2/`, ... in the run's directory.
LOST_DIR = "lost_segments"
# The loss's count of positive anchors per image, as the trainer logs it, per detector.
POSITIVES_METRIC = {"retinanet": "train/num_positives", "faster_rcnn": "train/rpn_num_positives"}


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.to_dict() if hasattr(v, "to_dict")
                                 else list(v)))


def read_metrics(
    run_dir: str,
) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]]:
    """`({step: train scalars}, {step: evaluation metrics})` of a run's `metrics.jsonl`. A step
    logged twice (a run resumed from a checkpoint before it) keeps its later record."""
    path = os.path.join(run_dir, "metrics.jsonl")
    train_records: dict[int, dict[str, float]] = {}
    evaluations: dict[int, dict[str, float]] = {}
    if not os.path.exists(path):
        return train_records, evaluations
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            scalars = {k: (math.nan if v is None else v) for k, v in record.items() if k != "step"}
            step = int(record["step"])
            if any(k.startswith("eval/") for k in scalars):
                evaluations[step] = {k[len("eval/"):]: v for k, v in scalars.items()
                                     if k.startswith("eval/")}
            else:
                train_records[step] = scalars
    return dict(sorted(train_records.items())), dict(sorted(evaluations.items()))


def trained_seconds(run_dir: str) -> float:
    """The wall-clock seconds a run has trained so far (evaluations included), summed over its
    segments (`runner.segment_clock`): those that ended through the study (finished, diverged,
    SIGTERM, Ctrl-C) in full, one cut off without warning (the machine going down) up to its
    last minute; 0 for a run that has not trained."""
    path = os.path.join(run_dir, TIME_FILE)
    if not os.path.exists(path):
        return 0.0
    with open(path) as f:
        return float(json.load(f)["seconds"])


def lost_seconds(run_dir: str) -> float:
    """The seconds a run trained in segments whose checkpoints were lost before it resumed (set
    aside in `LOST_DIR`): compute spent that its result does not stand on; 0 when none."""
    lost_dir = os.path.join(run_dir, LOST_DIR)
    if not os.path.isdir(lost_dir):
        return 0.0
    return sum(trained_seconds(os.path.join(lost_dir, name)) for name in os.listdir(lost_dir))


def ended_seconds(run_dir: str) -> tuple[float, bool] | None:
    """`(seconds, complete)`: the seconds an ended run took (`trained_seconds` when it ended),
    and whether they cover all of its segments; None for a run that has not ended or recorded
    no time. A run ended before the study kept `TIME_FILE` recorded its last segment only: its
    seconds are a lower bound (complete False)."""
    path = os.path.join(run_dir, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        seconds = json.load(f).get("seconds")
    if seconds is None:
        return None
    return float(seconds), os.path.exists(os.path.join(run_dir, TIME_FILE))


def loss_noise(values: Sequence[float]) -> float:
    """How noisy a logged loss is: the standard deviation of the differences between consecutive
    values over the second half of the log, divided by their mean there (scale-free, so that
    RPN losses normalised differently compare)."""
    half = np.asarray(values[len(values) // 2:], np.float64)
    if len(half) < 3 or not np.mean(half) > 0:
        return math.nan
    return float(np.std(np.diff(half)) / np.mean(half))


def collect_run(run: Run, run_dir: str) -> dict[str, Any]:
    """What study.json keeps of one run: its status, overrides, final evaluation, AP at every
    evaluated step and a summary of its training log, all from the run's own files."""
    status = "pending"
    result = None
    if os.path.exists(os.path.join(run_dir, RESULT_FILE)):
        with open(os.path.join(run_dir, RESULT_FILE)) as f:
            result = json.load(f)
        status = result["status"]
    train_records, evaluations = read_metrics(run_dir)
    summary: dict[str, Any] = {}
    if train_records:
        steps = list(train_records)
        summary["last_step"] = steps[-1]
        summary["loss"] = train_records[steps[-1]].get("train/loss")
        positives = [r[POSITIVES_METRIC[run.detector]] for r in train_records.values()
                     if POSITIVES_METRIC[run.detector] in r]
        summary["positives_per_image"] = float(np.mean(positives)) if positives else None
        for name in ("rpn_box", "rpn_cls"):
            values = [r[f"train/loss_{name}"] for r in train_records.values()
                      if f"train/loss_{name}" in r]
            if values:
                summary[f"{name}_noise"] = loss_noise(values)
    final = evaluations[max(evaluations)] if evaluations and status == "finished" else None
    return {
        "setting": run.setting, "variant": run.variant, "seed": run.seed, "base_config": run.base,
        "overrides": jsonable(run.overrides), "status": status, "eval": final,
        "curve": {str(step): {k: m.get(k) for k in ("AP", "AP@0.05")}
                  for step, m in evaluations.items()},
        "train": summary, "error": result.get("error") if result else None,
    }


def variant_stats(records: Mapping[str, Mapping[str, Any]], setting: str, variant: str,
                  metric: str) -> verdicts.Stats:
    """`metric` over the finished seeds of `variant` in `setting` (a `*_noise` metric from the
    training log, the others from the final evaluation), and its diverged seeds."""
    values, diverged = [], 0
    for record in records.values():
        if record["setting"] != setting or record["variant"] != variant:
            continue
        if record["status"] == "diverged":
            diverged += 1
        elif record["status"] == "finished":
            source = record["train"] if metric.endswith("_noise") else record["eval"]
            value = source.get(metric)
            if value is not None and math.isfinite(value):
                values.append(float(value))
    return verdicts.Stats(tuple(values), diverged)
