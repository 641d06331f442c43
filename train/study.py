r"""The paper's study with one command: RetinaNet Table 1, Figure 4 and the FL-RPN comparison.

  python -m train.study --study table1,figure4 --workdir runs/study          # quick preset
  python -m train.study --study rpn --workdir runs/study_rpn
  python -m train.study --study table1 --workdir runs/study_full --preset full --full_grid

Every run of a study's grid is one `train.train.train_and_evaluate` of the base config with a few
fields overridden (the loss, its hyper-parameters, the seed, the schedule of the preset, the
setting's data and anchors), in its own sub-workdir `DIR/runs/SETTING/RUN`. Running the command
again skips the finished runs (`study_result.json`, written atomically once a run has ended) and
resumes an interrupted one from its latest checkpoint (the trainer resumes by itself). SIGTERM or
Ctrl-C saves the running run's current step, writes the outputs and exits with 128 + the signal.
A run whose loss becomes NaN is recorded as diverged, and the study goes on.

After every finished run and at the end, `DIR/study.md` (the tables: ours beside the paper's, one
line per table on whether the paper's ordering holds here), `DIR/study.json` (every metric of
every run with its overrides; no timings, so that a resumed study writes the one an uninterrupted
study writes) and the plots (`table1.png`, `figure4.png`, `rpn_losses.png`) are written, and the
tables printed at the end. The tables are built from the runs' own `metrics.jsonl` only.

Studies (the runs and what they override; `--runs` restricts a grid by run names, shell
patterns allowed, e.g. `--runs 'focal_*'`; `--list_runs` prints the grid and exits):

- `table1`, RetinaNet (default base `configs/shapes_retinanet.py`):
  (a) alpha-balanced CE (gamma 0), alpha in {0.25, 0.5, 0.75, 0.9, 0.99}: `alpha_ce_a{alpha}`;
  (b) focal loss at gamma in {0.5, 1, 2, 5} with the paper's best alpha {0.5, 0.25, 0.25, 0.25}:
  `focal_g{gamma}_a{alpha}`; gamma 0 (best alpha 0.75) is the (a) run `alpha_ce_a0.75`, since FL
  at gamma 0 is alpha-balanced CE; `--full_grid`: every alpha of (a) at every gamma;
  (d) OHEM, cross-entropy on the 128 or 512 highest-loss anchors of each image, without or with
  the 1:3 ratio (`ohem_n{128,512}`, `ohem_n{128,512}_1to3`), against focal loss; FL* (gamma 2,
  beta 1) and (gamma 4, beta 0) of appendix A (`flstar_g2_b1`, `flstar_g4_b0`);
  the initialisation of section 3.3: plain CE from the prior pi = 0.01 (`ce_prior`) and from a
  zero bias (`ce_bias0`, `model.prior_prob` 0.5), which the paper reports to diverge.
  Headline runs, trained with `--seeds` seeds (default 2; others with one): `alpha_ce_a0.75`
  (best alpha-CE), `focal_g2_a0.25` (best FL), `ohem_n128` (the paper's best OHEM).
- `figure4`: the focal-loss model of `focal_g2_a0.25` (seed 0, the run of `table1`, reused when
  it is there), then over the evaluation images the loss of every positive and negative anchor
  recomputed at gamma in {0, 0.5, 1, 2}, normalised to sum to 1 within positives and within
  negatives, sorted, cumulative (`cumulative_loss_curves`): `figure4.png`, two panels.
- `rpn`, Faster R-CNN (default base `configs/shapes_faster_rcnn.py`): `model.rpn.loss` in
  {sampled, ce_all, focal_sigmoid, focal_softmax} (`rpn_{loss}`), all headline runs: AP,
  AR@100, AR@1000, and the noise of the RPN box loss (`rpn_noise`), with `rpn_losses.png`. These
  runs log every 2 steps (`log_every_steps`) for that measure.

Settings (`--setting`): `paper_regime` (the default of `table1` and `figure4` on the shapes
data) is the paper's imbalance on the shapes data: 256x256 images with 1 to 3 objects of 8-32 px
(10% empty), 2000 training and 200 validation images (`SETTINGS`), and the paper's 9 anchors per
location (3 scales x aspect ratios 0.5, 1, 2): about 12k anchors and 10 positives an image,
1:1200 (the paper: ~100k anchors, 1:1000). `base` (the default of `rpn`, and of every study on
another data set) is the base config unchanged; shapes' own 128 px images with 1 aspect ratio
have about 1k anchors and 9 positives an image, 1:110. `study.md` reports each setting's
anchors and positives per image (the loss's own `num_positives`, logged while training).

Presets (`--preset`): `quick` (default) trains 400 steps (RetinaNet; warm-up 50) or 600 steps
(Faster R-CNN) of the base config's batch; `full` keeps the base config's own schedule (shapes:
1600 and 1500 steps of 16 images; COCO: the recipe's), for an accelerator.

Time (2-core AMD EPYC VM without accelerator, jax 0.10.2):
- `table1,figure4`, quick, paper regime: 20 runs (17 + 3 extra seeds), about 2.7 min each, the
  data set generated once and Figure 4's pass over 200 images: 54 min 40 s measured for the whole
  command (2026-12-02, with other tests running beside it part of the time; `/usr/bin/time`).
  `--full_grid` adds 16 runs (about 45 minutes, estimated from the runs above).
- `rpn`, quick, base setting: 8 runs of 600 steps, 35 min 30 s measured for the whole command
  (2026-12-02, the test suite running beside it part of the time; `/usr/bin/time`).
- `full`: on this CPU about 11 minutes a `table1` run (about 4 hours for 20); on one modern GPU,
  where the tf.data pipeline rather than the tiny model sets the pace, about 1-3 minutes a run,
  under an hour for `table1,figure4` (not measured).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from focaljax import data as data_lib
from focaljax import detectors, losses
from focaljax.detectors.retinanet import anchor_targets, retinanet_anchors
from focaljax.ops.boxes import BoxCoder
from train import cli
from train import train as trainer
from train import workdir as workdir_lib

# ----------------------------------------------------------------------------------------------
# The paper's numbers (AP in percent), from /work/shared/reference/paper_tables.md.

PAPER_SOURCE = (
    "RetinaNet paper (Lin et al., Focal Loss for Dense Object Detection, ICCV 2017, "
    "arXiv 1708.02002), COCO minival, ResNet-50-FPN, 600 px"
)
# (RetinaNet paper, Table 1a): alpha-balanced CE, alpha -> AP.
PAPER_TABLE1A = {0.25: 10.8, 0.5: 30.2, 0.75: 31.1, 0.9: 30.8, 0.99: 28.7}
# (RetinaNet paper, Table 1b): focal loss, gamma -> (best alpha, AP).
PAPER_TABLE1B = {0.0: (0.75, 31.1), 0.5: (0.5, 32.9), 1.0: (0.25, 33.7), 2.0: (0.25, 34.0),
                 5.0: (0.25, 32.2)}
# (RetinaNet paper, Table 1d), ResNet-101-FPN: best OHEM (batch 128, NMS 0.5), OHEM 1:3 at best,
# focal loss.
PAPER_TABLE1D = {"ohem_best": 32.8, "ohem_1to3_best": 31.1, "focal": 36.0}
# (RetinaNet paper, appendix A): FL*, (gamma, beta) -> AP; FL (gamma 2, alpha .25) is Table 1b's.
PAPER_FL_STAR = {(2.0, 1.0): 33.8, (4.0, 0.0): 33.9}
PAPER_IMBALANCE = "about 100k anchors an image, foreground:background near 1:1000 (sections 1, 3)"
PAPER_INIT = "CE from a zero bias diverges (section 3.3); from the prior pi = 0.01 it trains"
PAPER_FIGURE4 = (
    "Figure 4 (R101, 600 px, gamma 2): for negatives at gamma 2 nearly all the loss comes from a "
    "small fraction of the anchors; for positives the curve changes little with gamma"
)
FL_RPN_SOURCE = (
    "FL-RPN paper (Chen, Song, Jiang, Focal Loss for Region Proposal Network, PRCV 2018): focal "
    "loss slightly improves accuracy; the softmax form beats the sigmoid form (table values not "
    "available to us)"
)

TABLE1A_ALPHAS = (0.25, 0.5, 0.75, 0.9, 0.99)
TABLE1B_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
OHEM_NUM_SAMPLES = (128, 512)
FIGURE4_GAMMAS = (0.0, 0.5, 1.0, 2.0)
FIGURE4_RUN = "focal_g2_a0.25"
# Evaluation images of Figure 4. Their logits are kept in memory: images x anchors x classes x 4
# bytes (the paper regime: 40 MB; COCO at 100k anchors and 80 classes: 6 GB).
FIGURE4_MAX_IMAGES = 200
RPN_LOSSES = ("sampled", "ce_all", "focal_sigmoid", "focal_softmax")
# The loss's count of positive anchors per image, as the trainer logs it, per detector.
POSITIVES_METRIC = {"retinanet": "train/num_positives", "faster_rcnn": "train/rpn_num_positives"}
CURVE_POINTS = 201  # Points of each Figure 4 curve kept in study.json.

RESULT_FILE = "study_result.json"
SPEC_FILE = "study_run.json"


class StudyError(ValueError):
    """A request the study cannot run: unknown study, preset or setting, a bad flag value, or a
    workdir whose runs were made with another config. The message says what was expected."""


# ----------------------------------------------------------------------------------------------
# Settings and presets: config overrides, each key a dotted field of the base config.

SETTINGS: dict[str, dict[str, Any]] = {
    "base": {},
    "paper_regime": {
        "dataset.builder_kwargs": {
            "name": "paper_regime_256", "image_size": 256, "num_train": 2000,
            "num_validation": 200, "max_objects": 3, "max_object_fraction": 0.125,
        },
        "dataset.image_size": (256, 256),
        "model.aspect_ratios": (0.5, 1.0, 2.0),
    },
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """A schedule: config overrides for each detector (`model.name`), and the seconds a run is
    expected to take before one has been measured (for the first estimate of the time left)."""

    name: str
    overrides: Mapping[str, Mapping[str, Any]]
    seconds_per_run: float


PRESETS = {
    "quick": Preset(
        "quick",
        {
            "retinanet": {"num_train_steps": 400, "num_epochs": 0.0, "schedule.warmup_steps": 50,
                          "checkpoint_every_steps": 100, "eval_every_steps": 0},
            "faster_rcnn": {"num_train_steps": 600, "num_epochs": 0.0,
                            "schedule.warmup_steps": 50, "checkpoint_every_steps": 100,
                            "eval_every_steps": 0},
        },
        seconds_per_run=210.0,
    ),
    "full": Preset("full", {"retinanet": {}, "faster_rcnn": {}}, seconds_per_run=700.0),
}


# ----------------------------------------------------------------------------------------------
# The studies: variants (named overrides) and the tables built from them.


@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting of the loss: `name` names its runs (`{name}_s{seed}`); `headline` variants
    are trained with every seed of `--seeds`, the others with the first."""

    name: str
    overrides: Mapping[str, Any]
    headline: bool = False


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row: our runs of `variant` beside the paper's `paper` AP (percent) or `note`."""

    label: str
    variant: str
    paper: float | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
    """`claim(stats, spread) -> str` is the table's one line on the paper's ordering; `stats`
    maps each row's variant to its `Stats` per metric."""

    key: str
    title: str
    source: str
    rows: tuple[Row, ...]
    metrics: tuple[str, ...]
    claim: Callable[[Mapping[str, Mapping[str, Stats]], float | None], str]


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    detector: str
    default_base_config: str
    default_setting: str  # "paper_regime" applies only to shapes base configs.
    variants: Callable[[bool], list[Variant]]
    tables: Callable[[bool], list[Table]]
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _g(value: float) -> str:
    return f"{value:g}"


