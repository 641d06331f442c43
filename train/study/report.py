"""The report: study.md (the regime, the tables beside the paper's, each claim's verdict by the
rule of `verdicts`), and the plots (Table 1, AP against step, Figure 4, the RPN losses)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from train.study import runs as runs_lib
from train.study import studies as studies_lib
from train.study import verdicts
from train.study.grid import Run

# The rows of the AP-against-step plot: label -> the variants it may pick from (the best on the
# seed mean when several).
CURVE_ROWS = {
    "FL (gamma 2, alpha 0.25)": (studies_lib.BEST_FOCAL.name,),
    "FL, twice the steps": (studies_lib.FL_LONG.name,),
    "best alpha-CE": tuple(studies_lib.alpha_ce(a).name for a in studies_lib.TABLE1A_ALPHAS),
    "best OHEM": tuple(v.name for v in studies_lib.OHEM_VARIANTS),
    "CE (alpha-CE, alpha 0.5)": (studies_lib.alpha_ce(0.5).name,),
    "CE from the prior, SGD": (studies_lib.ce_init(0.01).name,),
    "CE from a zero bias, SGD": (studies_lib.ce_init(0.5).name,),
}

# The preset's label in study.md, from the verdict of the study's schedule checks.
_RANKS_HOW_FAR = "its orderings rank how far each loss got in this schedule, not where it ends"
CONVERGENCE_LABELS = {
    verdicts.HOLDS: "converged: twice the steps stayed within the seeds' noise in every schedule "
                    "check below",
    verdicts.REVERSED: f"**NOT CONVERGED: twice the steps moved AP beyond the seeds' noise in "
                       f"a schedule check below; {_RANKS_HOW_FAR}**",
    verdicts.NOT_RESOLVED: f"**NOT SHOWN CONVERGED: no schedule check below has resolved it; "
                           f"{_RANKS_HOW_FAR}**",
}


def build_report(
    grid: Sequence[Run],
    records: Mapping[str, Mapping[str, Any]],
    studies: Sequence[str],
    *,
    full_grid: bool,
    settings: Mapping[str, Mapping[str, Any]],
    figure4: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The tables of `studies` from the runs' `records`: each row's `Stats` per metric as
    cells, and each table's verdict line."""
    tables = {}
    for name in studies:
        detector = studies_lib.STUDIES[name].detector
        setting = next((r.setting for r in grid if r.detector == detector), None)
        for table in studies_lib.STUDIES[name].tables(full_grid):
            stats = {row.variant: {m: runs_lib.variant_stats(records, setting, row.variant, m)
                                   for m in table.metrics} for row in table.rows}
            tables[table.key] = {
                "title": table.title, "source": table.source, "setting": setting,
                "metrics": list(table.metrics),
                "rows": [{"label": row.label, "variant": row.variant,
                          "ours": {m: {"mean": stats[row.variant][m].mean,
                                       "values": list(stats[row.variant][m].values),
                                       "diverged": stats[row.variant][m].diverged,
                                       "cell": stats[row.variant][m].cell()}
                                   for m in table.metrics},
                          "paper": row.paper, "paper_note": row.note} for row in table.rows],
                "claim": table.claim(stats, table.rows),
            }
            if table.schedule_check:
                tables[table.key]["schedule_verdict"] = verdicts.schedule_verdict(stats,
                                                                                  table.rows)
    if figure4 is not None:
        tables["figure4"] = {"title": "Figure 4",
                             "claim": verdicts.figure4_claim(figure4, studies_lib.FIGURE4_GAMMAS)}
    converged = verdicts.convergence([t["schedule_verdict"] for t in tables.values()
                                      if "schedule_verdict" in t])
    return {"tables": tables, "converged": converged, "settings": dict(settings),
            "seed_rows": seed_rows(grid, records, tables), "curves": ap_curves(grid, records)}


