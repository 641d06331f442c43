"""The study across training budgets (`train.study.budgets`): the runs it gathers from several
workdirs (a schedule check at twice the steps, a copied run counted once), its cells and
verdicts against hand-computed ones, its errors, and README's tables against the committed
studies."""

from __future__ import annotations

import json
import os
import re

import pytest

from train.study import budgets
from train.study.grid import StudyError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMITTED = [os.path.join(ROOT, "docs", "study_results", name)
             for name in ("table1_short", "table1", "table1_long", "table1_xlong")]


def _record(variant, seed, steps, ap, status="finished", setting="paper_regime"):
    return {"setting": setting, "variant": variant, "seed": seed, "status": status,
            "overrides": {"num_train_steps": steps, "seed": seed},
            "eval": {"AP": ap} if status == "finished" else None}


def _workdir(tmp_path, name, records):
    workdir = tmp_path / name
    workdir.mkdir()
    runs = {f"{r['setting']}/{r['variant']}_s{r['seed']}": r for r in records}
    (workdir / "study.json").write_text(json.dumps({"runs": runs}))
    return str(workdir)


def _two_presets(tmp_path, copied_ap=0.60):
    short = _workdir(tmp_path, "short", [
        _record("focal_g2_a0.25", 0, 100, 0.50), _record("focal_g2_a0.25", 1, 100, 0.52),
        _record("focal_g2_a0.25", 2, 100, 0.54),
        _record("alpha_ce_a0.75", 0, 100, 0.40), _record("alpha_ce_a0.75", 1, 100, 0.41),
        _record("alpha_ce_a0.75", 2, 100, 0.42),
        _record("alpha_ce_a0.5", 0, 100, 0.44), _record("alpha_ce_a0.5", 1, 100, 0.45),
        _record("alpha_ce_a0.5", 2, 100, 0.46),
        _record("focal_g2_a0.25_2x", 0, 200, 0.60),
        _record("ce_bias0_sgd", 0, 100, None, status="diverged"),
        _record("ohem_x5_nms0.5_1to3", 0, 100, 0.40), _record("ohem_x5_nms0.5_1to3", 1, 100, 0.42),
        _record("ohem_x5_nms0.5_1to3", 2, 100, 0.44),
        _record("ohem_x1.3_nms0.5", 0, 100, 0.30), _record("ohem_x1.3_nms0.5", 1, 100, 0.31),
        _record("ohem_x1.3_nms0.5", 2, 100, 0.32),
        _record("flstar_g2_b1", 0, 100, 0.9),  # Not a row of the budget tables.
        _record("alpha_ce_a0.75", 3, 100, None, status="pending"),
    ])
    long = _workdir(tmp_path, "long", [
        _record("focal_g2_a0.25", 0, 200, copied_ap),  # The check, copied in as seed 0.
        _record("focal_g2_a0.25", 1, 200, 0.64),
        _record("alpha_ce_a0.75", 0, 200, 0.66),
    ])
    return [short, long]


def test_runs_are_gathered_by_length_with_the_check_at_twice_and_copies_once(tmp_path):
    gathered = budgets.collect(_two_presets(tmp_path))
    assert gathered.setting == "paper_regime" and gathered.steps == [100, 200]
    fl = gathered.stats["focal_g2_a0.25"]
    assert fl[100].values == pytest.approx((0.50, 0.52, 0.54))
    assert fl[200].values == pytest.approx((0.60, 0.64))  # Seed 0 once, from either workdir.
    assert gathered.stats["ce_bias0_sgd"][100].diverged == 1
    assert "flstar_g2_b1" not in gathered.stats
    assert gathered.stats["alpha_ce_a0.75"][100].seeds == 3  # The pending seed is left out.