def alpha_ce(alpha: float, headline: bool = False) -> Variant:
    return Variant(f"alpha_ce_a{_g(alpha)}",
                   {"model.loss.cls": "alpha_ce", "model.loss.alpha": alpha}, headline)


def focal(gamma: float, alpha: float, headline: bool = False) -> Variant:
    if gamma == 0:  # FL at gamma 0 is alpha-balanced CE: one run for both tables.
        return alpha_ce(alpha, headline)
    return Variant(
        f"focal_g{_g(gamma)}_a{_g(alpha)}",
        {"model.loss.cls": "focal", "model.loss.gamma": gamma, "model.loss.alpha": alpha},
        headline,
    )


def ohem(num_samples: int, one_to_three: bool) -> Variant:
    return Variant(
        f"ohem_n{num_samples}" + ("_1to3" if one_to_three else ""),
        {"model.loss.cls": "ohem", "model.loss.ohem_num_samples": num_samples,
         "model.loss.ohem_positive_fraction": 0.25 if one_to_three else 0.0},
        headline=num_samples == 128 and not one_to_three,  # The paper's best OHEM.
    )


def fl_star(gamma: float, beta: float) -> Variant:
    return Variant(
        f"flstar_g{_g(gamma)}_b{_g(beta)}",
        {"model.loss.cls": "fl_star", "model.loss.gamma": gamma, "model.loss.fl_star_beta": beta},
    )


def ce_init(prior_prob: float) -> Variant:
    # prior_prob 0.5 is a zero bias: sigmoid(0) = 0.5.
    name = "ce_prior" if prior_prob != 0.5 else "ce_bias0"
    return Variant(name, {"model.loss.cls": "ce", "model.prior_prob": prior_prob})


BEST_FOCAL = focal(2.0, 0.25, headline=True)
BEST_ALPHA_CE = alpha_ce(0.75, headline=True)


def table1_variants(full_grid: bool) -> list[Variant]:
    variants = [alpha_ce(a, headline=a == 0.75) for a in TABLE1A_ALPHAS]
    for gamma, (alpha, _) in PAPER_TABLE1B.items():
        alphas = TABLE1A_ALPHAS if full_grid else (alpha,)
        variants += [focal(gamma, a, headline=(gamma, a) == (2.0, 0.25)) for a in alphas]
    variants += [ohem(n, r) for n in OHEM_NUM_SAMPLES for r in (False, True)]
    variants += [fl_star(g, b) for g, b in PAPER_FL_STAR]
    variants += [ce_init(0.01), ce_init(0.5)]
    return _unique(variants)


def _unique(variants: list[Variant]) -> list[Variant]:
    seen: dict[str, Variant] = {}
    for variant in variants:
        seen.setdefault(variant.name, variant)
    return list(seen.values())


