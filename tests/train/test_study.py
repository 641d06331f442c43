"""The study (`train.study`): the grid it expands to, the verdict rule, the regime figures against
hand-computed ones, tables built from the runs' own files, and a study interrupted inside and
between runs ending with the study.json of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from focaljax.detectors import anchor_coverage
from focaljax.inference import workdir as workdir_lib
from tests.train.conftest import tiny_config
from train import checks, cli
from train import train as trainer
from train.study import data_report, grid, report, runner, studies, verdicts
from train.study.verdicts import Stats

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL = grid.PRESETS["full"]
POSITIVES = {"paper_regime": 3.2, "base": 9.0}


def request(names, preset=None, **options):
    """A request of `names` on their default base configs."""
    return grid.Request(tuple(names), default_bases(names), preset or FULL, **options)


def default_bases(names):
    """Each study's (label, default base config), as the command line resolves them."""
    return {name: (studies.STUDIES[name].default_base_config,
                   cli.load_config(os.path.join(ROOT, studies.STUDIES[name].default_base_config)))
            for name in names}


TABLE1_VARIANTS = [
    "alpha_ce_a0.25", "alpha_ce_a0.5", "alpha_ce_a0.75", "alpha_ce_a0.9", "alpha_ce_a0.99",
    "focal_g0.5_a0.5", "focal_g1_a0.25", "focal_g2_a0.25", "focal_g5_a0.25",
    "ohem_x1.3_nms0.5", "ohem_x1.3_nms0.7", "ohem_x5_nms0.5", "ohem_x5_nms0.5_1to3",
    "flstar_g2_b1", "flstar_g4_b0", "ce_prior_sgd", "ce_bias0_sgd",
]
LONG = "focal_g2_a0.25_2x"


def test_table1_and_figure4_expand_to_every_variant_at_every_seed_in_seed_order():
    runs = grid.expand_grid(request(["table1", "figure4"]), POSITIVES)
    # Every row enters a verdict: all three seeds, the first seed of every row first; the
    # schedule check (figure4's model) has one seed.
    assert [run.name for run in runs] == [f"{v}_s0" for v in TABLE1_VARIANTS] + [f"{LONG}_s0"] + [
        f"{v}_s{s}" for s in (1, 2) for v in TABLE1_VARIANTS]
    assert {run.setting for run in runs} == {"paper_regime"}
    by_name = {run.name: run.overrides for run in runs}
    focal = by_name["focal_g5_a0.25_s0"]
    assert (focal["model.loss.cls"], focal["model.loss.gamma"], focal["model.loss.alpha"]) == (
        "focal", 5.0, 0.25)
    # OHEM batches of about 1.3 and 5 anchors per positive of the setting (3.2 an image).
    assert by_name["ohem_x1.3_nms0.5_s0"]["model.loss.ohem_num_samples"] == 4
    assert by_name["ohem_x5_nms0.5_s0"]["model.loss.ohem_num_samples"] == 16
    assert by_name["ohem_x1.3_nms0.7_s0"]["model.loss.ohem_nms_iou_threshold"] == 0.7
    assert by_name["ohem_x5_nms0.5_s0"]["model.loss.ohem_pre_nms_topk"] == 512
    # The schedule check: twice the steps, evaluated as often relative to them.
    long, short = by_name[f"{LONG}_s0"], by_name["focal_g2_a0.25_s0"]
    assert long["num_train_steps"] == 2 * short["num_train_steps"]
    assert long["eval_every_steps"] == 2 * short["eval_every_steps"]
    assert by_name["ohem_x5_nms0.5_1to3_s0"]["model.loss.ohem_negative_ratio"] == 3.0
    assert by_name["ohem_x5_nms0.5_s0"]["model.loss.ohem_negative_ratio"] == 0.0
    # The initialisation rows: the paper's SGD, decays at 2/3 and 8/9 of the run; only the prior
    # differs between them.
    sgd, zero = by_name["ce_prior_sgd_s1"], by_name["ce_bias0_sgd_s1"]
    assert sgd["optimizer.name"] == "sgd" and sgd["optimizer.learning_rate"] == 0.01
    steps = sgd["num_train_steps"]
    assert sgd["schedule.decay_steps"] == (round(2 * steps / 3), round(8 * steps / 9))
    assert {k: v for k, v in zero.items() if k != "model.prior_prob"} == {
        k: v for k, v in sgd.items() if k != "model.prior_prob"}
    assert (sgd["model.prior_prob"], zero["model.prior_prob"]) == (0.01, 0.5)
    assert "optimizer.name" not in focal  # The grid's own recipe.
    # Every run evaluates at 0.001 and again over the scores >= 0.05.
    assert all(r.overrides["model.postprocess.score_threshold"] == 0.001
               and r.overrides["eval_min_scores"] == (0.05,) for r in runs)
    assert by_name["ohem_x5_nms0.5_s2"]["seed"] == 2


def test_the_quick_preset_has_one_seed_and_the_full_grid_adds_single_seed_alphas():
    quick = grid.expand_grid(request(["table1"], grid.PRESETS["quick"]), POSITIVES)
    assert len(quick) == len(TABLE1_VARIANTS) + 1
    full_grid = grid.expand_grid(request(["table1"], full_grid=True), POSITIVES)
    extra = [r for r in full_grid if r.variant not in TABLE1_VARIANTS + [LONG]]
    assert len(extra) == 4 * 4 and {r.seed for r in extra} == {0}
    assert len(full_grid) == 3 * len(TABLE1_VARIANTS) + 1 + 16