def test_the_tables_cells_and_verdicts_match_hand_computed_ones(tmp_path):
    text = budgets.markdown(budgets.collect(_two_presets(tmp_path)))
    assert "| | 100 steps | 200 steps |" in text
    assert "| FL, gamma 2, alpha 0.25 | 0.520 (0.500–0.540, 3 seeds) | 0.620 (0.600–0.640, " \
           "2 seeds) |" in text
    assert "| CE from a zero bias, SGD | diverged | — |" in text
    assert "| alpha-CE, alpha 0.5 | 0.450 (0.440–0.460, 3 seeds) | — |" in text
    assert "| OHEM, 1.3 per positive, NMS 0.5 | 0.310 (0.300–0.320, 3 seeds) | — |" in text
    assert "| OHEM 1:3, 5 per positive, NMS 0.5 | 0.420 (0.400–0.440, 3 seeds) | — |" in text
    assert "OHEM, 5 per positive" not in text  # Rows with no run are left out.
    # The best alpha-CE row at each length, on its seed mean: alpha 0.5 (0.45) at 100 steps, where
    # FL leads by 0.07 against a noise of max(0.04, 0.02); alpha 0.75, the only one, at 200.
    assert "| FL, gamma 2, alpha 0.25 > the best alpha-CE row | holds (alpha-CE, alpha 0.5, the " \
           "best of 2 trained: gap +0.070, noise 0.040) | not resolved (alpha-CE, alpha 0.75, " \
           "the best of 1 trained: 1 of 3 seeds) |" in text
    # FL 0.52 against alpha-CE 0.41: gap 0.11, noise max(0.04, 0.02) = 0.04.
    assert "| FL, gamma 2, alpha 0.25 > alpha-CE, alpha 0.75 | holds (gap +0.110, noise " \
           "0.040) | not resolved (1 of 3 seeds) |" in text
    # The best OHEM row at 100 steps is 1:3 (0.42 against 0.31): FL leads it by 0.10 against a
    # noise of max(0.04, 0.04); no OHEM row at 200.
    assert "| FL, gamma 2, alpha 0.25 > the best OHEM row | holds (OHEM 1:3, 5 per positive, " \
           "NMS 0.5, the best of 2 trained: gap +0.100, noise 0.040) | — |" in text
    # Twice the steps (0.62 mean of 0.60 and 0.64) lies outside 0.50-0.54 widened by 0.04.
    assert "| converged: FL at twice the steps within its seeds' range widened by it | " \
           "reversed (0.620 at 200) | — |" in text
    plot = tmp_path / "budgets.png"
    budgets.plot(budgets.collect([str(tmp_path / "short"), str(tmp_path / "long")]), str(plot))
    assert plot.stat().st_size > 0


def test_a_copy_with_another_result_and_mixed_settings_are_refused(tmp_path):
    with pytest.raises(StudyError, match=r"long: paper_regime/focal_g2_a0.25_s0 and .*short: "
                                         r"paper_regime/focal_g2_a0.25_2x_s0 are the same run"):
        budgets.collect(_two_presets(tmp_path, copied_ap=0.61))
    other = _workdir(tmp_path, "other", [_record("focal_g2_a0.25", 0, 100, 0.5, setting="base")])
    mine = _workdir(tmp_path, "mine", [_record("focal_g2_a0.25", 0, 100, 0.5)])
    with pytest.raises(StudyError, match=r"different settings \(base, paper_regime\)"):
        budgets.collect([other, mine])
    with pytest.raises(StudyError, match="nowhere/study.json not found; expected the workdir"):
        budgets.collect([str(tmp_path / "nowhere")])


def test_readmes_budget_tables_are_the_committed_studies():
    text = budgets.markdown(budgets.collect(COMMITTED))
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    missing = [line for line in text.splitlines() if line.startswith("|") and line not in readme]
    assert not missing, ("README's budget tables differ from `python -m train.study.budgets` "
                         f"on the committed studies; rerun it and paste: {missing}")


def test_readmes_per_seed_table_of_xlong_is_the_committed_runs():
    # README's copy of study.md's table of every run, seed by seed, checked against the runs
    # themselves: each row names its variant in backticks; a seed's cell is that run's final AP,
    # "diverged" (counting AP 0), "—" while it has not ended, empty where the row has no such seed
    # (the 2x check); the mean and range are over the seeds once all three have ended.
    study_dir = os.path.join(ROOT, "docs", "study_results", "table1_xlong")
    with open(os.path.join(study_dir, "study.json")) as f:
        runs = json.load(f)["runs"]
    with open(os.path.join(study_dir, "study.md")) as f:
        study_md = f.read()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    header = "| run | seed 0 | seed 1 | seed 2 | mean (range) | paper AP |"
    assert readme.count(header) == 1

    def table(text, start):
        start = text.index(header, start)
        return text[start:text.index("\n\n", start)]

    copied = table(readme, 0)
    assert copied == table(study_md, study_md.index("## Every run, seed by seed")), (
        "README's per-seed table differs from study.md's; copy it over")
    rows = copied.splitlines()[2:]
    assert len(rows) >= 10
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        variant = re.search(r"\(`([a-z0-9_.]+)`\)$", cells[0]).group(1)
        aps = []
        for seed, cell in enumerate(cells[1:4]):
            record = runs.get(f"paper_regime/{variant}_s{seed}")
            if record is None:
                assert cell == "", (variant, seed, cell)
            elif record["status"] == "finished":
                aps.append(record["eval"]["AP"])
                assert cell == f"{aps[-1]:.3f}", (variant, seed, cell)
            elif record["status"] == "diverged":
                aps.append(0.0)
                assert cell == "diverged", (variant, seed, cell)
            else:
                assert cell == "—", (variant, seed, cell)
        if len(aps) == 3:
            mean_and_range = f"**{sum(aps) / 3:.3f}** ({max(aps) - min(aps):.3f})"
            assert cells[4] == mean_and_range, (variant, cells[4])
