"""Deciding the paper's claims from the runs' seeds, by one stated rule.

THE RULE. A claim "row A scores above row B" is decided on the rows' AP over their seeds (a
seed whose loss became NaN counts as AP 0: it detects nothing). It needs at least `MIN_SEEDS`
seeds in each row. It *holds* when A's seed mean exceeds B's by more than the noise, the larger
of the two rows' seed ranges (max - min); it is *reversed* when B's mean exceeds A's by more than
the noise; otherwise it is *not resolved*. A "best" row is picked on its seed mean. A claim that
two rows are equal (FL* against FL) holds when no difference is resolved.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

MIN_SEEDS = 3
RULE = (
    f"A claim \"A > B\" needs at least {MIN_SEEDS} seeds in each row. It **holds** when A's seed "
    "mean exceeds B's by more than the noise (the larger of the two rows' seed ranges, max - "
    "min), is **reversed** when B's mean exceeds A's by more than the noise, and is otherwise "
    "**not resolved**. A diverged seed counts as AP 0. A best row is picked on its seed mean; a "
    "claim of no difference (FL* against FL) holds when no difference is resolved."
)
HOLDS, REVERSED, NOT_RESOLVED = "holds", "reversed", "not resolved"
VERDICT_METRIC = "AP"


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row: our runs of `variant` beside the paper's `paper` AP (percent) or `note`."""

    label: str
    variant: str
    paper: float | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Stats:
    """A metric over the seeds of a variant: `values` of the finished seeds, `diverged` seeds."""

    values: tuple[float, ...]
    diverged: int = 0

    @property
    def scores(self) -> tuple[float, ...]:
        """What the verdicts compare: the finished seeds' values and 0 for each diverged seed."""
        return self.values + (0.0,) * self.diverged

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.scores)) if self.scores else None

    @property
    def range(self) -> float:
        return float(max(self.scores) - min(self.scores)) if self.scores else math.nan

    @property
    def seeds(self) -> int:
        return len(self.scores)

    def cell(self, digits: int = 3) -> str:
        if not self.scores:
            return "—"
        if not self.values:
            return "diverged" + (f" ({seeds_text(self.diverged)})" if self.diverged > 1 else "")
        text = f"{self.mean:.{digits}f}"
        if self.seeds > 1:
            text += (f" ({min(self.scores):.{digits}f}–{max(self.scores):.{digits}f}, "
                     f"{seeds_text(self.seeds)})")
        if self.diverged:
            text += f", {self.diverged} diverged"
        return text


def seeds_text(count: int) -> str:
    """"1 seed", "3 seeds"."""
    return f"{count} seed{'' if count == 1 else 's'}"


def compare(a: Stats, b: Stats) -> str:
    """The rule's verdict on "a > b": `HOLDS`, `REVERSED` or `NOT_RESOLVED`.

    Examples:
      >>> compare(Stats((0.40, 0.41, 0.42)), Stats((0.30, 0.31, 0.33)))
      'holds'
      >>> compare(Stats((0.40, 0.41, 0.42)), Stats((0.35, 0.41, 0.45)))  # Inside the noise.
      'not resolved'
      >>> compare(Stats((0.40, 0.41)), Stats((0.10, 0.11)))  # Two seeds are too few.
      'not resolved'
    """
    if a.seeds < MIN_SEEDS or b.seeds < MIN_SEEDS:
        return NOT_RESOLVED
    gap = a.mean - b.mean
    noise = max(a.range, b.range)
    if gap > noise:
        return HOLDS
    if -gap > noise:
        return REVERSED
    return NOT_RESOLVED


def why(a: Stats, b: Stats) -> str:
    """What a verdict on "a > b" rests on: the gap and the noise, or the seeds missing."""
    if a.seeds < MIN_SEEDS or b.seeds < MIN_SEEDS:
        return f"{min(a.seeds, b.seeds)} of {MIN_SEEDS} seeds"
    return f"gap {a.mean - b.mean:+.3f}, noise {max(a.range, b.range):.3f}"


def _overall(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == REVERSED for v in verdicts):
        return REVERSED
    return NOT_RESOLVED


def _ap(stats: Mapping[str, Mapping[str, Stats]], row: Row) -> Stats:
    return stats[row.variant][VERDICT_METRIC]


def _best(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row]) -> Row | None:
    """The row with the highest seed mean among those with a finished seed; None if none has."""
    done = [row for row in rows if _ap(stats, row).mean is not None]
    return max(done, key=lambda r: _ap(stats, r).mean) if done else None


def best_row_claim(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row]) -> str:
    """The paper's best row (largest paper AP) against each other row; and which row is best
    here on the seed mean, with its seed count when it has fewer seeds than a verdict needs."""
    compared = [row for row in rows if row.paper is not None]
    paper_best = max(compared, key=lambda r: r.paper)
    pairs = [(row, compare(_ap(stats, paper_best), _ap(stats, row)))
             for row in compared if row is not paper_best]
    top = _best(stats, compared)
    ours = "none finished"
    if top is not None:
        seeds = _ap(stats, top).seeds
        ours = top.label + (f" ({seeds} of {MIN_SEEDS} seeds)" if seeds < MIN_SEEDS else "")
    best = _ap(stats, paper_best)
    details = "; ".join(f"> {row.label}: {verdict} ({why(best, _ap(stats, row))})"
                        for row, verdict in pairs)
    return (f"**Paper's best row ({paper_best.label}) above every other**: "
            f"{_overall([v for _, v in pairs])}. {details}. Best here on the seed mean: {ours}.")


