"""The study runner (`train.study`): the grid it expands to, Figure 4's curves against float64
NumPy, tables built from the runs' own files, and a study interrupted inside and between runs
ending with the study.json of an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from tests.train.conftest import tiny_config
from train import checks, study
from train import train as trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_bases(names):
    """Each study's (label, default base config), as the command line resolves them."""
    bases = {}
    for name in names:
        path = study.STUDIES[name].default_base_config
        bases[name] = (path, study.load_config_file(os.path.join(ROOT, path)))
    return bases


TABLE1_FIRST_SEED = [
    "alpha_ce_a0.25", "alpha_ce_a0.5", "alpha_ce_a0.75", "alpha_ce_a0.9", "alpha_ce_a0.99",
    "focal_g0.5_a0.5", "focal_g1_a0.25", "focal_g2_a0.25", "focal_g5_a0.25",
    "ohem_n128", "ohem_n128_1to3", "ohem_n512", "ohem_n512_1to3",
    "flstar_g2_b1", "flstar_g4_b0", "ce_prior", "ce_bias0",
]


def test_table1_and_figure4_expand_to_the_documented_runs():
    grid = study.expand_grid(["table1", "figure4"], default_bases(["table1", "figure4"]),
                             preset=study.PRESETS["quick"], seeds=2)
    names = [run.name for run in grid]
    # Every variant once at seed 0 (figure4's model is table1's focal run), then the headline
    # variants' second seed.
    assert names == [f"{v}_s0" for v in TABLE1_FIRST_SEED] + [
        "alpha_ce_a0.75_s1", "focal_g2_a0.25_s1", "ohem_n128_s1"]
    assert {run.setting for run in grid} == {"paper_regime"}
    by_name = {run.name: run.overrides for run in grid}
    assert by_name["focal_g5_a0.25_s0"]["model.loss.cls"] == "focal"
    assert (by_name["focal_g5_a0.25_s0"]["model.loss.gamma"],
            by_name["focal_g5_a0.25_s0"]["model.loss.alpha"]) == (5.0, 0.25)
    assert by_name["alpha_ce_a0.99_s0"]["model.loss.alpha"] == 0.99
    assert by_name["ohem_n512_1to3_s0"]["model.loss.ohem_num_samples"] == 512
    assert by_name["ohem_n512_1to3_s0"]["model.loss.ohem_positive_fraction"] == 0.25
    assert by_name["ohem_n128_s0"]["model.loss.ohem_positive_fraction"] == 0.0
    assert by_name["ce_bias0_s0"]["model.prior_prob"] == 0.5
    assert by_name["ohem_n128_s1"]["seed"] == 1
    assert by_name["focal_g2_a0.25_s0"]["num_train_steps"] == 400


def test_the_full_grid_has_every_alpha_at_every_nonzero_gamma():
    grid = study.expand_grid(["table1"], default_bases(["table1"]),
                             preset=study.PRESETS["quick"], full_grid=True, seeds=1)
    focal = {run.variant for run in grid if run.variant.startswith("focal_")}
    assert focal == {f"focal_g{g}_a{a}" for g in ("0.5", "1", "2", "5")
                     for a in ("0.25", "0.5", "0.75", "0.9", "0.99")}
    assert len(grid) == 5 + 20 + 4 + 2 + 2


def _field(config: ml_collections.ConfigDict, dotted: str):
    for name in dotted.split("."):
        config = config[name]
    return config


@pytest.mark.parametrize("names", [["table1", "figure4"], ["rpn"]])
def test_every_override_sets_a_field_the_trainer_accepts(names):
    bases = default_bases(names)
    for preset in study.PRESETS.values():
        for run in study.expand_grid(names, bases, preset=preset, full_grid=True, seeds=2):
            config = study.run_config(run, bases[names[0]][1])
            for key, value in run.overrides.items():
                got = _field(config, key)
                if isinstance(got, ml_collections.ConfigDict):
                    got = got.to_dict()
                assert got == (list(value) if isinstance(value, tuple) else value) or (
                    tuple(got) == tuple(value)), key
            checks.check_config(config, 1)