@pytest.mark.parametrize("names,check,row,presets", [
    (["table1", "figure4"], LONG, "focal_g2_a0.25", [("full", "long"), ("long", "xlong")]),
    (["rpn"], "rpn_focal_softmax_2x", "rpn_focal_softmax", [("full", "xlong")]),
])
def test_a_presets_schedule_check_is_the_next_presets_run_of_that_row(names, check, row,
                                                                       presets):
    # Why a check's run directory can be copied in as the longer preset's seed 0 (README): the
    # two runs train the same config, so they are the same run.
    for shorter, longer in presets:
        def runs_of(preset, variant):
            return {r.name: r for r in grid.expand_grid(request(names, grid.PRESETS[preset]),
                                                        POSITIVES) if r.variant == variant}
        twice = runs_of(shorter, check)[f"{check}_s0"]
        same = runs_of(longer, row)[f"{row}_s0"]
        assert dict(twice.overrides) == dict(same.overrides), (shorter, longer)
    # The presets from the shortest to the longest (the last three each double the one before).
    steps = [grid.PRESETS[p].overrides["retinanet"]["num_train_steps"]
             for p in ("short", "full", "long", "xlong")]
    assert steps == [1200, 4800, 9600, 19200]


def test_runs_are_selected_by_name_or_key_in_the_grids_order():
    whole = grid.expand_grid(request(["table1", "figure4"]), POSITIVES)
    picked = grid.select_runs(whole, ["paper_regime/ohem_x5_*_s1", "focal_g2_a0.25_s*"])
    assert [r.name for r in picked] == [
        r.name for r in whole
        if r.name in ("ohem_x5_nms0.5_s1", "ohem_x5_nms0.5_1to3_s1")
        or (r.variant == "focal_g2_a0.25")]
    assert [r.seed for r in picked if r.variant == "focal_g2_a0.25"] == [0, 1, 2]
    assert grid.select_runs(whole, []) == whole
    with pytest.raises(grid.StudyError, match=r"--runs fl_\* matches none of the runs: "
                                              r"alpha_ce_a0.25_s0, "):
        grid.select_runs(whole, ["fl_*"])


def test_ohem_rows_need_the_settings_positives():
    with pytest.raises(grid.StudyError, match="sizes its OHEM batch by the positives an image "
                                              "of setting paper_regime, not given"):
        grid.expand_grid(request(["table1"]))


def _field(config: ml_collections.ConfigDict, dotted: str):
    for name in dotted.split("."):
        config = config[name]
    return config


@pytest.mark.parametrize("names", [["table1", "figure4"], ["rpn"]])
def test_every_override_sets_a_field_the_trainer_accepts(names):
    bases = default_bases(names)
    for preset in grid.PRESETS.values():
        for run in grid.expand_grid(grid.Request(tuple(names), bases, preset, full_grid=True),
                                    POSITIVES):
            config = grid.run_config(run, bases[names[0]][1])
            for key, value in run.overrides.items():
                got = _field(config, key)
                if isinstance(got, ml_collections.ConfigDict):
                    got = got.to_dict()
                assert got == (list(value) if isinstance(value, tuple) else value) or (
                    tuple(got) == tuple(value)), key
            checks.check_config(config, 1)


def test_each_regime_has_the_anchor_count_it_is_built_for():
    # The anchors a run trains with, counted from the run's own config: RetinaNet's 9 a location
    # on P3-P5 of 128x128 (16^2 + 8^2 + 4^2 locations), the RPN's 3 a location on P2-P6 of
    # 224x224 (ceil(224 / 2^l)^2 locations), so that its standard 256 samples are about 2%.
    for names, expected in ((["table1"], 9 * (16**2 + 8**2 + 4**2)),
                            (["rpn"], 3 * (56**2 + 28**2 + 14**2 + 7**2 + 4**2))):
        base = default_bases(names)[names[0]][1]
        run = grid.expand_grid(request(names), POSITIVES)[0]
        config = grid.run_config(run, base)
        setup = anchor_coverage.detector_anchors(config.model, config.dataset.image_size)
        assert len(setup.anchors) == expected, names
    assert run.setting == "rpn_regime" and len(setup.anchors) >= 10_000
    assert config.model.rpn.batch_size_per_image / len(setup.anchors) < 0.025


def test_an_override_of_a_missing_field_is_refused():
    base = default_bases(["table1"])["table1"][1]
    with pytest.raises(grid.StudyError, match="model.loss has no field 'gama'; did you mean gamma"):
        grid.apply_overrides(base, {"model.loss.gama": 2.0})
    with pytest.raises(grid.StudyError, match="the config has no field 'modle'"):
        grid.apply_overrides(base, {"modle.loss.gamma": 2.0})


def test_unknown_studies_presets_and_settings_are_refused_with_the_valid_ones():
    with pytest.raises(grid.StudyError, match="unknown study tabel1; valid studies: table1, "
                                              "figure4, rpn"):
        runner.resolve_request("tabel1", "full", None)
    with pytest.raises(grid.StudyError,
                       match="unknown preset 'fast'; valid presets: full, long, xlong, short, "
                             "quick"):
        runner.resolve_request("table1", "fast", None)
    with pytest.raises(grid.StudyError, match="unknown setting 'paper'; valid settings: base, "
                                              "paper_regime, rpn_regime"):
        grid.expand_grid(request(["table1"], setting="paper"), POSITIVES)
    with pytest.raises(grid.StudyError, match="needs a faster_rcnn config"):
        runner.resolve_request("rpn", "full", os.path.join(ROOT, "configs/shapes_retinanet.py"))
    with pytest.raises(grid.StudyError, match="--base_config nope.py: no such file"):
        runner.resolve_request("table1", "full", "nope.py")