def first_beats_best_of_rest_claim(stats: Mapping[str, Mapping[str, Stats]],
                                   rows: Sequence[Row]) -> str:
    """The first row (FL) against the best of the others on the seed mean (best alpha-CE, best
    OHEM), and against each of them."""
    first, rest = rows[0], rows[1:]
    best = _best(stats, rest)
    if _ap(stats, first).mean is None or best is None:
        return f"**{first.label} above every other row**: {NOT_RESOLVED} (runs missing)."
    headline = compare(_ap(stats, first), _ap(stats, best))
    each = [compare(_ap(stats, first), _ap(stats, row)) for row in rest]
    return (f"**{first.label} above the best other row ({best.label}, picked on its seed "
            f"mean)**: {headline} ({why(_ap(stats, first), _ap(stats, best))}). Against each "
            f"row: {sum(v == HOLDS for v in each)} hold, {sum(v == REVERSED for v in each)} "
            f"reversed, {sum(v == NOT_RESOLVED for v in each)} not resolved.")


def tuned_fl_claim(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row], *,
                   focal_rows: int) -> str:
    """The central claim twice: the first row (the paper's FL) against the best alpha-CE row,
    as `first_beats_best_of_rest_claim`; then the best FL row against the best alpha-CE row,
    each picked on its seed mean, the paper's comparison of the two losses each at its best
    setting. `rows`: the `focal_rows` FL rows, then the alpha-CE rows."""
    focal, alpha_ce = rows[:focal_rows], rows[focal_rows:]
    paper_fl = first_beats_best_of_rest_claim(stats, (focal[0], *alpha_ce))
    best_fl, best_ce = _best(stats, focal), _best(stats, alpha_ce)
    if best_fl is None or best_ce is None:
        return f"{paper_fl} **The best FL row above the best alpha-CE row**: {NOT_RESOLVED} " \
               f"(runs missing)."
    a, b = _ap(stats, best_fl), _ap(stats, best_ce)
    return (f"{paper_fl} **The best FL row above the best alpha-CE row, each picked on its seed "
            f"mean: {best_fl.label} above {best_ce.label}**: {compare(a, b)} ({why(a, b)}).")


def no_difference_claim(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row]) -> str:
    """The paper finds the other rows (FL*) about as good as the first (FL)."""
    first = rows[0]
    parts, verdicts = [], []
    for row in rows[1:]:
        verdict = compare(_ap(stats, row), _ap(stats, first))
        enough = min(_ap(stats, row).seeds, _ap(stats, first).seeds) >= MIN_SEEDS
        same = HOLDS if verdict == NOT_RESOLVED and enough else (
            NOT_RESOLVED if not enough else REVERSED)
        verdicts.append(same)
        parts.append(f"{row.label}: {same} ({why(_ap(stats, row), _ap(stats, first))})")
    return (f"**Paper's finding (no difference between FL* and FL)**: {_overall(verdicts)}. "
            + "; ".join(parts) + ".")


def init_claim(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row]) -> str:
    """Section 3.3, as its two parts. Divergence is an event a seed has or not: "CE from a zero
    bias diverges" holds when every zero-bias seed diverged (and no seed from the prior), is
    reversed when none did, and is otherwise not resolved. "From the prior it trains" (better) is
    the rule on the AP of the two rows (a diverged seed counting as AP 0)."""
    prior, zero = _ap(stats, rows[0]), _ap(stats, rows[1])
    if prior.seeds < MIN_SEEDS or zero.seeds < MIN_SEEDS:
        return (f"**Paper's finding ({PAPER_INIT_SHORT})**: {NOT_RESOLVED} "
                f"({min(prior.seeds, zero.seeds)} of {MIN_SEEDS} seeds).")
    if zero.diverged == zero.seeds and not prior.diverged:
        divergence = HOLDS
    elif not zero.diverged:
        divergence = REVERSED
    else:
        divergence = NOT_RESOLVED
    return (f"**Paper's finding ({PAPER_INIT_SHORT})**: a zero bias diverges: {divergence} "
            f"({zero.diverged} of {zero.seeds} zero-bias seeds diverged, {prior.diverged} of "
            f"{prior.seeds} from the prior); {rows[0].label} above {rows[1].label}: "
            f"{compare(prior, zero)} ({why(prior, zero)}).")


PAPER_INIT_SHORT = "CE from a zero bias diverges, from the prior it trains"