AP_METRICS = ("AP", "AP50", "AP75")


def table1_tables(full_grid: bool) -> list[Table]:
    tables = [
        Table(
            "table1a", "Table 1a: alpha-balanced CE (gamma 0)", "(RetinaNet paper, Table 1a)",
            tuple(Row(f"alpha {_g(a)}", alpha_ce(a).name, PAPER_TABLE1A[a])
                  for a in TABLE1A_ALPHAS),
            AP_METRICS, _ordering_claim,
        ),
        Table(
            "table1b", "Table 1b: focal loss at the paper's best alpha for each gamma",
            "(RetinaNet paper, Table 1b)",
            tuple(Row(f"gamma {_g(g)}, alpha {_g(a)}", focal(g, a).name, ap)
                  for g, (a, ap) in PAPER_TABLE1B.items()),
            AP_METRICS, _ordering_claim,
        ),
    ]
    if full_grid:
        tables.append(Table(
            "table1b_grid", "Table 1b, every alpha x gamma (paper: its best alpha per gamma)",
            "(RetinaNet paper, Table 1b)",
            tuple(Row(f"gamma {_g(g)}, alpha {_g(a)}", focal(g, a).name,
                      ap if a == best else None)
                  for g, (best, ap) in PAPER_TABLE1B.items() for a in TABLE1A_ALPHAS),
            AP_METRICS, _best_alpha_claim,
        ))
    ohem_rows = []
    for n in OHEM_NUM_SAMPLES:
        ohem_rows.append(Row(f"OHEM, {n} per image", ohem(n, False).name,
                             PAPER_TABLE1D["ohem_best"] if n == 128 else None,
                             "" if n == 128 else "not in our reference"))
        ohem_rows.append(Row(f"OHEM 1:3, {n} per image", ohem(n, True).name, None,
                             f"<= {PAPER_TABLE1D['ohem_1to3_best']} (best OHEM 1:3)"))
    tables += [
        Table(
            "table1d", "Table 1d: focal loss vs OHEM (no NMS over anchors here)",
            "(RetinaNet paper, Table 1d; the paper's numbers are ResNet-101-FPN)",
            (*ohem_rows, Row("FL (gamma 2, alpha 0.25)", BEST_FOCAL.name,
                             PAPER_TABLE1D["focal"])),
            AP_METRICS, _focal_beats_ohem_claim,
        ),
        Table(
            "fl_star", "Appendix A: FL* against FL", "(RetinaNet paper, appendix A; Table 1b)",
            (Row("FL (gamma 2, alpha 0.25)", BEST_FOCAL.name, PAPER_TABLE1B[2.0][1]),
             *(Row(f"FL* (gamma {_g(g)}, beta {_g(b)})", fl_star(g, b).name, ap)
               for (g, b), ap in PAPER_FL_STAR.items())),
            AP_METRICS, _fl_star_claim,
        ),
        Table(
            "init", "Section 3.3: plain CE, prior-bias initialisation", "(RetinaNet paper, "
            "section 3.3; plain CE is alpha 0.5 up to a factor 2, Table 1a)",
            (Row("CE, bias from pi = 0.01", ce_init(0.01).name, PAPER_TABLE1A[0.5]),
             Row("CE, bias 0", ce_init(0.5).name, None, "diverges")),
            AP_METRICS, _init_claim,
        ),
    ]
    return tables


def figure4_variants(full_grid: bool) -> list[Variant]:
    del full_grid
    return [dataclasses.replace(BEST_FOCAL, headline=False)]


def rpn_variants(full_grid: bool) -> list[Variant]:
    del full_grid
    return [Variant(f"rpn_{name}", {"model.rpn.loss": name}, headline=True)
            for name in RPN_LOSSES]


def rpn_tables(full_grid: bool) -> list[Table]:
    del full_grid
    return [Table(
        "rpn", "FL-RPN: the RPN loss of a Faster R-CNN", "(FL-RPN paper; no table values)",
        tuple(Row(name, f"rpn_{name}") for name in RPN_LOSSES),
        ("AP", "AP50", "AR@100", "AR@1000", "rpn_box_noise"), _rpn_claim,
    )]


STUDIES = {
    "table1": Study("table1", "retinanet", "configs/shapes_retinanet.py", "paper_regime",
                    table1_variants, table1_tables),
    "figure4": Study("figure4", "retinanet", "configs/shapes_retinanet.py", "paper_regime",
                     figure4_variants, lambda full_grid: []),
    "rpn": Study("rpn", "faster_rcnn", "configs/shapes_faster_rcnn.py", "base",
                 rpn_variants, rpn_tables, overrides={"log_every_steps": 2}),
}