def test_a_run_made_from_another_config_is_refused_naming_the_fields(tmp_path):
    run = grid.Run("paper_regime", "focal_g2_a0.25", 0, "table1", "retinanet", {})
    config = ml_collections.ConfigDict({"seed": 0, "model": {"loss": {"gamma": 2.0}}})
    recorded = {"seed": 0, "model": {"loss": {"gamma": 1.0, "alpha": 0.25}}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "study_run.json").write_text(json.dumps({"config": recorded}))
    with pytest.raises(grid.StudyError, match=r"\(model.loss.gamma, model.loss.alpha \(no longer "
                                              r"in the config\) differ; another --preset"):
        runner.check_spec(run, str(run_dir), config)
    # A field added since the run was made is not a difference: its default is the old behaviour.
    (run_dir / "study_run.json").write_text(json.dumps({"config": {"model": {"loss": {}}}}))
    runner.check_spec(run, str(run_dir), config)
    assert runner.config_differences({"a": [1, 2]}, {"a": [1, 2], "b": 3}) == []
    assert runner.config_differences({"a": {"b": 1}}, {"a": 1}) == ["a"]


@pytest.mark.parametrize("study_dir", ["docs/study_results/table1",
                                       "docs/study_results/table1_short",
                                       "docs/study_results/table1_long",
                                       "docs/study_results/table1_xlong",
                                       "docs/study_results/rpn",
                                       "docs/study_results/rpn_xlong"])
def test_the_committed_study_runs_are_reproduced_by_todays_configs(study_dir):
    # A change of a default would make `make study` refuse to resume the committed study.
    runs_dir = os.path.join(ROOT, study_dir, "runs")
    made = sorted(os.path.relpath(os.path.dirname(os.path.join(path, name)), runs_dir)
                  for path, _, files in os.walk(runs_dir) for name in files
                  if name == "study_run.json")
    header_path = os.path.join(ROOT, study_dir, "study.json")
    if not made or not os.path.exists(header_path):  # (study.json comes with the first run)
        pytest.skip(f"no runs committed under {study_dir}")
    with open(header_path) as f:
        header = json.load(f)
    req = request(header["studies"], grid.PRESETS[header["preset"]])
    # The settings' figures (OHEM's batch sizes) as the study measured and kept them.
    runs, _ = runner.plan(req, os.path.join(ROOT, study_dir))
    bases = dict(req.bases.values())
    runs = {run.key: run for run in runs}
    for key in made:
        run = runs[key]
        runner.check_spec(run, os.path.join(runs_dir, key), grid.run_config(run, bases[run.base]))


def test_the_command_line_reports_a_bad_preset_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train.study", "--study", "table1", "--preset", "fast",
         "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: unknown preset 'fast'; valid presets: full, long, xlong, short, quick"]
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------
# The verdict rule.


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0.40, 0.41, 0.42), (0.30, 0.31, 0.33), "holds"),  # gap 0.097 > noise 0.03
        ((0.30, 0.31, 0.33), (0.40, 0.41, 0.42), "reversed"),
        ((0.40, 0.41, 0.42), (0.35, 0.41, 0.45), "not resolved"),  # gap 0.007 < noise 0.1
        ((0.40, 0.50, 0.60), (0.30, 0.32, 0.34), "not resolved"),  # gap 0.18 < noise 0.2
        ((0.40, 0.41), (0.10, 0.11), "not resolved"),  # two seeds
    ],
)
def test_a_claim_holds_only_when_the_gap_exceeds_both_rows_seed_ranges(a, b, expected):
    assert verdicts.compare(Stats(a), Stats(b)) == expected


def test_a_diverged_seed_counts_as_ap_zero():
    stats = Stats((0.3, 0.31), diverged=1)
    assert stats.scores == (0.3, 0.31, 0.0) and stats.range == pytest.approx(0.31)
    assert stats.cell() == "0.203 (0.000–0.310, 3 seeds), 1 diverged"
    assert Stats((), diverged=3).cell() == "diverged (3 seeds)"
    # A row with a diverged seed is too noisy to lose to a steady one by a small gap.
    assert verdicts.compare(Stats((0.25, 0.25, 0.25)), stats) == "not resolved"


def _stats(**rows):
    return {variant: {"AP": Stats(tuple(values))} for variant, values in rows.items()}


