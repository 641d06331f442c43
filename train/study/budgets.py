"""The headline rows, the alpha-CE rows and the OHEM rows across training budgets: each row's AP at
the end of every schedule length that a set of study workdirs (one a preset) trained, and the
rule's verdicts at each length, FL's central one against the best alpha-CE row at that length and
FL against the best OHEM row there, as `study.md` decides them.

  python -m train.study.budgets --workdirs docs/study_results/table1_short,\
docs/study_results/table1,docs/study_results/table1_long,docs/study_results/table1_xlong \
      --output docs/study_results/budgets.png

Every point is the end of a whole run, its cosine schedule set to that length, so the rows'
orderings at each budget are the study's verdicts at a fixed budget, and the lengths between them
show whether an ordering hinges on where training stopped. A schedule check's run (variant
`X_2x`) is `X` at twice its preset's steps and enters `X`'s row at that length; a run found in two
workdirs (a check copied in as the next preset's seed 0: the same variant, length and seed)
counts once, and must have the same AP in both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

from train import cli
from train.study import runs as runs_lib
from train.study import studies as studies_lib
from train.study import verdicts
from train.study.grid import StudyError

# The alpha-CE rows of Table 1a and the OHEM rows of Table 1d: variant -> label.
ALPHA_CE = {studies_lib.alpha_ce(a).name: f"alpha-CE, alpha {a:g}"
            for a in studies_lib.TABLE1A_ALPHAS}
OHEM = {v.name: studies_lib.ohem_label(v) for v in studies_lib.OHEM_VARIANTS}
# The rows of README's budget table: variant -> label; the headline rows, every alpha-CE row and
# every OHEM row.
ROWS = {
    studies_lib.BEST_FOCAL.name: "FL, gamma 2, alpha 0.25",
    **ALPHA_CE,
    **OHEM,
    studies_lib.ce_init(0.01).name: "CE from the prior, SGD",
    studies_lib.ce_init(0.5).name: "CE from a zero bias, SGD",
}
# A family's best row at each length, picked on its seed mean among the family's rows trained to
# that length (as `study.md` picks the rival of FL in Table 1a and 1d): its name in `CLAIMS` ->
# (its label, the family).
BEST_ALPHA_CE = "best alpha-CE"
BEST_OHEM = "best OHEM"
FAMILIES = {BEST_ALPHA_CE: ("the best alpha-CE row", ALPHA_CE),
            BEST_OHEM: ("the best OHEM row", OHEM)}
# The claims decided at each budget: (A, B) for "A > B".
CLAIMS = (
    (studies_lib.BEST_FOCAL.name, BEST_ALPHA_CE),
    (studies_lib.BEST_FOCAL.name, studies_lib.alpha_ce(0.75).name),
    (studies_lib.BEST_FOCAL.name, BEST_OHEM),
    (studies_lib.ce_init(0.01).name, studies_lib.ce_init(0.5).name),
)
_CHECK_SUFFIX = studies_lib.FL_LONG.name[len(studies_lib.BEST_FOCAL.name):]  # "_2x"


@dataclasses.dataclass(frozen=True)
class Budgets:
    """`stats[variant][steps]`: the AP of a variant's seeds at the end of runs of `steps`
    steps; `setting`: the one setting they all trained under."""

    setting: str
    stats: Mapping[str, Mapping[int, verdicts.Stats]]

    @property
    def steps(self) -> list[int]:
        return sorted({s for by_steps in self.stats.values() for s in by_steps})


def collect(workdirs: Sequence[str], variants: Sequence[str] = tuple(ROWS)) -> Budgets:
    """The finished and diverged runs of `variants` in the workdirs' study.json files.

    Raises:
      StudyError: for a workdir without study.json, workdirs of different settings, or one run
        (variant, length, seed) with different results in two workdirs.
    """
    # (setting, variant, steps, seed) -> (where, record)
    runs: dict[tuple[str, str, int, int], tuple[str, dict[str, Any]]] = {}
    for workdir in workdirs:
        path = os.path.join(workdir, "study.json")
        if not os.path.exists(path):
            raise StudyError(f"{path} not found; expected the workdir of a study "
                             "(python -m train.study --workdir DIR writes DIR/study.json)")
        with open(path) as f:
            records = json.load(f)["runs"]
        for key, record in records.items():
            variant = record["variant"].removesuffix(_CHECK_SUFFIX)
            if record["status"] not in ("finished", "diverged") or variant not in variants:
                continue
            record = {**record, "variant": variant}
            run = (record["setting"], variant, int(record["overrides"]["num_train_steps"]),
                   int(record["seed"]))
            where = f"{workdir}: {key}"
            if run in runs and _result(runs[run][1]) != _result(record):
                raise StudyError(f"{where} and {runs[run][0]} are the same run (variant, steps "
                                 f"and seed) with different results; expected a copied run")
            runs.setdefault(run, (where, record))
    settings = sorted({record["setting"] for _, record in runs.values()})
    if len(settings) > 1:
        raise StudyError(f"the workdirs trained different settings ({', '.join(settings)})"
                         "; expected workdirs of one setting")
    setting = settings[0] if settings else ""
    stats: dict[str, dict[int, verdicts.Stats]] = {}
    for variant, steps in sorted({(variant, steps) for _, variant, steps, _ in runs}):
        same_length = {f"{seed}": record for (_, v, s, seed), (_, record) in runs.items()
                       if (v, s) == (variant, steps)}
        stats.setdefault(variant, {})[steps] = runs_lib.variant_stats(
            same_length, setting, variant, verdicts.VERDICT_METRIC)
    return Budgets(setting, stats)


def _result(record: Mapping[str, Any]) -> tuple[str, float | None]:
    return record["status"], (record["eval"] or {}).get(verdicts.VERDICT_METRIC)


def _stats(budgets: Budgets, variant: str | None, steps: int) -> verdicts.Stats:
    return budgets.stats.get(variant, {}).get(steps, verdicts.Stats(()))


def _trained(budgets: Budgets, family: Mapping[str, str], steps: int) -> list[str]:
    return [v for v in family if _stats(budgets, v, steps).scores]


def best_of(budgets: Budgets, family: Mapping[str, str], steps: int) -> str | None:
    """The variant of `family` with the highest seed mean among those trained to `steps`."""
    trained = _trained(budgets, family, steps)
    return max(trained, key=lambda v: _stats(budgets, v, steps).mean) if trained else None


def markdown(budgets: Budgets, labels: Mapping[str, str] = ROWS) -> str:
    """Two tables: each row's AP (seed mean, range and seeds) at each length; each claim's
    verdict at each length (against a family's best row, the cell names it and how many of the
    family's rows reached that length), and whether twice the steps stayed within FL's seed
    noise."""
    steps = budgets.steps
    head = "| | " + " | ".join(f"{s:,} steps" for s in steps) + " |"
    rule = "|---|" + "---:|" * len(steps)
    lines = [f"AP at the end of each run (setting `{budgets.setting}`; seed mean, range and "
             "seeds):", "", head, rule]
    for variant, label in labels.items():
        if variant in budgets.stats:
            cells = [_stats(budgets, variant, s).cell() for s in steps]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Verdicts by the study's rule at each length:", "", head, rule]
    for a, b in CLAIMS:
        if a not in labels or (b not in labels and b not in FAMILIES):
            continue
        cells = []
        for s in steps:
            rival = best_of(budgets, FAMILIES[b][1], s) if b in FAMILIES else b
            first, second = _stats(budgets, a, s), _stats(budgets, rival, s)
            if not first.scores or not second.scores:
                cells.append("—")
                continue
            named = ""
            if b in FAMILIES:
                trained = len(_trained(budgets, FAMILIES[b][1], s))
                named = f"{labels.get(rival, rival)}, the best of {trained} trained: "
            cells.append(f"{verdicts.compare(first, second)} ({named}"
                         f"{verdicts.why(first, second)})")
        rival_label = FAMILIES[b][0] if b in FAMILIES else labels[b]
        lines.append(f"| {labels[a]} > {rival_label} | " + " | ".join(cells) + " |")
    fl = studies_lib.BEST_FOCAL.name
    cells = []
    for s in steps:
        here, twice = _stats(budgets, fl, s), _stats(budgets, fl, 2 * s)
        if not here.scores or not twice.scores:
            cells.append("—")
            continue
        cells.append(f"{verdicts.schedule_compare(here, twice)} ({twice.mean:.3f} at {2 * s:,})")
    lines.append("| converged: FL at twice the steps within its seeds' range widened by it | "
                 + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(budgets: Budgets, path: str, labels: Mapping[str, str] = ROWS) -> None:
    """Left: AP against the run's length (log scale), every seed a dot, the seed mean a line, for
    the rows trained to two lengths or more (a row of one length is in the table only).
    Right: FL's seed mean minus each other plotted row's (zero-bias CE left out: its claim is
    against the prior), the bar the rule's noise where both rows have its seeds (a gap beyond its
    bar is resolved), a hollow marker where they have fewer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = {}
    for variant, label in labels.items():
        by_steps = budgets.stats.get(variant, {})
        steps = [s for s, stats in by_steps.items() if stats.scores]
        if len(steps) < 2:
            continue
        line, = left.plot(steps, [by_steps[s].mean for s in steps], "-", marker="o",
                          label=label)
        colors[variant] = line.get_color()
        for s in steps:
            scores = by_steps[s].scores
            left.plot([s] * len(scores), scores, ".", color=line.get_color(), alpha=0.45)
    left.set_ylabel("AP at the end of the run")
    left.set_title(f"Rows trained to two lengths or more ({budgets.setting}; dots: seeds, "
                   "line: seed mean)", fontsize=9)
    left.legend(fontsize=8, loc="lower right")

    fl = studies_lib.BEST_FOCAL.name
    others = [v for v in colors if v not in (fl, studies_lib.ce_init(0.5).name)]
    for i, variant in enumerate(others):
        offset = 1.0 + 0.03 * (i - (len(others) - 1) / 2)  # Side by side at each length.
        points = [(s, _stats(budgets, fl, s), _stats(budgets, variant, s)) for s in budgets.steps]
        points = [(s, a, b) for s, a, b in points if a.scores and b.scores]
        for s, a, b in points:
            enough = min(a.seeds, b.seeds) >= verdicts.MIN_SEEDS
            noise = max(a.range, b.range) if enough else 0.0
            right.errorbar([s * offset], [a.mean - b.mean], yerr=[[noise], [noise]], fmt="o",
                           capsize=3, color=colors.get(variant),
                           mfc=colors.get(variant) if enough else "none")
        if points:
            right.plot([s * offset for s, _, _ in points],
                       [a.mean - b.mean for _, a, b in points], "-", alpha=0.5,
                       color=colors.get(variant), label=f"FL - {labels[variant]}")
    right.axhline(0.0, color="grey", lw=0.8)
    right.set_ylabel("gap in AP (seed means)")
    right.set_title("FL's lead over each row; bar: the rule's noise (resolved beyond it), "
                    f"hollow: under {verdicts.MIN_SEEDS} seeds", fontsize=9)
    right.legend(fontsize=8, loc="upper right")
    ticks = budgets.steps
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{s:,}" for s in ticks])
        ax.minorticks_off()
        ax.set_xlabel("steps of the run (cosine schedule to that length, 16 images a step)")
        ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Study workdirs (comma-separated), one a preset.")
flags.DEFINE_string("output", None, "Where to write the plot (PNG); none when not given.")
flags.mark_flags_as_required(["workdirs"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    try:
        budgets = collect(FLAGS.workdirs)
    except StudyError as error:
        cli.fail(str(error))
    if not budgets.stats:
        cli.fail(f"no finished run of the headline rows ({', '.join(ROWS)}) in "
                 f"{', '.join(FLAGS.workdirs)}")
    print(markdown(budgets), end="")
    if FLAGS.output:
        plot(budgets, FLAGS.output)
        print(f"\nWrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