# ----------------------------------------------------------------------------------------------
# The grid.


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: `overrides` are everything applied to the base config `base`
    (setting, preset, study, variant, seed, in this order)."""

    setting: str
    variant: str
    seed: int
    base: str
    detector: str
    overrides: Mapping[str, Any]
    headline: bool

    @property
    def name(self) -> str:
        return f"{self.variant}_s{self.seed}"

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.name}"


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of `config` with each dotted field of `overrides` set; a field the config does not
    have is an error (`StudyError`), never added."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, name = key.split(".")
        node = config
        for depth, parent in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or parent not in node:
                raise StudyError(f"override {key}: the base config has no field "
                                 f"{'.'.join(parents[: depth + 1])}")
            node = node[parent]
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise StudyError(f"override {key}: the base config has no field {key}")
        if isinstance(value, Mapping):
            value = ml_collections.ConfigDict(dict(value))
        try:
            node[name] = value
        except TypeError as error:
            raise StudyError(f"override {key}={value!r}: {error}") from None
    return config


def resolve_setting(study: Study, requested: str, base: ml_collections.ConfigDict) -> str:
    """`requested` (or the study's default, for a shapes base config) as a `SETTINGS` name."""
    is_shapes = base.dataset.name == "shapes"
    if not requested:
        return study.default_setting if is_shapes else "base"
    if requested not in SETTINGS:
        raise StudyError(f"unknown setting {requested!r}; valid settings: {', '.join(SETTINGS)}")
    if requested == "paper_regime" and not is_shapes:
        raise StudyError(
            f"setting 'paper_regime' builds its own shapes data set, but the base config of "
            f"study {study.name} uses {base.dataset.name!r}; use --setting=base"
        )
    return requested


def expand_grid(
    studies: Sequence[str],
    bases: Mapping[str, tuple[str, ml_collections.ConfigDict]],
    *,
    preset: Preset,
    setting: str = "",
    full_grid: bool = False,
    seeds: int = 2,
    runs: Sequence[str] = (),
) -> list[Run]:
    """The runs of `studies` in training order: every first seed, then the headline variants'
    other seeds; a run shared by two studies (figure4's model is table1's) appears once.

    Args:
      bases: study name -> (label, base config) of that study.
      runs: shell patterns; when given, only the runs whose name or key matches one are kept.
    """
    if seeds < 1:
        raise StudyError(f"--seeds is {seeds}, expected >= 1")
    grid: dict[str, Run] = {}
    for seed_index in range(seeds):
        for name in studies:
            study = STUDIES[name]
            label, base = bases[name]
            chosen = resolve_setting(study, setting, base)
            for variant in study.variants(full_grid):
                if seed_index and not variant.headline:
                    continue
                overrides = {
                    **SETTINGS[chosen], **preset.overrides[study.detector], **study.overrides,
                    **variant.overrides, "seed": int(base.seed) + seed_index,
                }
                run = Run(chosen, variant.name, int(base.seed) + seed_index, label,
                          study.detector, overrides, variant.headline)
                if run.key not in grid:
                    grid[run.key] = run
                elif run.headline:  # Shared with a study that needs its seeds.
                    grid[run.key] = dataclasses.replace(grid[run.key], headline=True)
    selected = list(grid.values())
    if runs:
        selected = [r for r in selected if any(fnmatch.fnmatchcase(r.name, p)
                                               or fnmatch.fnmatchcase(r.key, p) for p in runs)]
        if not selected:
            raise StudyError(f"--runs {','.join(runs)} matches none of the runs: "
                             f"{', '.join(r.name for r in grid.values())}")
    return selected


def run_config(run: Run, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return apply_overrides(base, run.overrides)


# ----------------------------------------------------------------------------------------------
# Figure 4: the pure numerical part.


def per_anchor_focal_loss(logits: Any, labels: Any, *, gamma: float) -> np.ndarray:
    r"""The focal loss of each anchor, summed over its classes, without alpha:

    .. math:: \ell_a = \sum_c -(1 - p_{t,ac})^\gamma \log p_{t,ac},\quad
              p_{t,ac} = \sigma(x_{ac}) \text{ if } c = y_a \text{ else } 1 - \sigma(x_{ac}),

    `sigmoid_focal_loss(alpha=None)` on the one-hot targets of `labels` (-1: background, no
    class is the target). (RetinaNet paper, Figure 4: the loss of a trained model's anchors,
    recomputed at several gamma.)

    Args:
      logits: float `[N, C]`.
      labels: int `[N]`, the class of each anchor in `0..C-1`, or -1 for background.
      gamma: focusing parameter, >= 0.

    Returns:
      float32 `[N]`.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = (jnp.asarray(labels)[:, None] == jnp.arange(logits.shape[-1])).astype(jnp.float32)
    per_logit = losses.sigmoid_focal_loss(logits, targets, alpha=None, gamma=float(gamma))
    return np.asarray(jnp.sum(per_logit, axis=-1))


def cumulative_share(anchor_losses: Any) -> np.ndarray:
    """`[n] -> [n + 1]`: entry `k` is the sum of the `k` smallest losses over the sum of all
    (0 at `k = 0`, 1 at `k = n`; all 0 when every loss is 0), the curve of Figure 4 at the
    fraction `k / n` of the anchors."""
    ordered = np.sort(np.asarray(anchor_losses, np.float64))
    cumulative = np.concatenate([[0.0], np.cumsum(ordered)])
    total = cumulative[-1]
    return cumulative / total if total > 0 else cumulative


def cumulative_loss_curves(
    logits: Any,
    labels: Any,
    weights: Any,
    *,
    gammas: Sequence[float] = FIGURE4_GAMMAS,
) -> dict[float, dict[str, np.ndarray]]:
    """Figure 4 of the RetinaNet paper: for each gamma, the cumulative normalised loss of the
    positive and of the negative anchors, sorted from the smallest loss.

    Positives are the anchors with `labels >= 0` and `weights > 0`, negatives those with
    `labels == -1` and `weights > 0`; ignored anchors (weight 0) are in neither. Each anchor's
    loss is `per_anchor_focal_loss` at that gamma, and each group's curve is `cumulative_share`
    of its losses.

    Args:
      logits: float `[N, C]`, a trained model's classification logits of N anchors.
      labels: int `[N]`, the matched class of each anchor, -1 for background.
      weights: `[N]`, 0 for ignored anchors.
      gammas: the focusing parameters to recompute the loss at.

    Returns:
      `{gamma: {"positive": [P + 1], "negative": [Q + 1]}}` for P positives and Q negatives.

    Examples:
      >>> logits = np.array([[3.0], [-3.0], [0.0], [-1.0], [2.0]])
      >>> labels = np.array([0, -1, -1, -1, 0])
      >>> curves = cumulative_loss_curves(logits, labels, np.array([1, 1, 1, 1, 0]),
      ...                                 gammas=(0.0, 2.0))
      >>> np.round(curves[0.0]["negative"], 3)
      array([0.   , 0.042, 0.318, 1.   ])
      >>> np.round(curves[2.0]["negative"], 3)  # The hardest negative carries more of the loss.
      array([0.   , 0.   , 0.202, 1.   ])
      >>> curves[2.0]["positive"]  # One positive (the last anchor is ignored).
      array([0., 1.])
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    weights = np.asarray(weights)
    if logits.ndim != 2:
        raise ValueError(f"logits has shape {logits.shape}, expected [anchors, classes]")
    if labels.shape != logits.shape[:1] or weights.shape != logits.shape[:1]:
        raise ValueError(f"labels has shape {labels.shape} and weights {weights.shape}, expected "
                         f"{logits.shape[:1]}, one per anchor of logits {logits.shape}")
    positive = (labels >= 0) & (weights > 0)
    negative = (labels < 0) & (weights > 0)
    curves = {}
    for gamma in gammas:
        anchor_loss = per_anchor_focal_loss(logits, labels, gamma=gamma)
        curves[float(gamma)] = {"positive": cumulative_share(anchor_loss[positive]),
                                "negative": cumulative_share(anchor_loss[negative])}
    return curves


def share_of_hardest(curve: np.ndarray, fraction: float) -> float:
    """The part of a `cumulative_share` curve's loss carried by its hardest `fraction` of the
    anchors (the `ceil(fraction * n)` largest losses)."""
    n = len(curve) - 1
    return float(1.0 - curve[n - math.ceil(fraction * n)]) if n else math.nan


def curve_points(curve: np.ndarray, num_points: int = CURVE_POINTS) -> list[float]:
    """The curve at `num_points` evenly spaced fractions of the anchors, 0 to 1."""
    n = len(curve) - 1
    if n < 1:
        return []
    indices = np.floor(np.linspace(0.0, 1.0, num_points) * n).astype(int)
    return [float(v) for v in curve[indices]]


def figure4_anchors(
    config: ml_collections.ConfigDict, workdir: str, *, max_images: int = FIGURE4_MAX_IMAGES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`(logits [N, C], labels [N], weights [N], num_images)` of every anchor of the first
    `max_images` evaluation images, from the latest checkpoint of the RetinaNet run in `workdir`;
    labels and weights from the matcher of its loss (`anchor_targets`)."""
    dataset = data_lib.build(config.dataset)
    image_size = tuple(int(s) for s in config.dataset.image_size)
    # Synchronized batch norm insists on an axis name; inference never reduces over it.
    detector = detectors.build(config.model, num_classes=dataset.info.num_classes,
                               image_size=image_size, axis_name=trainer.AXIS_NAME)
    variables, _ = workdir_lib.restore_variables(workdir)
    anchors, _ = retinanet_anchors(config.model, image_size)
    targets_of = anchor_targets(
        config.model, anchors, box_coder=BoxCoder(weights=tuple(config.model.box_coder_weights))
    )

    @jax.jit
    def forward(variables, batch):
        outputs, _ = detector.apply(variables, {"image": batch["image"]}, train=False)
        targets = jax.vmap(targets_of)(batch["boxes"], batch["labels"], batch["is_crowd"])
        return outputs["cls_logits"], targets["labels"], targets["cls_weights"]

    per_device = config.eval_batch_size // jax.local_device_count()
    logits, labels, weights, num_images = [], [], [], 0
    for batch in dataset.eval_iterator(per_device):
        batch = {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
        keep = np.flatnonzero(batch["valid"])[: max_images - num_images]
        out = jax.device_get(forward(variables, batch))
        logits.append(out[0][keep].reshape(-1, out[0].shape[-1]))
        labels.append(out[1][keep].reshape(-1))
        weights.append(out[2][keep].reshape(-1))
        num_images += len(keep)
        if num_images >= max_images:
            break
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(weights), num_images


def figure4_result(config: ml_collections.ConfigDict, run: Run, run_dir: str) -> dict[str, Any]:
    """Figure 4's numbers for the finished run in `run_dir`, computed once and kept there."""
    path = os.path.join(run_dir, "figure4.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    logits, labels, weights, num_images = figure4_anchors(config, run_dir)
    curves = cumulative_loss_curves(logits, labels, weights, gammas=FIGURE4_GAMMAS)
    result = {
        "run": run.key, "num_images": num_images,
        "num_positives": int(np.sum((labels >= 0) & (weights > 0))),
        "num_negatives": int(np.sum((labels < 0) & (weights > 0))),
        "gammas": {
            _g(gamma): {group: {"hardest_10%": share_of_hardest(curve, 0.1),
                                "hardest_1%": share_of_hardest(curve, 0.01),
                                "curve": curve_points(curve)}
                        for group, curve in groups.items()}
            for gamma, groups in curves.items()
        },
    }
    _write_json(path, result)
    return result


# ----------------------------------------------------------------------------------------------
# Reading a run's own files.


@dataclasses.dataclass(frozen=True)
class Stats:
    """A metric over the finished seeds of a variant; `values` empty when none has finished."""

    values: tuple[float, ...]
    diverged: int = 0

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    def cell(self, digits: int = 3) -> str:
        if not self.values:
            return "diverged" if self.diverged else "—"
        text = f"{self.mean:.{digits}f}"
        if len(self.values) > 1:
            text += (f" ({min(self.values):.{digits}f}–{max(self.values):.{digits}f}, "
                     f"{len(self.values)} seeds)")
        if self.diverged:
            text += f", {self.diverged} diverged"
        return text


def read_metrics(run_dir: str) -> tuple[dict[int, dict[str, float]], dict[str, float] | None]:
    """`({step: train scalars}, last evaluation)` of a run's `metrics.jsonl`. A step logged twice
    (a run resumed from a checkpoint before it) keeps its later record."""
    path = os.path.join(run_dir, "metrics.jsonl")
    train_records: dict[int, dict[str, float]] = {}
    evaluation = None
    if not os.path.exists(path):
        return train_records, evaluation
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            scalars = {k: (math.nan if v is None else v) for k, v in record.items() if k != "step"}
            if any(k.startswith("eval/") for k in scalars):
                evaluation = {k[len("eval/"):]: v for k, v in scalars.items()
                              if k.startswith("eval/")}
            else:
                train_records[int(record["step"])] = scalars
    return dict(sorted(train_records.items())), evaluation


def loss_noise(values: Sequence[float]) -> float:
    """How noisy a logged loss is: the standard deviation of the differences between consecutive
    values over the second half of the log, divided by their mean there (scale-free, so that
    RPN losses normalised differently compare)."""
    half = np.asarray(values[len(values) // 2:], np.float64)
    if len(half) < 3 or not np.mean(half) > 0:
        return math.nan
    return float(np.std(np.diff(half)) / np.mean(half))


def collect_run(run: Run, run_dir: str) -> dict[str, Any]:
    """What study.json keeps of one run: its status, overrides, final evaluation and a summary
    of its training log, all from the run's own files."""
    status = "pending"
    result = None
    if os.path.exists(os.path.join(run_dir, RESULT_FILE)):
        with open(os.path.join(run_dir, RESULT_FILE)) as f:
            result = json.load(f)
        status = result["status"]
    train_records, evaluation = read_metrics(run_dir)
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
    return {
        "setting": run.setting, "variant": run.variant, "seed": run.seed, "base_config": run.base,
        "overrides": _jsonable(run.overrides), "status": status,
        "eval": evaluation if status == "finished" else None,
        "train": summary, "error": result.get("error") if result else None,
    }


def variant_stats(records: Mapping[str, Mapping[str, Any]], setting: str, variant: str,
                  metric: str) -> Stats:
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
    return Stats(tuple(values), diverged)


# ----------------------------------------------------------------------------------------------
# Claims: one line per table on the paper's ordering.


def _verdict(holds: bool | None) -> str:
    return {True: "holds", False: "does not hold", None: "not decided yet"}[holds]


def _spread_note(spread: float | None) -> str:
    if spread is None:
        return "no seed spread measured yet (single runs)"
    return f"the headline rows' seeds differ by up to {spread:.3f} AP"


def _ordering_claim(stats, spread, *, rows: Sequence[Row] = ()) -> str:
    ours = {row.label: stats[row.variant]["AP"].mean for row in rows}
    compared = [row for row in rows if row.paper is not None and ours[row.label] is not None]
    if len(compared) < 2:
        return f"**Paper's ordering**: {_verdict(None)} (fewer than two finished rows)."
    paper_order = sorted(compared, key=lambda r: -r.paper)
    our_order = sorted(compared, key=lambda r: -ours[r.label])
    # Tied rows (e.g. several at AP 0) order nothing: the paper's order must hold strictly.
    strict = all(ours[a.label] > ours[b.label]
                 for a, b in zip(paper_order, paper_order[1:], strict=False))
    best = ours[our_order[0].label]
    same_best = ours[paper_order[0].label] == best and sum(
        ours[r.label] == best for r in compared) == 1
    verdict = "holds" if strict else ("holds for the best row only" if same_best
                                      else "does not hold")
    return (f"**Paper's ordering** {verdict}: paper "
            f"{_chain(paper_order, lambda r: r.paper)}; here "
            f"{_chain(our_order, lambda r: ours[r.label])}; {_spread_note(spread)}.")


def _chain(rows: Sequence[Row], value: Callable[[Row], float]) -> str:
    """`a > b = c`: the rows' labels from the largest value, `=` between equal values."""
    text = rows[0].label
    for previous, row in zip(rows, rows[1:], strict=False):
        text += f" {'=' if value(row) == value(previous) else '>'} {row.label}"
    return text


def _best_alpha_claim(stats, spread, *, rows: Sequence[Row] = ()) -> str:
    agree, decided = 0, 0
    for gamma in {row.label.split(",")[0] for row in rows}:
        group = [r for r in rows if r.label.startswith(gamma + ",")]
        done = [r for r in group if stats[r.variant]["AP"].mean is not None]
        if len(done) < len(group):
            continue
        decided += 1
        best = max(done, key=lambda r: stats[r.variant]["AP"].mean)
        agree += best.paper is not None
    if not decided:
        return f"**Paper's best alpha per gamma**: {_verdict(None)}."
    return (f"**Paper's best alpha per gamma** {_verdict(agree == decided)}: ours agrees for "
            f"{agree} of {decided} gammas; {_spread_note(spread)}.")


def _focal_beats_ohem_claim(stats, spread, *, rows: Sequence[Row] = ()) -> str:
    fl = stats[BEST_FOCAL.name]["AP"].mean
    ohems = {r.label: stats[r.variant]["AP"].mean for r in rows
             if r.variant.startswith("ohem") and stats[r.variant]["AP"].mean is not None}
    if fl is None or not ohems:
        return f"**Paper's ordering (FL > every OHEM)**: {_verdict(None)}."
    best = max(ohems, key=ohems.get)
    return (f"**Paper's ordering (FL > every OHEM)** {_verdict(fl > ohems[best])}: FL "
            f"{fl:.3f}, best OHEM ({best}) {ohems[best]:.3f}; {_spread_note(spread)}.")


def _fl_star_claim(stats, spread, *, rows: Sequence[Row] = ()) -> str:
    fl = stats[BEST_FOCAL.name]["AP"].mean
    stars = {r.label: stats[r.variant]["AP"].mean for r in rows
             if r.variant.startswith("flstar") and stats[r.variant]["AP"].mean is not None}
    if fl is None or not stars:
        return f"**Paper's finding (FL* about as good as FL)**: {_verdict(None)}."
    gaps = ", ".join(f"{label} {ap - fl:+.3f}" for label, ap in stars.items())
    holds = None if spread is None else all(abs(ap - fl) <= spread for ap in stars.values())
    return (f"**Paper's finding (FL* within 0.2 AP of FL)** {_verdict(holds)} here, measured "
            f"against the seed spread: FL* - FL: {gaps}; {_spread_note(spread)}.")


def _init_claim(stats, spread, *, rows: Sequence[Row] = ()) -> str:
    prior, zero = stats[ce_init(0.01).name]["AP"], stats[ce_init(0.5).name]["AP"]
    if (not prior.values) or (not zero.values and not zero.diverged):
        return f"**Paper's finding ({PAPER_INIT})**: {_verdict(None)}."
    if zero.diverged:
        return f"**Paper's finding ({PAPER_INIT})** holds: the zero-bias run diverged."
    holds = zero.mean < prior.mean
    return (f"**Paper's finding ({PAPER_INIT})** {_verdict(holds)}: the zero-bias run trained, "
            f"to AP {zero.mean:.3f} against {prior.mean:.3f} from the prior; "
            f"{_spread_note(spread)}.")


def _rpn_claim(stats, spread, *, rows: Sequence[Row] = ()) -> str:
    ap = {name: stats[f"rpn_{name}"]["AP"].mean for name in RPN_LOSSES}
    if any(v is None for v in ap.values()):
        return f"**FL-RPN's findings**: {_verdict(None)} (runs missing)."
    focal_ok = min(ap["focal_sigmoid"], ap["focal_softmax"]) >= ap["sampled"]
    softmax_ok = ap["focal_softmax"] > ap["focal_sigmoid"]
    return (f"**FL-RPN's findings**: focal >= sampled {_verdict(focal_ok)} (AP sampled "
            f"{ap['sampled']:.3f}, focal_sigmoid {ap['focal_sigmoid']:.3f}, focal_softmax "
            f"{ap['focal_softmax']:.3f}); softmax > sigmoid {_verdict(softmax_ok)}; "
            f"{_spread_note(spread)}.")


def _figure4_claim(figure4: Mapping[str, Any]) -> str:
    gammas = figure4["gammas"]
    neg = [gammas[_g(g)]["negative"]["hardest_10%"] for g in FIGURE4_GAMMAS]
    pos = [gammas[_g(g)]["positive"]["hardest_10%"] for g in FIGURE4_GAMMAS]
    rising = all(b >= a for a, b in zip(neg, neg[1:], strict=False))
    holds = rising and (neg[-1] - neg[0]) > abs(pos[-1] - pos[0])
    return (f"**Paper's finding** {_verdict(holds)}: the hardest 10% of negatives carry "
            f"{neg[0]:.2f} of the negatives' loss at gamma 0 and {neg[-1]:.2f} at gamma 2"
            f"{' (rising with gamma)' if rising else ' (not rising with gamma)'}; for positives "
            f"{pos[0]:.2f} and {pos[-1]:.2f}.")


# ----------------------------------------------------------------------------------------------
# The report.


def seed_spread(records: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The largest max - min AP over the seeds of one headline variant, None before any has two
    finished seeds."""
    groups: dict[tuple[str, str], list[float]] = {}
    for record in records.values():
        if record["status"] == "finished" and record["eval"] and record.get("headline"):
            groups.setdefault((record["setting"], record["variant"]), []).append(
                record["eval"]["AP"])
    spreads = [max(v) - min(v) for v in groups.values() if len(v) > 1]
    return max(spreads) if spreads else None


def anchors_per_image(config: ml_collections.ConfigDict) -> int:
    image_size = tuple(int(s) for s in config.dataset.image_size)
    if config.model.name == "retinanet":
        return len(retinanet_anchors(config.model, image_size)[0])
    detector = detectors.build(config.model, num_classes=1, image_size=image_size,
                               axis_name=trainer.AXIS_NAME)
    return len(detector.module.anchors(image_size)[0])


def imbalance(runs: Sequence[Run], records: Mapping[str, Mapping[str, Any]],
              bases: Mapping[str, ml_collections.ConfigDict]) -> list[dict[str, Any]]:
    """Per setting and detector: anchors per image (of the config) and positives per image (the
    loss's own count, logged while training, mean over the runs)."""
    rows = []
    for setting, detector in dict.fromkeys((r.setting, r.detector) for r in runs):
        group = [r for r in runs if (r.setting, r.detector) == (setting, detector)]
        config = run_config(group[0], bases[group[0].base])
        anchors = anchors_per_image(config)
        positives = [records[r.key]["train"].get("positives_per_image") for r in group]
        positives = [p for p in positives if p is not None]
        mean = float(np.mean(positives)) if positives else None
        rows.append({
            "setting": setting, "detector": detector,
            "image_size": list(config.dataset.image_size), "anchors_per_image": anchors,
            "positives_per_image": mean, "runs": len(positives),
            "negatives_per_positive": anchors / mean if mean else None,
        })
    return rows


def build_report(
    runs: Sequence[Run],
    records: Mapping[str, Mapping[str, Any]],
    studies: Sequence[str],
    *,
    full_grid: bool,
    imbalance_rows: Sequence[Mapping[str, Any]],
    figure4: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The tables of `studies` from the runs' `records`: each row's `Stats` per metric as
    cells, and each table's claim line."""
    spread = seed_spread(records)
    tables = {}
    for name in studies:
        setting = next((r.setting for r in runs if r.detector == STUDIES[name].detector), None)
        for table in STUDIES[name].tables(full_grid):
            stats = {row.variant: {m: variant_stats(records, setting, row.variant, m)
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
                "claim": table.claim(stats, spread, rows=table.rows),
            }
    if figure4 is not None:
        tables["figure4"] = {"title": "Figure 4", "claim": _figure4_claim(figure4)}
    return {"tables": tables, "seed_spread": spread, "imbalance": list(imbalance_rows)}


def render_markdown(report: Mapping[str, Any], header: Mapping[str, Any],
                    figure4: Mapping[str, Any] | None, timings: Mapping[str, float]) -> str:
    lines = [
        f"# Study: {', '.join(header['studies'])}", "",
        f"Preset `{header['preset']}`, seeds {header['seeds']}, base configs "
        f"{', '.join(f'`{b}`' for b in header['base_configs'])}. Paper numbers: {PAPER_SOURCE} "
        "(AP in percent; ours in [0, 1] on our data, so compare orderings, not values). "
        "Cells: mean (min–max, seeds) where several seeds ran.", "",
        "## Imbalance each setting trains under", "",
        "| setting | detector | image | anchors / image | positives / image | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in report["imbalance"]:
        positives = row["positives_per_image"]
        lines.append(
            f"| {row['setting']} | {row['detector']} | {row['image_size'][0]}x"
            f"{row['image_size'][1]} | {row['anchors_per_image']} | "
            + (f"{positives:.1f} | 1:{row['negatives_per_positive']:.0f} |" if positives
               else "— | — |"))
    lines += ["", f"Positives: the loss's own count (`train/num_positives`, "
              f"`train/rpn_num_positives`), mean over the logged steps of the runs. The paper: "
              f"{PAPER_IMBALANCE}.", ""]
    for key, table in report["tables"].items():
        if key == "figure4":
            continue
        metrics = table["metrics"]
        lines += [f"## {table['title']}", "",
                  f"Setting `{table['setting']}`. Paper: {table['source']}.", "",
                  "| run | " + " | ".join(f"ours {m}" for m in metrics) + " | paper AP |",
                  "|---|" + "---:|" * (len(metrics) + 1)]
        for row in table["rows"]:
            paper = f"{row['paper']:.1f}" if row["paper"] is not None else ""
            paper = " ".join(p for p in (paper, row["paper_note"]) if p) or "—"
            lines.append(f"| {row['label']} (`{row['variant']}`) | "
                         + " | ".join(row["ours"][m]["cell"] for m in metrics)
                         + f" | {paper} |")
        lines += ["", table["claim"], ""]
    if figure4 is not None:
        lines += ["## Figure 4: cumulative normalised loss (`figure4.png`)", "",
                  f"Run `{figure4['run']}`, {figure4['num_images']} evaluation images: "
                  f"{figure4['num_positives']} positive and {figure4['num_negatives']} negative "
                  f"anchors. Paper: {PAPER_FIGURE4}.", "",
                  "| gamma | positives: loss of the hardest 10% | hardest 1% | "
                  "negatives: hardest 10% | hardest 1% |", "|---:|---:|---:|---:|---:|"]
        for gamma, groups in figure4["gammas"].items():
            pos, neg = groups["positive"], groups["negative"]
            lines.append(f"| {gamma} | {pos['hardest_10%']:.3f} | {pos['hardest_1%']:.3f} | "
                         f"{neg['hardest_10%']:.3f} | {neg['hardest_1%']:.3f} |")
        lines += ["", report["tables"]["figure4"]["claim"], ""]
    if timings:
        total = sum(timings.values())
        lines += ["## Time", "", f"{len(timings)} runs trained so far, {total / 60:.1f} min "
                  "(wall-clock of the runs' own invocations; a resumed run counts its last "
                  "part only).", ""]
    return "\n".join(lines)


def plot_table1(report: Mapping[str, Any], path: str) -> bool:
    """AP against alpha (Table 1a) and gamma (Table 1b), ours and the paper's."""
    panels = [(k, x) for k, x in (("table1a", "alpha"), ("table1b", "gamma"))
              if k in report["tables"]]
    if not panels:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels, strict=True):
        table = report["tables"][key]
        xs = [float(row["label"].split(",")[0].split()[1]) for row in table["rows"]]
        ours = [row["ours"]["AP"]["mean"] for row in table["rows"]]
        points = [(x, y) for x, y in zip(xs, ours, strict=True) if y is not None]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", label="ours (AP, left)")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel("our AP")
        ax.set_title(table["title"], fontsize=9)
        twin = ax.twinx()
        twin.plot(xs, [row["paper"] for row in table["rows"]], "s--", color="grey",
                  label="paper (AP %, right)")
        twin.set_ylabel("paper AP (%)")
        twin.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_figure4(figure4: Mapping[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_rpn_losses(runs: Sequence[Run], runs_dir: str, path: str) -> bool:
    """train/loss_rpn_cls and train/loss_rpn_box against the step, one line per RPN run."""
    series = []
    for run in runs:
        if run.detector != "faster_rcnn":
            continue
        records, _ = read_metrics(os.path.join(runs_dir, run.key))
        if records:
            series.append((run.name, records))
    if not series:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, term in zip(axes, ("rpn_cls", "rpn_box"), strict=True):
        for name, records in series:
            steps = [s for s, r in records.items() if f"train/loss_{term}" in r]
            ax.plot(steps, [records[s][f"train/loss_{term}"] for s in steps], label=name, lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"train/loss_{term}")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# ----------------------------------------------------------------------------------------------
# Running.


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.to_dict() if hasattr(v, "to_dict")
                                 else list(v)))


def _write_json(path: str, value: Any) -> None:
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


def _check_spec(run: Run, run_dir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a run directory made from another config (another preset, base config or
    version), which resuming would silently mix."""
    path = os.path.join(run_dir, SPEC_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        spec = json.load(f)
    if spec["config"] != json.loads(config.to_json_best_effort(sort_keys=True)):
        raise StudyError(
            f"{run_dir} was made from another config than run {run.key} of this study (another "
            "--preset, --base_config or setting?); use another --workdir, or delete that run"
        )


def train_run(run: Run, run_dir: str, config: ml_collections.ConfigDict) -> float:
    """Trains (or resumes) one run and writes its result file; returns the seconds it took.

    Raises:
      trainer.TrainingInterruptedError: on SIGTERM or Ctrl-C, after the trainer saved the step.
    """
    os.makedirs(run_dir, exist_ok=True)
    if not os.path.exists(os.path.join(run_dir, SPEC_FILE)):
        _write_json(os.path.join(run_dir, SPEC_FILE), {
            "run": run.key, "overrides": _jsonable(run.overrides),
            "config": json.loads(config.to_json_best_effort(sort_keys=True)),
        })
    start = time.perf_counter()
    result: dict[str, Any] = {"run": run.key}
    try:
        trainer.train_and_evaluate(config, run_dir)
        result["status"] = "finished"
    except trainer.TrainingDivergedError as error:
        result.update(status="diverged", error=str(error))
    except ValueError as error:
        raise StudyError(f"run {run.key}: {error}") from None
    seconds = time.perf_counter() - start
    _write_json(os.path.join(run_dir, RESULT_FILE), {**result, "seconds": seconds})
    return seconds


def _format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_study(
    studies: Sequence[str],
    workdir: str,
    *,
    bases: Mapping[str, tuple[str, ml_collections.ConfigDict]],
    preset: Preset,
    setting: str = "",
    full_grid: bool = False,
    seeds: int = 2,
    runs: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains every run of `studies` not finished yet in `workdir`, writing the outputs after
    each one and at the end; returns the content of study.json.

    Args:
      studies: names in `STUDIES`.
      bases: study name -> (label, base config); see `expand_grid` for the rest.

    Raises:
      StudyError: for an unknown study or a workdir made from other configs.
      trainer.TrainingInterruptedError: on SIGTERM or Ctrl-C, once the running run's step is
        saved and the outputs written; the same call resumes.
    """
    unknown = [s for s in studies if s not in STUDIES]
    if unknown or not studies:
        raise StudyError(f"unknown study {','.join(unknown) or '(none)'}; valid studies: "
                         f"{', '.join(STUDIES)}")
    grid = expand_grid(studies, bases, preset=preset, setting=setting, full_grid=full_grid,
                       seeds=seeds, runs=runs)
    base_configs = {label: config for label, config in bases.values()}
    runs_dir = os.path.join(workdir, "runs")
    configs = {run.key: run_config(run, base_configs[run.base]) for run in grid}
    for run in grid:  # Before anything trains: a mixed-up workdir fails at once.
        _check_spec(run, os.path.join(runs_dir, run.key), configs[run.key])
    header = {"studies": list(studies), "preset": preset.name, "seeds": seeds,
              "full_grid": full_grid, "base_configs": sorted(base_configs)}
    timings: dict[str, float] = {}

    def finished(run: Run) -> bool:
        return os.path.exists(os.path.join(runs_dir, run.key, RESULT_FILE))

    def write_outputs() -> dict[str, Any]:
        return write_study(workdir, grid, studies, header, base_configs, configs, timings,
                           full_grid=full_grid)

    try:
        for index, run in enumerate(grid, start=1):
            if finished(run):
                echo(f"[study] run {index}/{len(grid)} {run.key}: finished before, skipped")
                continue
            left = sum(not finished(r) for r in grid)
            per_run = np.mean(list(timings.values())) if timings else preset.seconds_per_run
            estimate = "measured" if timings else "preset's estimate"
            echo(f"[study] run {index}/{len(grid)} {run.key}: {len(grid) - left} finished, "
                 f"about {_format_minutes(left * per_run)} left ({estimate} of "
                 f"{_format_minutes(per_run)} a run)")
            timings[run.key] = train_run(run, os.path.join(runs_dir, run.key), configs[run.key])
            write_outputs()
    except trainer.TrainingInterruptedError:
        write_outputs()
        raise
    content = write_outputs()
    echo(_read(os.path.join(workdir, "study.md")))
    return content


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write_study(
    workdir: str,
    grid: Sequence[Run],
    studies: Sequence[str],
    header: Mapping[str, Any],
    base_configs: Mapping[str, ml_collections.ConfigDict],
    configs: Mapping[str, ml_collections.ConfigDict],
    timings: Mapping[str, float],
    *,
    full_grid: bool,
) -> dict[str, Any]:
    """study.json, study.md and the plots, from the runs' own files."""
    runs_dir = os.path.join(workdir, "runs")
    records = {}
    for run in grid:
        records[run.key] = {**collect_run(run, os.path.join(runs_dir, run.key)),
                            "headline": run.headline}
    figure4 = None
    if "figure4" in studies:
        run = next((r for r in grid if r.variant == FIGURE4_RUN
                    and r.seed == min(g.seed for g in grid)), None)
        if run is not None and records[run.key]["status"] == "finished":
            figure4 = figure4_result(configs[run.key], run, os.path.join(runs_dir, run.key))
    report = build_report(grid, records, studies, full_grid=full_grid,
                          imbalance_rows=imbalance(grid, records, base_configs),
                          figure4=figure4)
    content = {**header, "runs": records, **report, "figure4": figure4}
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "study.json"), _jsonable(content))
    _write_text(os.path.join(workdir, "study.md"),
                render_markdown(report, header, figure4, timings))
    plot_table1(report, os.path.join(workdir, "table1.png"))
    if figure4 is not None:
        plot_figure4(figure4, os.path.join(workdir, "figure4.png"))
    plot_rpn_losses(grid, runs_dir, os.path.join(workdir, "rpn_losses.png"))
    return content


# ----------------------------------------------------------------------------------------------
# Command line.


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of the Python file at `path`."""
    if not os.path.isfile(path):
        raise StudyError(f"--base_config {path}: no such file; expected a configs/*.py file")
    spec = importlib.util.spec_from_file_location(f"study_base_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception as error:  # Whatever the user's file raises is reported in one line.
        raise StudyError(f"--base_config {path}: {type(error).__name__}: {error}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise StudyError(f"--base_config {path}: get_config() returned {type(config).__name__}, "
                         "expected an ml_collections.ConfigDict")
    return config


def resolve_request(
    study: str, preset: str, base_config: str | None
) -> tuple[list[str], Preset, dict[str, tuple[str, ml_collections.ConfigDict]]]:
    """The command line's `--study`, `--preset` and `--base_config` as `run_study` arguments;
    `StudyError` with the valid values for anything else."""
    names = [s.strip() for s in study.split(",") if s.strip()]
    unknown = [s for s in names if s not in STUDIES]
    if unknown or not names:
        raise StudyError(f"unknown study {','.join(unknown) or repr(study)}; valid studies: "
                         f"{', '.join(STUDIES)} (several: comma-separated)")
    if preset not in PRESETS:
        raise StudyError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    bases = {}
    for name in names:
        path = base_config or STUDIES[name].default_base_config
        config = load_config_file(path)
        detector = STUDIES[name].detector
        if config.get("model", {}).get("name") != detector:
            raise StudyError(
                f"--base_config {path} trains {config.get('model', {}).get('name')!r}, but study "
                f"{name} needs a {detector} config (default {STUDIES[name].default_base_config})"
                "; run the studies separately"
            )
        bases[name] = (path, config)
    return names, PRESETS[preset], bases


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined only when run as a program: the `train` entry points share absl's registry."""
    flags.DEFINE_string("study", None, f"Comma-separated studies: {', '.join(STUDIES)}.")
    flags.DEFINE_string("workdir", None, "Directory of the study: runs/, study.md, study.json.")
    flags.DEFINE_string("base_config", None, "A configs/*.py file; default: the study's own.")
    flags.DEFINE_string("preset", "quick", f"Schedule: {', '.join(PRESETS)}.")
    flags.DEFINE_string("setting", "", f"One of {', '.join(SETTINGS)}; default: the study's.")
    flags.DEFINE_bool("full_grid", False, "Table 1b: every alpha at every gamma.")
    flags.DEFINE_integer("seeds", 2, "Seeds of the headline runs (>= 1).")
    flags.DEFINE_list("runs", [], "Only the runs matching these names or shell patterns.")
    flags.DEFINE_bool("list_runs", False, "Print the runs of the grid and their overrides; exit.")
    flags.mark_flags_as_required(["study", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    cli.quiet_libraries()
    try:
        studies, preset, bases = resolve_request(FLAGS.study, FLAGS.preset, FLAGS.base_config)
        if FLAGS.list_runs:
            for run in expand_grid(studies, bases, preset=preset, setting=FLAGS.setting,
                                   full_grid=FLAGS.full_grid, seeds=FLAGS.seeds,
                                   runs=FLAGS.runs):
                print(f"{run.key}: {json.dumps(_jsonable(run.overrides))}")
            return
        run_study(studies, FLAGS.workdir, bases=bases, preset=preset, setting=FLAGS.setting,
                  full_grid=FLAGS.full_grid, seeds=FLAGS.seeds, runs=FLAGS.runs,
                  echo=lambda line: print(line, flush=True))
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except trainer.TrainingInterruptedError as stop:
        print(f"{stop}; the study's outputs are written, rerun the same command to resume",
              file=sys.stderr)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