def test_claims_pick_the_best_row_on_its_seed_mean_and_report_each_pair():
    rows = (verdicts.Row("a", "va", 3.0), verdicts.Row("b", "vb", 2.0),
            verdicts.Row("c", "vc", 1.0))
    claim = verdicts.best_row_claim(
        _stats(va=(0.5, 0.51, 0.52), vb=(0.3, 0.31, 0.32), vc=(0.48, 0.53, 0.58)), rows)
    assert claim.startswith("**Paper's best row (a) above every other**: not resolved. "
                            "> b: holds (gap +0.200, noise 0.020); > c: not resolved")
    assert claim.endswith("Best here on the seed mean: c.")
    # A row ahead on fewer seeds than a verdict needs says so.
    claim = verdicts.best_row_claim(
        _stats(va=(0.5, 0.51, 0.52), vb=(0.3, 0.31, 0.32), vc=(0.6,)), rows)
    assert claim.endswith("Best here on the seed mean: c (1 of 3 seeds).")
    beats = verdicts.first_beats_best_of_rest_claim(
        _stats(va=(0.5, 0.51, 0.52), vb=(0.3, 0.31, 0.32), vc=(0.40, 0.41, 0.42)), rows)
    assert beats.startswith("**a above the best other row (c, picked on its seed mean)**: holds "
                            "(gap +0.100, noise 0.020). Against each row: 2 hold")
    # The paper's FL (a) against the best alpha-CE row (d), then the best FL row (b) against it.
    rows4 = (*rows, verdicts.Row("d", "vd", 0.5))
    tuned = verdicts.tuned_fl_claim(
        _stats(va=(0.5, 0.51, 0.52), vb=(0.6, 0.61, 0.62), vc=(0.30, 0.31, 0.32),
               vd=(0.54, 0.55, 0.56)), rows4, focal_rows=2)
    assert tuned.startswith("**a above the best other row (d, picked on its seed mean)**: "
                            "reversed (gap -0.040, noise 0.020). Against each row: 1 hold, "
                            "1 reversed, 0 not resolved.")
    assert tuned.endswith(" **The best FL row above the best alpha-CE row, each picked on its "
                          "seed mean: b above d**: holds (gap +0.060, noise 0.020).")
    unfinished = verdicts.tuned_fl_claim(_stats(va=(0.5,), vb=(), vc=(), vd=()), rows4,
                                         focal_rows=2)
    assert unfinished.endswith("**The best FL row above the best alpha-CE row**: not resolved "
                               "(runs missing).")
    same = verdicts.no_difference_claim(
        _stats(va=(0.5, 0.51, 0.52), vb=(0.49, 0.5, 0.53), vc=(0.3, 0.31, 0.32)), rows)
    assert same.startswith("**Paper's finding (no difference between FL* and FL)**: reversed. "
                           "b: holds")
    init = verdicts.init_claim(
        {"va": {"AP": Stats((0.2, 0.21, 0.22))}, "vb": {"AP": Stats((), diverged=3)}}, rows[:2])
    assert ": a zero bias diverges: holds (3 of 3 zero-bias seeds diverged, 0 of 3 from the " \
           "prior); a above b: holds (gap +0.210, noise 0.020)." in init
    trained = verdicts.init_claim(_stats(va=(0.58, 0.59, 0.61), vb=(0.24, 0.31, 0.36)), rows[:2])
    assert ": a zero bias diverges: reversed (0 of 3 zero-bias seeds diverged, 0 of 3 from the " \
           "prior); a above b: holds (gap +0.290, noise 0.120)." in trained
    some = verdicts.init_claim(
        {"va": {"AP": Stats((0.2, 0.21, 0.22))}, "vb": {"AP": Stats((0.1,), diverged=2)}},
        rows[:2])
    assert ": a zero bias diverges: not resolved (2 of 3" in some


def test_schedule_claim_needs_the_presets_seeds_and_widens_their_range():
    rows = (verdicts.Row("1x", "v1", None), verdicts.Row("2x", "v2", None))
    # Seeds 0.60-0.62 (range 0.02): converged when twice the steps lands in [0.58, 0.64].
    assert ": holds: twice the steps gives AP 0.635 against 0.610 (0.600-0.620 over 3 seeds)" in (
        verdicts.schedule_claim(_stats(v1=(0.60, 0.61, 0.62), v2=(0.635,)), rows))
    assert ": reversed: twice the steps gives AP 0.650" in verdicts.schedule_claim(
        _stats(v1=(0.60, 0.61, 0.62), v2=(0.65,)), rows)
    # One seed has no range: a gap of any size decides nothing.
    assert ": not resolved (1 of 3 seeds of the preset's row): twice the steps gives AP 0.781 " \
           "against 0.686 (0.686-0.686 over 1 seed)" in verdicts.schedule_claim(
               _stats(v1=(0.686,), v2=(0.781,)), rows)
    # The same verdicts as words, which label the whole study (every check must hold).
    assert [verdicts.schedule_verdict(_stats(v1=(0.60, 0.61, 0.62), v2=(v2,)), rows)
            for v2 in (0.635, 0.65, 0.57, 0.581)] == ["holds", "reversed", "reversed", "holds"]
    assert verdicts.schedule_verdict(_stats(v1=(0.686,), v2=(0.781,)), rows) == "not resolved"
    assert verdicts.convergence(["holds", "holds"]) == "holds"
    assert verdicts.convergence(["holds", "not resolved"]) == "not resolved"
    assert verdicts.convergence(["not resolved", "reversed"]) == "reversed"
    assert verdicts.convergence([]) == "not resolved"


def test_figure4_claim_reads_both_points_of_the_curves():
    def figure4(neg10, neg1, pos10, pos1):
        return {"gammas": {f"{g:g}": {"negative": {"hardest_10%": n10, "hardest_1%": n1},
                                      "positive": {"hardest_10%": p10, "hardest_1%": p1}}
                           for g, n10, n1, p10, p1 in zip((0.0, 2.0), neg10, neg1, pos10, pos1,
                                                           strict=True)}}

    gammas = (0.0, 2.0)
    # The measured model's figures: at 10% the negatives' share (near 1 already) rises less
    # than the positives' moves; at 1% far more.
    measured = verdicts.figure4_claim(
        figure4((0.813, 1.0), (0.406, 0.990), (0.434, 0.661), (0.083, 0.143)), gammas)
    assert measured.startswith("**Paper's finding**: not resolved: the hardest 10% of negatives "
                               "carry 0.81 of the negatives' loss at gamma 0 and 1.00 at gamma 2")
    holds = verdicts.figure4_claim(
        figure4((0.5, 0.9), (0.2, 0.8), (0.4, 0.45), (0.1, 0.12)), gammas)
    assert holds.startswith("**Paper's finding**: holds:")
    falling = verdicts.figure4_claim(
        figure4((0.9, 0.5), (0.8, 0.2), (0.4, 0.45), (0.1, 0.12)), gammas)
    assert falling.startswith("**Paper's finding**: reversed:") and "(not rising)" in falling