def test_an_override_of_a_missing_field_is_refused():
    base = default_bases(["table1"])["table1"][1]
    with pytest.raises(study.StudyError, match="the base config has no field model.loss.gama"):
        study.apply_overrides(base, {"model.loss.gama": 2.0})
    with pytest.raises(study.StudyError, match="no field modle"):
        study.apply_overrides(base, {"modle.loss.gamma": 2.0})


def test_unknown_studies_presets_and_settings_are_refused_with_the_valid_ones():
    with pytest.raises(study.StudyError, match="unknown study tabel1; valid studies: table1, "
                                               "figure4, rpn"):
        study.resolve_request("tabel1", "quick", None)
    with pytest.raises(study.StudyError, match="unknown preset 'fast'; valid presets: quick, full"):
        study.resolve_request("table1", "fast", None)
    bases = default_bases(["table1"])
    with pytest.raises(study.StudyError, match="unknown setting 'paper'; valid settings: base, "
                                               "paper_regime"):
        study.expand_grid(["table1"], bases, preset=study.PRESETS["quick"], setting="paper")
    with pytest.raises(study.StudyError, match="needs a faster_rcnn config"):
        study.resolve_request("rpn", "quick", os.path.join(ROOT, "configs/shapes_retinanet.py"))


def test_the_command_line_reports_a_bad_preset_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train.study", "--study", "table1", "--preset", "fast",
         "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: unknown preset 'fast'; valid presets: quick, full"]
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------
# Figure 4 against an independent float64 computation.


def _numpy_curves(logits, labels, weights, gamma):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    target = labels[:, None] == np.arange(logits.shape[1])[None, :]
    p_t = np.where(target, p, 1.0 - p)
    anchor_loss = np.sum(-((1.0 - p_t) ** gamma) * np.log(p_t), axis=1)
    curves = {}
    for group, keep in (("positive", (labels >= 0) & (weights > 0)),
                        ("negative", (labels < 0) & (weights > 0))):
        values = np.sort(anchor_loss[keep])
        curves[group] = np.concatenate([[0.0], np.cumsum(values)]) / values.sum()
    return curves