def rpn_claim(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row]) -> str:
    """FL-RPN: focal above sampled; softmax above sigmoid (with Detectron's alpha the 2-way
    softmax focal loss is the sigmoid one on the logit difference: the two compare
    parameterisations of one loss); the shared-alpha softmax beside them."""
    by_name = {row.label: _ap(stats, row) for row in rows}
    pairs = [("focal_sigmoid", "sampled"), ("focal_softmax", "sampled"),
             ("focal_sigmoid", "ce_all"), ("focal_softmax", "focal_sigmoid"),
             ("focal_softmax_shared", "focal_softmax")]
    parts = [f"{a} > {b}: {compare(by_name[a], by_name[b])} ({why(by_name[a], by_name[b])})"
             for a, b in pairs if a in by_name and b in by_name]
    return "**FL-RPN's findings**: " + "; ".join(parts) + "."


def schedule_verdict(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row]) -> str:
    """Whether the preset's length converged: `schedule_compare` of the preset's row
    (`rows[0]`) and the row at twice the steps (`rows[1]`)."""
    return schedule_compare(_ap(stats, rows[0]), _ap(stats, rows[1]))


def schedule_compare(base: Stats, long: Stats) -> str:
    """`HOLDS` when the run at twice the steps (`long`, one seed) lies within the preset's seeds'
    range (`base`, `MIN_SEEDS` seeds at least) widened by that range on each side, `REVERSED`
    when it lies outside, otherwise `NOT_RESOLVED`."""
    if base.mean is None or long.mean is None or base.seeds < MIN_SEEDS:
        return NOT_RESOLVED  # One or two seeds give no range to judge the gap by.
    inside = min(base.scores) - base.range <= long.mean <= max(base.scores) + base.range
    return HOLDS if inside else REVERSED


def convergence(check_verdicts: Sequence[str]) -> str:
    """Whether a study's runs converged, from its schedule checks' verdicts: `HOLDS` when every
    check holds, `REVERSED` when one is reversed, otherwise (none, or one not resolved)
    `NOT_RESOLVED`."""
    if check_verdicts and all(v == HOLDS for v in check_verdicts):
        return HOLDS
    return REVERSED if REVERSED in check_verdicts else NOT_RESOLVED


def schedule_claim(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row]) -> str:
    """Whether twice the steps (one seed) moves AP beyond the preset's seeds' range."""
    base, long = _ap(stats, rows[0]), _ap(stats, rows[1])
    if base.mean is None or long.mean is None:
        return f"**Converged at the preset's length**: {NOT_RESOLVED} (runs missing)."
    low, high = min(base.scores), max(base.scores)
    verdict = schedule_verdict(stats, rows)
    if base.seeds < MIN_SEEDS:
        verdict = f"{NOT_RESOLVED} ({base.seeds} of {MIN_SEEDS} seeds of the preset's row)"
    return (f"**Converged at the preset's length**: {verdict}: twice the steps gives AP "
            f"{long.mean:.3f} against {base.mean:.3f} ({low:.3f}-{high:.3f} over "
            f"{seeds_text(base.seeds)}); "
            f"it holds when the longer run lies within the preset's seeds' range ({MIN_SEEDS} "
            "seeds at least) widened by that range on each side.")


def no_claim(stats: Mapping[str, Mapping[str, Stats]], rows: Sequence[Row]) -> str:
    del stats, rows
    return "One seed a row: no verdict (the rows that enter a verdict are in the tables above)."


FIGURE4_POINTS = ("hardest_10%", "hardest_1%")


def figure4_claim(figure4: Mapping[str, object], gammas: Sequence[float]) -> str:
    """Figure 4: as gamma grows, the negatives' loss concentrates on their hardest few, far more
    than the positives' does. Read at two points of the curves (the share of the loss carried by
    the hardest 10% and the hardest 1%): at each, the negatives' share must rise with gamma and
    rise more than the positives' share moves. Holds when both points agree, reversed when
    neither does, otherwise not resolved (the answer depends on where the curve is read: a share
    near 1 at gamma 0 has little room to rise)."""
    by_gamma = figure4["gammas"]
    parts, agrees = [], []
    for point in FIGURE4_POINTS:
        neg = [by_gamma[f"{g:g}"]["negative"][point] for g in gammas]
        pos = [by_gamma[f"{g:g}"]["positive"][point] for g in gammas]
        rising = all(b >= a for a, b in zip(neg, neg[1:], strict=False))
        agrees.append(rising and (neg[-1] - neg[0]) > abs(pos[-1] - pos[0]))
        share = point.replace("_", " ")
        parts.append(
            f"the {share} of negatives carry {neg[0]:.2f} of the negatives' loss at gamma "
            f"{gammas[0]:g} and {neg[-1]:.2f} at gamma {gammas[-1]:g}"
            f"{' (rising with gamma)' if rising else ' (not rising)'}, the {share} of positives "
            f"{pos[0]:.2f} and {pos[-1]:.2f}")
    verdict = HOLDS if all(agrees) else REVERSED if not any(agrees) else NOT_RESOLVED
    return (f"**Paper's finding**: {verdict}: " + "; ".join(parts)
            + " (one model: a description, no seeds).")