def seed_rows(grid: Sequence[Run], records: Mapping[str, Mapping[str, Any]],
              tables: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every variant of the `tables` (as `build_report` makes them) once, with the verdict
    metric at the end of each of its runs, by seed: a value, "diverged", or None while the run
    has not ended. The rows come in the order of the widest tables first, and a variant's label
    and paper AP are those of the widest table that has it (the central claim's table gives the
    FL and alpha-CE rows theirs)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for table in sorted((t for t in tables.values() if "rows" in t),
                        key=lambda t: -len(t["rows"])):
        for row in table["rows"]:
            key = (table["setting"], row["variant"])
            if key in rows:
                continue
            values = {}
            for run in grid:
                if (run.setting, run.variant) == key:
                    record = records[run.key]
                    values[run.seed] = (record["eval"][verdicts.VERDICT_METRIC]
                                        if record["status"] == "finished" else
                                        "diverged" if record["status"] == "diverged" else None)
            rows[key] = {"label": row["label"], "variant": row["variant"],
                         "setting": table["setting"], "values": values,
                         "paper": row["paper"], "paper_note": row["paper_note"]}
    return list(rows.values())


def ap_curves(grid: Sequence[Run], records: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, dict[str, Any]]:
    """For each row of `CURVE_ROWS` that has finished runs: its variant (the best on the seed
    mean's final AP) and AP / AP@0.05 against the step, mean and range over its seeds."""
    curves = {}
    for label, candidates in CURVE_ROWS.items():
        finished = {}
        for variant in candidates:
            runs = [records[r.key] for r in grid
                    if r.variant == variant and records[r.key]["status"] == "finished"]
            if runs:
                finished[variant] = runs
        if not finished:
            continue
        variant = max(finished, key=lambda v: np.mean([r["eval"]["AP"] for r in finished[v]]))
        points = {}
        for metric in ("AP", "AP@0.05"):
            steps = sorted({int(s) for r in finished[variant] for s in r["curve"]})
            rows = []
            for step in steps:
                values = [r["curve"][str(step)][metric] for r in finished[variant]
                          if str(step) in r["curve"] and r["curve"][str(step)].get(metric)
                          is not None]
                if values:
                    rows.append([step, float(np.mean(values)), float(min(values)),
                                 float(max(values))])
            points[metric] = rows
        curves[label] = {"variant": variant, "seeds": len(finished[variant]), **points}
    return curves


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def render_markdown(report: Mapping[str, Any], header: Mapping[str, Any],
                    figure4: Mapping[str, Any] | None,
                    timings: Mapping[tuple[str, int], tuple[float, bool]],
                    lost: Mapping[str, float] | None = None) -> str:
    """study.md; `timings` holds `runs.ended_seconds` of each ended run, by (setting/variant,
    seed), and `lost` the `runs.lost_seconds` of each run that has some, by run key."""
    studies = [studies_lib.STUDIES[name] for name in header["studies"]]
    sources = "; ".join(dict.fromkeys(study.paper_source for study in studies))
    regimes = "; ".join(dict.fromkeys(study.paper_regime for study in studies))
    lines = [
        f"# Study: {', '.join(header['studies'])}", "",
        f"Preset `{header['preset']}` ({CONVERGENCE_LABELS[report['converged']]}), "
        f"{verdicts.seeds_text(header['seeds'])} a row, base configs "
        f"{', '.join(f'`{b}`' for b in header['base_configs'])}. Paper numbers: "
        f"{sources} (AP in percent; ours in [0, 1] on our data, so compare "
        "orderings, not values). Cells: mean (min–max, seeds). AP is at score >= 0.001, AP@0.05 "
        "over the detections scoring >= 0.05 (the paper's inference threshold).", "",
        f"**Verdict rule.** {verdicts.RULE}", "",
        "## The regime each setting trains under", "",
        "| setting | data | image | anchors / image | positives / image | fg:bg | objects with "
        "an anchor at IoU >= 0.5 | positive only by low-quality match | best single-pixel "
        "threshold (balanced accuracy) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setting, figures in report["settings"].items():
        hardness = figures.get("pixel_threshold_accuracy")
        best_pixel = (f"{hardness['best']:.3f} ({hardness['best_statistic']})"
                      if hardness else "— (needs pixel masks)")
        ratio = figures.get("negatives_per_positive")
        lines.append(
            f"| {setting} | {figures['dataset']} | {figures['image_size'][0]}x"
            f"{figures['image_size'][1]} | {figures['anchors_per_image']} | "
            f"{figures['positives_per_image']:.1f} | "
            + (f"1:{ratio:.0f}" if ratio else "—")
            + f" | {_percent(figures['objects_with_anchor_iou_0.5'])} | "
            f"{_percent(figures['objects_positive_only_by_low_quality_match'])} | {best_pixel} |")
    images = max((f["images"] for f in report["settings"].values()), default=0)
    lines += ["", f"Measured on the first {images} "
              "evaluation images with the detector's anchors and matcher (positives: IoU >= its "
              f"foreground threshold, plus each object's best anchors). At the paper's scale: "
              f"{regimes}.", ""]
    if figure4 is not None and figure4.get("negatives_above_0.05") is not None:
        lines += [f"At the end of training, {_percent(figure4['negatives_above_0.05'])} of the "
                  f"negative anchors of `{figure4['run']}` still score above 0.05 on some class "
                  f"({figure4['num_images']} evaluation images).", ""]
    for key, table in report["tables"].items():
        if key == "figure4":
            continue
        metrics = table["metrics"]
        lines += [f"## {table['title']}", "",
                  f"Setting `{table['setting']}`. Paper: {table['source']}.", "",
                  "| run | " + " | ".join(f"ours {m}" for m in metrics) + " | paper AP |",
                  "|---|" + "---:|" * (len(metrics) + 1)]
        for row in table["rows"]:
            lines.append(f"| {row['label']} (`{row['variant']}`) | "
                         + " | ".join(row["ours"][m]["cell"] for m in metrics)
                         + f" | {_paper_cell(row)} |")
        lines += ["", table["claim"], ""]
    if report["seed_rows"]:
        lines += seed_table(report["seed_rows"])
    if report["curves"]:
        lines += ["## AP against step (`ap_vs_step.png`)", "",
                  "| row | variant | seeds | AP (seed mean) at each evaluation, step: AP |",
                  "|---|---|---:|---|"]
        for label, curve in report["curves"].items():  # Rows differ in steps (the 2x check).
            lines.append(f"| {label} | `{curve['variant']}` | {curve['seeds']} | "
                         + ", ".join(f"{int(p[0]):,}: {p[1]:.3f}" for p in curve["AP"]) + " |")
        lines.append("")
    if figure4 is not None:
        lines += ["## Figure 4: cumulative normalised loss (`figure4.png`)", "",
                  f"Run `{figure4['run']}` at the end of its schedule, {figure4['num_images']} "
                  f"evaluation images: {figure4['num_positives']} positive and "
                  f"{figure4['num_negatives']} negative anchors; a positive is scored on its "
                  f"ground-truth class's term. Paper: {studies_lib.PAPER_FIGURE4}.", "",
                  "| gamma | positives: loss of the hardest 10% | hardest 1% | "
                  "negatives: hardest 10% | hardest 1% |", "|---:|---:|---:|---:|---:|"]
        for gamma, groups in figure4["gammas"].items():
            pos, neg = groups["positive"], groups["negative"]
            lines.append(f"| {gamma} | {pos['hardest_10%']:.3f} | {pos['hardest_1%']:.3f} | "
                         f"{neg['hardest_10%']:.3f} | {neg['hardest_1%']:.3f} |")
        lines += ["", report["tables"]["figure4"]["claim"], ""]
    if timings or lost:
        lines += _time_section(timings, lost or {})
    return "\n".join(lines)


def _paper_cell(row: Mapping[str, Any]) -> str:
    paper = f"{row['paper']:.1f}" if row["paper"] is not None else ""
    return " ".join(p for p in (paper, row["paper_note"]) if p) or "—"


def seed_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """study.md's section of every run, seed by seed, from `seed_rows`: a seed's cell is its
    run's final AP ("diverged", "—" while it has not ended, empty where the row has no such seed),
    then the seed mean and range (a diverged seed counts 0, as in the verdicts) once every seed
    has ended, or the mean so far and how many seeds it covers."""
    seeds = sorted({seed for row in rows for seed in row["values"]})
    settings = sorted({row["setting"] for row in rows})
    lines = ["## Every run, seed by seed", "",
             f"{verdicts.VERDICT_METRIC} at the end of each run (setting "
             f"{', '.join(f'`{s}`' for s in settings)}); the mean (range) is over the row's "
             "seeds, bold once all have ended, a diverged seed counting 0 as in the verdicts.", "",
             "| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (range) | paper AP |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for row in rows:
        values = row["values"]
        cells = []
        for seed in seeds:
            value = values.get(seed, "")
            cells.append("—" if value is None else value if isinstance(value, str)
                         else f"{value:.3f}")
        ended = [0.0 if v == "diverged" else v for v in values.values() if v is not None]
        if not ended:
            mean = "—"
        elif len(ended) < len(values):
            mean = f"{np.mean(ended):.3f} ({len(ended)} of {verdicts.seeds_text(len(values))})"
        elif len(ended) == 1:
            mean = f"**{ended[0]:.3f}** (1 seed)"
        else:
            mean = f"**{np.mean(ended):.3f}** ({max(ended) - min(ended):.3f})"
        lines.append(f"| {row['label']} (`{row['variant']}`) | " + " | ".join(cells)
                     + f" | {mean} | {_paper_cell(row)} |")
    return lines + [""]


def _time_section(timings: Mapping[tuple[str, int], tuple[float, bool]],
                  lost: Mapping[str, float]) -> list[str]:
    seeds = sorted({seed for _, seed in timings})
    variants = list(dict.fromkeys(variant for variant, _ in sorted(timings)))
    total = sum(seconds for seconds, _ in timings.values())
    partial = any(not complete for _, complete in timings.values())
    lines = ["## Time", "",
             f"{_count(len(timings), 'run')} ended, {total / 3600:.1f} h in all"
             f"{' at least' if partial else ''}: the wall-clock each run recorded, its "
             "evaluations included, over every segment of a resumed run (a segment cut off "
             "without warning, the machine going down, up to its last minute; before 2026-12-06 "
             "not at all). Minutes"
             + (f"; >= marks a run ended before the study kept `{runs_lib.TIME_FILE}`, which "
                "recorded its last segment only:" if partial else ":"), "",
             "| run | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---:|" * len(seeds)]
    for variant in variants:
        cells = []
        for seed in seeds:
            seconds, complete = timings.get((variant, seed), (None, True))
            cells.append("—" if seconds is None
                         else f"{'' if complete else '>= '}{seconds / 60:.1f}")
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    if lost:
        runs = ", ".join(f"`{key}` {seconds / 60:.1f}" for key, seconds in sorted(lost.items()))
        lines += ["", f"Not in these minutes: {sum(lost.values()) / 60:.0f} min trained in "
                  "segments whose checkpoints were lost (not committed; a new machine), after "
                  "which the run started over from step 0 "
                  f"(`{runs_lib.LOST_DIR}/` in its directory): {runs}."]
    return lines + [""]


def _save(figure, path: str, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    """Lays the axes out within `rect` (figure fractions) and writes the figure to `path`."""
    figure.tight_layout(rect=rect)
    figure.savefig(path, dpi=120)
    _pyplot().close(figure)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_table1(report: Mapping[str, Any], path: str) -> bool:
    """AP against alpha (Table 1a) and gamma (Table 1b), ours (seed mean and range) and the
    paper's."""
    panels = [(k, x) for k, x in (("table1a", "alpha"), ("table1b", "gamma"))
              if k in report["tables"]]
    if not panels:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels, strict=True):
        table = report["tables"][key]
        xs = [float(row["label"].split(",")[0].split()[1]) for row in table["rows"]]
        points = [(x, row["ours"]["AP"]) for x, row in zip(xs, table["rows"], strict=True)
                  if row["ours"]["AP"]["mean"] is not None]
        if points:
            x = [p[0] for p in points]
            mean = [p[1]["mean"] for p in points]
            scores = [p[1]["values"] + [0.0] * p[1]["diverged"] for p in points]
            low = [m - min(v) for m, v in zip(mean, scores, strict=True)]
            high = [max(v) - m for m, v in zip(mean, scores, strict=True)]
            ax.errorbar(x, mean, yerr=[low, high], fmt="o-", capsize=3,
                        label="ours (AP, seed mean and range; left axis)")
        ax.set_xlabel(name)
        ax.set_ylabel("our AP")
        ax.set_title(table["title"], fontsize=9)
        twin = ax.twinx()
        twin.plot(xs, [row["paper"] for row in table["rows"]], "s--", color="grey",
                  label="paper (AP %, right axis)")
        twin.set_ylabel("paper AP (%)")
        handles = {}  # One legend under the panels, which share their two series.
        for each in (ax, twin):
            handles.update(zip(*reversed(each.get_legend_handles_labels()), strict=True))
    figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=2, fontsize=8)
    _save(figure, path, rect=(0, 0.07, 1, 1))
    return True


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def plot_ap_vs_step(report: Mapping[str, Any], path: str) -> bool:
    """AP and AP@0.05 against the step for FL, the best alpha-CE, the best OHEM and CE: seed
    mean, with the seeds' range shaded."""
    curves = report["curves"]
    if not curves:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, metric in zip(axes, ("AP", "AP@0.05"), strict=True):
        for label, curve in curves.items():
            points = np.asarray(curve[metric], np.float64).reshape(-1, 4)
            if not len(points):
                continue
            line, = ax.plot(points[:, 0], points[:, 1], "o-",
                            label=f"{label}: {curve['variant']} "
                                  f"({_count(curve['seeds'], 'seed')})")
            ax.fill_between(points[:, 0], points[:, 2], points[:, 3], alpha=0.2,
                            color=line.get_color())
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} against step", fontsize=9)
        ax.grid(alpha=0.3)
    # One legend for both panels, beneath them, where no curve runs.
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    _save(figure, path, rect=(0, 0.01 + 0.04 * ((len(labels) + 1) // 2), 1, 1))
    return True


def plot_figure4(figure4: Mapping[str, Any], path: str) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, group, title in zip(axes, ("positive", "negative"),
                                ("positive samples", "negative samples"), strict=True):
        for gamma, groups in figure4["gammas"].items():
            curve = groups[group]["curve"]
            ax.plot(np.linspace(0, 1, len(curve)), curve, label=f"gamma = {gamma}")
        ax.set_xlabel(f"fraction of {group} anchors (sorted by loss)")
        ax.set_ylabel("cumulative normalized loss")
        ax.set_title(f"Cumulative loss of {title} ({figure4['run']})", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(figure, path)


def plot_rpn_losses(grid: Sequence[Run], runs_dir: str, path: str) -> bool:
    """train/loss_rpn_cls and train/loss_rpn_box against the step, one line per RPN run."""
    series = []
    for run in grid:
        if run.detector != "faster_rcnn":
            continue
        records, _ = runs_lib.read_metrics(os.path.join(runs_dir, run.key))
        if records:
            series.append((run.name, records))
    if not series:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, term in zip(axes, ("rpn_cls", "rpn_box"), strict=True):
        for name, records in series:
            steps = [s for s, r in records.items() if f"train/loss_{term}" in r]
            ax.plot(steps, [records[s][f"train/loss_{term}"] for s in steps], label=name, lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"train/loss_{term}")
        ax.legend(fontsize=7)
    _save(figure, path)
    return True