# ----------------------------------------------------------------------------------------------
# The regime figures against hand-computed ones.


def test_anchor_statistics_count_positives_coverage_and_low_quality_matches():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60]], np.float32)
    boxes = [
        np.array([[0, 0, 10, 10], [0, 0, 14, 14]], np.float32),  # IoU 1; best 0.51 (anchor 1)
        np.array([[50, 50, 57, 57]], np.float32),  # best IoU 0.49: positive by low quality only
        np.zeros((0, 4), np.float32),  # An empty image.
    ]
    stats = data_report.anchor_statistics(anchors, boxes, fg_iou=0.5, allow_low_quality=True)
    # The 14 px box: IoU 100/196 = 0.51 with anchor 0, 196/400 = 0.49 with anchor 1. Positives:
    # anchor 0 in image 1 (both boxes), anchor 2 in image 2 (its box's best, 49/100 = 0.49).
    assert stats["positives_per_image"] == pytest.approx(2 / 3)
    assert stats["objects_per_image"] == pytest.approx(1.0)
    assert stats["objects_with_anchor_iou_0.5"] == pytest.approx(2 / 3)
    assert stats["objects_positive_only_by_low_quality_match"] == pytest.approx(1 / 3)
    without = data_report.anchor_statistics(anchors, boxes, fg_iou=0.5, allow_low_quality=False)
    assert without["positives_per_image"] == pytest.approx(1 / 3)
    assert without["objects_positive_only_by_low_quality_match"] == 0.0


# ----------------------------------------------------------------------------------------------
# Tables from the runs' own files.

SETTING_FIGURES = {
    "dataset": "shapes", "image_size": [128, 128], "anchors_per_image": 3024, "images": 500,
    "positives_per_image": 3.2, "negatives_per_positive": 945.0, "objects_per_image": 1.2,
    "objects_with_anchor_iou_0.5": 0.93, "objects_with_anchor_at_fg_iou": 0.93,
    "objects_positive_only_by_low_quality_match": 0.07, "fg_iou": 0.5, "bg_iou": 0.4,
    "pixel_threshold_accuracy": {"best": 0.71, "best_statistic": "saturation"},
}


def _write_run(runs_dir, key, ap_values, *, status="finished", positives=10.0, steps=(1, 2)):
    run_dir = os.path.join(runs_dir, key)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for index, step in enumerate(steps, start=1):
            f.write(json.dumps({"step": step, "train/loss": 1.0 / step,
                                "train/num_positives": positives}) + "\n")
            if status == "finished":  # An evaluation at every step, the last one final.
                scale = index / len(steps)
                f.write(json.dumps({"step": step, **{f"eval/{k}": v * scale
                                                     for k, v in ap_values.items()}}) + "\n")
    with open(os.path.join(run_dir, runner.runs_lib.RESULT_FILE), "w") as f:
        json.dump({"run": key, "status": status}, f)