def test_figure4_curves_match_a_float64_numpy_computation():
    rng = np.random.default_rng(0)
    num_anchors, num_classes = 3000, 3
    logits = rng.normal(-3.0, 2.0, (num_anchors, num_classes)).astype(np.float32)
    labels = np.where(rng.random(num_anchors) < 0.05, rng.integers(0, num_classes, num_anchors),
                      -1)
    weights = (rng.random(num_anchors) > 0.1).astype(np.float32)  # 10% ignored.
    curves = study.cumulative_loss_curves(logits, labels, weights, gammas=(0.0, 0.5, 1.0, 2.0))
    assert sorted(curves) == [0.0, 0.5, 1.0, 2.0]
    for gamma, groups in curves.items():
        expected = _numpy_curves(logits, labels, weights, gamma)
        for group in ("positive", "negative"):
            assert groups[group].shape == expected[group].shape
            np.testing.assert_allclose(groups[group], expected[group], rtol=2e-5, atol=1e-6,
                                       err_msg=f"gamma {gamma} {group}")
    # The hardest 10% of the negatives carry more of the loss as gamma grows (the paper's point).
    shares = [study.share_of_hardest(curves[g]["negative"], 0.1) for g in (0.0, 0.5, 1.0, 2.0)]
    assert shares == sorted(shares) and shares[-1] > shares[0] + 0.1
    numpy_share = 1.0 - _numpy_curves(logits, labels, weights, 2.0)["negative"][
        -1 - math.ceil(0.1 * int(np.sum((labels < 0) & (weights > 0))))]
    assert shares[-1] == pytest.approx(numpy_share, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Tables from the runs' own files.


def _write_run(runs_dir, key, ap_values, *, status="finished", positives=10.0):
    run_dir = os.path.join(runs_dir, key)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step in (1, 2):
            f.write(json.dumps({"step": step, "train/loss": 1.0 / step,
                                "train/num_positives": positives}) + "\n")
        if status == "finished":
            f.write(json.dumps({"step": 2, **{f"eval/{k}": v for k, v in ap_values.items()}})
                    + "\n")
    with open(os.path.join(run_dir, study.RESULT_FILE), "w") as f:
        json.dump({"run": key, "status": status}, f)


def test_tables_are_built_from_the_runs_metrics_files(tmp_path):
    bases = default_bases(["table1"])
    grid = study.expand_grid(["table1"], bases, preset=study.PRESETS["quick"], seeds=2)
    runs_dir = str(tmp_path / "runs")
    # Table 1a written so that ours orders the alphas as the paper does except 0.9 > 0.75.
    aps = {"alpha_ce_a0.25": 0.10, "alpha_ce_a0.5": 0.30, "alpha_ce_a0.75": 0.31,
           "alpha_ce_a0.9": 0.35, "alpha_ce_a0.99": 0.28}
    for run in grid:
        if run.variant == "ce_bias0":
            _write_run(runs_dir, run.key, {}, status="diverged")
            continue
        ap = aps.get(run.variant, 0.2) + 0.01 * run.seed
        _write_run(runs_dir, run.key, {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05})
    header = {"studies": ["table1"], "preset": "quick", "seeds": 2, "full_grid": False,
              "base_configs": ["configs/shapes_retinanet.py"]}
    base_configs = {label: config for label, config in bases.values()}
    configs = {run.key: study.run_config(run, base_configs[run.base]) for run in grid}
    content = study.write_study(str(tmp_path), grid, ["table1"], header, base_configs, configs,
                                {}, full_grid=False)

    table = content["tables"]["table1a"]
    rows = {row["variant"]: row for row in table["rows"]}
    # Two seeds of the headline alpha 0.75 (0.31 and 0.32), one of the others.
    assert rows["alpha_ce_a0.75"]["ours"]["AP"]["values"] == pytest.approx([0.31, 0.32])
    assert rows["alpha_ce_a0.75"]["ours"]["AP"]["cell"] == "0.315 (0.310–0.320, 2 seeds)"
    assert rows["alpha_ce_a0.9"]["ours"]["AP"]["cell"] == "0.350"
    assert rows["alpha_ce_a0.9"]["paper"] == 30.8
    assert table["claim"].startswith("**Paper's ordering** does not hold")
    assert content["seed_spread"] == pytest.approx(0.01)
    init = {row["variant"]: row for row in content["tables"]["init"]["rows"]}
    assert init["ce_bias0"]["ours"]["AP"]["cell"] == "diverged"
    assert "the zero-bias run diverged" in content["tables"]["init"]["claim"]
    (imbalance,) = content["imbalance"]
    assert imbalance["positives_per_image"] == pytest.approx(10.0)
    # The paper regime's 256 px images, levels P3..P5 of the shapes config, 3 scales x 3 ratios.
    assert imbalance["anchors_per_image"] == (32**2 + 16**2 + 8**2) * 9

    markdown = (tmp_path / "study.md").read_text()
    assert "| alpha 0.9 (`alpha_ce_a0.9`) | 0.350 | 0.550 | 0.300 | 30.8 |" in markdown
    assert (tmp_path / "table1.png").stat().st_size > 0
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["runs"]["paper_regime/alpha_ce_a0.9_s0"]["eval"]["AP"] == 0.35


# ----------------------------------------------------------------------------------------------
# Interrupted and resumed: the same study.json as an uninterrupted study.

TINY_PRESET = study.Preset(
    "tiny", {"retinanet": {"num_train_steps": 3, "checkpoint_every_steps": 3,
                           "eval_every_steps": 0}},
    seconds_per_run=10.0,
)
TINY_RUNS = ["alpha_ce_a0.75_s0", "focal_g2_a0.25_s0"]


def _tiny_study(workdir, data_dir, echo=lambda line: None):
    config = tiny_config(data_dir)
    bases = {"table1": ("tiny", config), "figure4": ("tiny", config)}
    return study.run_study(["table1", "figure4"], workdir, bases=bases, preset=TINY_PRESET,
                           setting="base", seeds=1, runs=TINY_RUNS, echo=echo)


def _sigterm_at_step(stop_step: int):
    """A SummaryWriter that sends this process SIGTERM, handled by the trainer, when it logs the
    training step `stop_step`."""

    class Writer(trainer.SummaryWriter):
        def write_scalars(self, step, scalars):
            super().write_scalars(step, scalars)
            if step == stop_step and "train/loss" in scalars:
                handler = signal.getsignal(signal.SIGTERM)
                assert type(getattr(handler, "__self__", None)).__name__ == "_StopRequest"
                signal.raise_signal(signal.SIGTERM)

    return Writer


def _assert_same_content(got, expected, path="study.json"):
    if isinstance(expected, dict):
        assert sorted(got) == sorted(expected), path
        for key in expected:
            _assert_same_content(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), path
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            _assert_same_content(a, b, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6, nan_ok=True), path
    else:
        assert got == expected, path


def test_a_study_interrupted_inside_and_between_runs_ends_as_an_uninterrupted_one(
    tiny_data_dir, tmp_path, monkeypatch
):
    reference_dir = str(tmp_path / "uninterrupted")
    lines = []
    reference = _tiny_study(reference_dir, tiny_data_dir, echo=lines.append)
    assert lines[0].startswith("[study] run 1/2 base/alpha_ce_a0.75_s0: 0 finished, about ")
    assert lines[1].startswith("[study] run 2/2 base/focal_g2_a0.25_s0: 1 finished, about ")
    assert [r["status"] for r in reference["runs"].values()] == ["finished", "finished"]
    assert reference["figure4"]["run"] == "base/focal_g2_a0.25_s0"
    assert (tmp_path / "uninterrupted" / "figure4.png").stat().st_size > 0

    workdir = str(tmp_path / "interrupted")
    # Inside the first run: SIGTERM after its step 1; the trainer saves that step and stops.
    monkeypatch.setattr(trainer, "SummaryWriter", _sigterm_at_step(1))
    with pytest.raises(trainer.TrainingInterruptedError, match="saved a checkpoint at step 1"):
        _tiny_study(workdir, tiny_data_dir)
    monkeypatch.undo()
    with open(os.path.join(workdir, "study.json")) as f:
        partial = json.load(f)
    assert [r["status"] for r in partial["runs"].values()] == ["pending", "pending"]

    # Between the runs: Ctrl-C while the second run is announced.
    def interrupt_before_second(line):
        if "run 2/2" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_study(workdir, tiny_data_dir, echo=interrupt_before_second)
    lines = []
    resumed = _tiny_study(workdir, tiny_data_dir, echo=lines.append)
    assert lines[0] == "[study] run 1/2 base/alpha_ce_a0.75_s0: finished before, skipped"

    _assert_same_content(resumed, reference)


def test_tied_rows_do_not_count_as_the_papers_ordering():
    rows = (study.Row("a", "va", 3.0), study.Row("b", "vb", 2.0), study.Row("c", "vc", 1.0))

    def claim(aps):
        stats = {f"v{k}": {"AP": study.Stats((v,))} for k, v in aps.items()}
        return study._ordering_claim(stats, None, rows=rows)

    assert claim({"a": 0.3, "b": 0.2, "c": 0.1}).startswith(
        "**Paper's ordering** holds: paper a > b > c; here a > b > c")
    # Two runs that found nothing (AP 0) are tied, not ordered as the paper orders them.
    assert claim({"a": 0.3, "b": 0.0, "c": 0.0}).startswith(
        "**Paper's ordering** holds for the best row only: paper a > b > c; here a > b = c")
    assert claim({"a": 0.0, "b": 0.0, "c": 0.0}).startswith(
        "**Paper's ordering** does not hold: paper a > b > c; here a = b = c")