def test_tables_are_built_from_the_runs_metrics_files(tmp_path):
    bases = default_bases(["table1"])
    runs = grid.expand_grid(request(["table1"]), POSITIVES)
    runs_dir = str(tmp_path / "runs")
    aps = {"alpha_ce_a0.25": 0.10, "alpha_ce_a0.5": 0.30, "alpha_ce_a0.75": 0.31,
           "alpha_ce_a0.9": 0.35, "alpha_ce_a0.99": 0.28, "focal_g2_a0.25": 0.45}
    for run in runs:
        if run.variant == "ce_bias0_sgd":
            _write_run(runs_dir, run.key, {}, status="diverged")
            continue
        ap = aps.get(run.variant, 0.2) + 0.01 * run.seed
        _write_run(runs_dir, run.key, {"AP": ap, "AP50": ap + 0.2, "AP@0.05": ap - 0.05,
                                       "AP50@0.05": ap + 0.1},
                   steps=(2, 4) if run.variant == "focal_g2_a0.25_2x" else (1, 2))
    header = {"studies": ["table1"], "preset": "full", "seeds": 3,
              "full_grid": False, "base_configs": ["configs/shapes_retinanet.py"]}
    configs = {run.key: grid.run_config(run, bases["table1"][1]) for run in runs}
    content = runner.write_study(str(tmp_path), runs, ["table1"], header,
                                 {"paper_regime": SETTING_FIGURES}, configs, full_grid=False)

    table = content["tables"]["table1a"]
    rows = {row["variant"]: row for row in table["rows"]}
    assert rows["alpha_ce_a0.75"]["ours"]["AP"]["values"] == pytest.approx([0.31, 0.32, 0.33])
    assert rows["alpha_ce_a0.75"]["ours"]["AP"]["cell"] == "0.320 (0.310–0.330, 3 seeds)"
    assert rows["alpha_ce_a0.9"]["paper"] == 30.8
    # The paper's best alpha (0.75) is below 0.9 here by more than the seeds' range.
    assert table["claim"].startswith("**Paper's best row (alpha 0.75) above every other**: "
                                     "reversed.")
    assert "Best here on the seed mean: alpha 0.9." in table["claim"]
    central = content["tables"]["fl_vs_ce"]["claim"]
    assert central.startswith("**FL (gamma 2, alpha 0.25) above the best other row (alpha-CE, "
                              "alpha 0.9, picked on its seed mean)**: holds (gap +0.100")
    init = {row["variant"]: row for row in content["tables"]["init"]["rows"]}
    assert init["ce_bias0_sgd"]["ours"]["AP"]["cell"] == "diverged (3 seeds)"
    assert "3 of 3 zero-bias seeds diverged" in content["tables"]["init"]["claim"]
    # AP against step: the FL row's two evaluations, mean and range over its 3 seeds.
    fl_curve = content["curves"]["FL (gamma 2, alpha 0.25)"]
    assert fl_curve["variant"] == "focal_g2_a0.25" and fl_curve["seeds"] == 3
    assert fl_curve["AP"][1] == pytest.approx([2, 0.46, 0.45, 0.47])
    assert fl_curve["AP"][0] == pytest.approx([1, 0.23, 0.225, 0.235])
    assert content["curves"]["best alpha-CE"]["variant"] == "alpha_ce_a0.9"

    markdown = (tmp_path / "study.md").read_text()
    assert "| alpha 0.9 (`alpha_ce_a0.9`) | 0.360 (0.350–0.370, 3 seeds) |" in markdown
    # Each curve's row names its own steps: the 2x check evaluates at steps 2 and 4.
    assert "| `focal_g2_a0.25` | 3 | 1: 0.230, 2: 0.460 |" in markdown
    assert "| `focal_g2_a0.25_2x` | 1 | 2: 0.100, 4: 0.200 |" in markdown
    assert "| paper_regime | shapes | 128x128 | 3024 | 3.2 | 1:945 | 93.0% | 7.0% | 0.710 " \
           "(saturation) |" in markdown
    assert verdicts.RULE in markdown
    # Every run seed by seed: the rows in the central claim's table order first, each row once
    # with that table's label and paper AP; a one-seed row has blank cells for the seeds it lacks.
    section = markdown[markdown.index("## Every run, seed by seed"):]
    rows = section[section.index("| run | seed 0 | seed 1 | seed 2 | mean (range) | paper AP |"):]
    rows = rows[:rows.index("\n\n")].splitlines()[2:]
    assert [row.split("`")[1] for row in rows][:6] == [
        "focal_g2_a0.25", "focal_g0.5_a0.5", "focal_g1_a0.25", "focal_g5_a0.25",
        "alpha_ce_a0.25", "alpha_ce_a0.5"]
    assert sorted(row.split("`")[1] for row in rows) == sorted(TABLE1_VARIANTS + [LONG])
    assert rows[0] == ("| FL (gamma 2, alpha 0.25) (`focal_g2_a0.25`) | 0.450 | 0.460 | 0.470 | "
                       "**0.460** (0.020) | 34.0 |")
    assert "| alpha-CE, alpha 0.9 (`alpha_ce_a0.9`) | 0.350 | 0.360 | 0.370 | **0.360** (0.020) " \
           "| 30.8 |" in rows
    assert "| OHEM, 1.3 per positive, NMS 0.5 (`ohem_x1.3_nms0.5`) | 0.200 | 0.210 | 0.220 | " \
           "**0.210** (0.020) | 32.8 (ResNet-101) |" in rows
    assert "| CE, bias 0 (`ce_bias0_sgd`) | diverged | diverged | diverged | **0.000** (0.000) " \
           "| diverges |" in rows
    assert rows[-1] == ("| FL, twice the steps (`focal_g2_a0.25_2x`) | 0.200 |  |  | **0.200** "
                        "(1 seed) | — |")
    # FL at twice the steps (0.20) is far below its seeds (0.45-0.47): not converged.
    assert content["converged"] == verdicts.REVERSED
    assert "Preset `full` (**NOT CONVERGED: twice the steps moved AP beyond the seeds' noise" \
           in markdown
    for picture in ("table1.png", "ap_vs_step.png"):
        assert (tmp_path / picture).stat().st_size > 0
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["runs"]["paper_regime/alpha_ce_a0.9_s0"]["eval"]["AP"] == pytest.approx(0.35)


def test_the_seed_table_gives_a_partial_rows_mean_so_far_and_its_pending_seeds():
    rows = [{"label": "FL", "variant": "focal", "setting": "s", "paper": None, "paper_note": "",
             "values": {0: 0.5, 1: None, 2: 0.7}},
            {"label": "CE", "variant": "ce", "setting": "s", "paper": 30.2, "paper_note": "",
             "values": {0: None, 1: None, 2: None}},
            {"label": "CE0", "variant": "ce0", "setting": "s", "paper": None,
             "paper_note": "diverges", "values": {0: "diverged", 1: 0.3, 2: None}}]
    lines = report.seed_table(rows)
    assert lines[4:] == [
        "| run | seed 0 | seed 1 | seed 2 | mean (range) | paper AP |",
        "|---|---:|---:|---:|---:|---:|",
        "| FL (`focal`) | 0.500 | — | 0.700 | 0.600 (2 of 3 seeds) | — |",
        "| CE (`ce`) | — | — | — | — | 30.2 |",
        "| CE0 (`ce0`) | diverged | 0.300 | — | 0.150 (2 of 3 seeds) | diverges |",
        ""]


def test_a_quick_study_says_it_is_not_converged(tmp_path):
    runs = grid.expand_grid(request(["table1"], grid.PRESETS["quick"]), POSITIVES)
    header = {"studies": ["table1"], "preset": "quick", "seeds": 1,
              "full_grid": False, "base_configs": ["x"]}
    runner.write_study(str(tmp_path), runs, ["table1"], header, {"paper_regime": SETTING_FIGURES},
                       {}, full_grid=False)
    # Its one seed gives the schedule check no range to judge by.
    assert "(**NOT SHOWN CONVERGED: no schedule check below has resolved it; its orderings " \
           "rank how far each loss got in this schedule" in (tmp_path / "study.md").read_text()


# ----------------------------------------------------------------------------------------------
# Interrupted and resumed: the same study.json as an uninterrupted study.

TINY_PRESET = grid.Preset(
    "tiny", {"retinanet": {"num_train_steps": 4, "checkpoint_every_steps": 2,
                           "eval_every_steps": 2}},
    seeds=1, seconds_per_run=10.0,
)
TINY_RUNS = ["alpha_ce_a0.75_s0", "focal_g2_a0.25_2x_s0"]


def _tiny_study(workdir, data_dir, echo=lambda line: None, runs=tuple(TINY_RUNS),
                report_only=False):
    config = tiny_config(data_dir)
    bases = {"table1": ("tiny", config), "figure4": ("tiny", config)}
    tiny = grid.Request(("table1", "figure4"), bases, TINY_PRESET, setting="base", runs=runs)
    return runner.run_study(tiny, workdir, echo=echo, report_only=report_only)


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
    # One run of the preset's length (10 s estimated) and the check at twice it.
    assert lines[0] == ("[study] run 1/2 base/alpha_ce_a0.75_s0: 0 finished, about 30 s left "
                        "(preset's estimate of 10 s a run of the preset's length)")
    assert lines[1].startswith("[study] run 2/2 base/focal_g2_a0.25_2x_s0: 1 finished, about ")
    # The report covers the whole grid: the two runs trained, the others pending.
    statuses = {key: r["status"] for key, r in reference["runs"].items()}
    assert {key for key, status in statuses.items() if status == "finished"} == {
        f"base/{name}" for name in TINY_RUNS}
    assert set(statuses.values()) == {"finished", "pending"} and len(statuses) > 10
    # Twice the tiny preset's 4 steps, evaluated every 4.
    assert sorted(reference["runs"]["base/focal_g2_a0.25_2x_s0"]["curve"]) == ["4", "8"]
    assert reference["figure4"]["run"] == "base/focal_g2_a0.25_2x_s0"
    assert 0.0 <= reference["figure4"]["negatives_above_0.05"] <= 1.0
    assert reference["settings"]["base"]["anchors_per_image"] > 0
    assert (tmp_path / "uninterrupted" / "figure4.png").stat().st_size > 0

    workdir = str(tmp_path / "interrupted")
    # Inside the first run: SIGTERM after its step 1; the trainer saves that step and stops.
    monkeypatch.setattr(trainer, "SummaryWriter", _sigterm_at_step(1))
    with pytest.raises(trainer.TrainingInterruptedError, match="saved a checkpoint at step 1"):
        _tiny_study(workdir, tiny_data_dir)
    monkeypatch.undo()
    with open(os.path.join(workdir, "study.json")) as f:
        partial = json.load(f)
    assert {r["status"] for r in partial["runs"].values()} == {"pending"}
    first_dir = os.path.join(workdir, "runs", "base", "alpha_ce_a0.75_s0")
    first_segment = runner.runs_lib.trained_seconds(first_dir)
    assert first_segment > 0 and runner.runs_lib.ended_seconds(first_dir) is None

    # Between the runs: Ctrl-C while the second run is announced.
    announced = []

    def interrupt_before_second(line):
        announced.append(line)
        if "run 2/2" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_study(workdir, tiny_data_dir, echo=interrupt_before_second)
    # The first run resumed at its step 1 of 4: three quarters of a run and the check were left.
    assert announced[0] == ("[study] run 1/2 base/alpha_ce_a0.75_s0: 0 finished, about 28 s left "
                            "(preset's estimate of 10 s a run of the preset's length)")
    # Its time counts both of its segments.
    total, complete = runner.runs_lib.ended_seconds(first_dir)
    assert complete and total == runner.runs_lib.trained_seconds(first_dir) > first_segment
    # The check is estimated from the first run's measured time, at twice it.
    assert announced[1] == (f"[study] run 2/2 base/focal_g2_a0.25_2x_s0: 1 finished, about "
                            f"{runner._format_minutes(2 * total)} left (measured of "
                            f"{runner._format_minutes(total)} a run of the preset's length)")
    lines = []
    resumed = _tiny_study(workdir, tiny_data_dir, echo=lines.append)
    assert lines[0] == "[study] run 1/2 base/alpha_ce_a0.75_s0: finished before, skipped"
    # study.md gives each ended run's minutes.
    with open(os.path.join(workdir, "study.md")) as f:
        time_section = f.read().split("## Time")[1]
    assert "2 runs ended" in time_section and ">=" not in time_section
    assert f"| `base/alpha_ce_a0.75` | {total / 60:.1f} |" in time_section
    assert "| `base/focal_g2_a0.25_2x` | " in time_section

    _assert_same_content(resumed, reference)

    # A later call that trains other runs (here: one already finished) keeps the earlier runs in
    # its report: the schedule check still has its longer run.
    lines = []
    narrowed = _tiny_study(workdir, tiny_data_dir, echo=lines.append, runs=("alpha_ce_a0.75*",))
    assert lines[0] == "[study] run 1/1 base/alpha_ce_a0.75_s0: finished before, skipped"
    _assert_same_content(narrowed, reference)

    # The report alone, for every run of the grid: nothing trains (no run announced, no pending
    # run's directory made), and the outputs are rewritten as they were.
    os.remove(os.path.join(workdir, "study.md"))
    made = sorted(os.listdir(os.path.join(workdir, "runs", "base")))
    lines = []
    reported = _tiny_study(workdir, tiny_data_dir, echo=lines.append, runs=(), report_only=True)
    assert not [line for line in lines if line.startswith("[study] run ")]
    assert sorted(os.listdir(os.path.join(workdir, "runs", "base"))) == made
    assert os.path.exists(os.path.join(workdir, "study.md"))
    _assert_same_content(reported, reference)


def test_a_run_that_recorded_its_last_segment_only_is_marked_as_a_lower_bound(tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    for run_dir, seconds in ((old, 600.0), (new, 1200.0)):
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, runner.runs_lib.RESULT_FILE), "w") as f:
            json.dump({"status": "finished", "seconds": seconds}, f)
    with open(os.path.join(new, runner.runs_lib.TIME_FILE), "w") as f:
        json.dump({"seconds": 1200.0}, f)
    assert runner.runs_lib.ended_seconds(old) == (600.0, False)
    assert runner.runs_lib.ended_seconds(new) == (1200.0, True)
    assert runner.runs_lib.ended_seconds(str(tmp_path)) is None
    text = "\n".join(runner.report_lib._time_section(
        {("s/v", 0): (600.0, False), ("s/v", 1): (1200.0, True), ("s/w", 0): (60.0, True)}, {}))
    assert "3 runs ended, 0.5 h in all at least:" in text
    assert "| `s/v` | >= 10.0 | 20.0 |" in text
    assert "| `s/w` | 1.0 | — |" in text


def test_a_segments_clock_is_on_disk_while_it_runs_and_adds_to_the_earlier_segments(tmp_path):
    run_dir = str(tmp_path)
    with open(os.path.join(run_dir, runner.runs_lib.TIME_FILE), "w") as f:
        json.dump({"seconds": 100.0}, f)
    with runner.segment_clock(run_dir, every=0.01) as seconds:
        # What a segment killed now (no `finally`) would leave: its time up to the last tick.
        deadline = time.monotonic() + 10.0
        while runner.runs_lib.trained_seconds(run_dir) == 100.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        ticked = runner.runs_lib.trained_seconds(run_dir)
        assert 100.0 < ticked <= seconds()
    ended = seconds()
    assert ended == runner.runs_lib.trained_seconds(run_dir) >= ticked
    time.sleep(0.02)
    assert seconds() == ended  # Frozen once the segment ended.
    # An exception ends the segment too, and its time is still added.
    with pytest.raises(RuntimeError), runner.segment_clock(run_dir, every=60.0):
        raise RuntimeError("interrupted")
    assert runner.runs_lib.trained_seconds(run_dir) > ended


def test_a_run_whose_checkpoints_are_gone_sets_its_earlier_log_and_time_aside(tmp_path):
    run_dir = str(tmp_path)
    assert runner.set_aside_lost_segments(run_dir) is None  # Never trained: nothing to set aside.

    def trained(last_step: int, seconds: float) -> None:
        with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 20, "train/loss": 1.0}) + "\n")
            f.write(json.dumps({"step": last_step, "eval/AP": 0.5}) + "\n")
        with open(os.path.join(run_dir, runner.runs_lib.TIME_FILE), "w") as f:
            json.dump({"seconds": seconds}, f)

    trained(4800, 600.0)
    lost = runner.set_aside_lost_segments(run_dir)
    assert lost == {"dir": os.path.join(run_dir, runner.runs_lib.LOST_DIR, "1"), "last_step": 4800,
                    "seconds": 600.0}
    assert not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
    assert runner.runs_lib.trained_seconds(run_dir) == 0.0  # The restart's clock starts at 0.
    assert runner.runs_lib.trained_seconds(lost["dir"]) == 600.0
    assert runner.runs_lib.read_metrics(lost["dir"])[1] == {4800: {"AP": 0.5}}
    trained(9600, 1200.0)  # Lost a second time: the next directory.
    second = runner.set_aside_lost_segments(run_dir)["dir"]
    assert second == os.path.join(run_dir, runner.runs_lib.LOST_DIR, "2")
    assert runner.runs_lib.lost_seconds(run_dir) == 600.0 + 1200.0
    text = "\n".join(runner.report_lib._time_section({("s/v", 0): (60.0, True)},
                                                     {"s/v_s1": 1800.0}))
    assert "Not in these minutes: 30 min trained in segments whose checkpoints were lost" in text
    assert "`s/v_s1` 30.0." in text
    # With a checkpoint on disk the run resumes from it: its log and time stay.
    trained(9600, 1200.0)
    manager = workdir_lib.checkpoint_manager(run_dir)
    manager.save(9600, args=ocp.args.StandardSave({"step": np.int32(9600)}))
    manager.wait_until_finished()
    manager.close()
    assert runner.set_aside_lost_segments(run_dir) is None
    assert runner.runs_lib.trained_seconds(run_dir) == 1200.0


def test_the_time_left_counts_a_schedule_check_as_two_runs():
    # Before any run has ended: the preset's estimate a run, the check at twice it.
    assert runner.seconds_left([1.0, 1.0, 1.0, 2.0], [], 600.0) == (3000.0, 600.0)
    # Measured: a check (twice the length) in 1,000 s and a run in 600 s make 550 s a run.
    assert runner.seconds_left([1.0, 2.0], [(1000.0, 2.0), (600.0, 1.0)], 99.0) == (1650.0, 550.0)


@pytest.mark.parametrize("study_dir", ["docs/study_results/table1_long",
                                       "docs/study_results/rpn"])
def test_every_column_of_the_committed_reports_is_a_metric_their_runs_logged(study_dir):
    # A column named after a metric no run logs would print "—" in every row.
    with open(os.path.join(ROOT, study_dir, "study.json")) as f:
        content = json.load(f)
    finished = [r for r in content["runs"].values() if r["status"] == "finished"]
    assert finished
    for name in content["studies"]:
        for table in studies.STUDIES[name].tables(False):
            variants = {row.variant for row in table.rows}
            for record in finished:
                if record["variant"] in variants:
                    for metric in table.metrics:
                        logged = record["train"] if metric.endswith("_noise") else record["eval"]
                        assert metric in logged, (table.key, metric)
