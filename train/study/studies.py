"""The paper's numbers and the studies as data: each study's variants (named config overrides)
and the tables they fill, with the claim each table tests.

Nothing here trains or reads files; `grid.py` expands the studies into runs, `verdicts.py`
decides the claims.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from focaljax.detectors.faster_rcnn import RPN_LOSSES
from train.study import verdicts
from train.study.verdicts import Row

# ----------------------------------------------------------------------------------------------
# The papers' numbers (AP in percent).

PAPER_SOURCE = (
    "RetinaNet paper (Lin et al., Focal Loss for Dense Object Detection, ICCV 2017, "
    "arXiv 1708.02002), COCO minival, ResNet-50-FPN, 600 px"
)
# (RetinaNet paper, Table 1a): alpha-balanced CE, alpha -> AP.
PAPER_TABLE1A = {0.25: 10.8, 0.5: 30.2, 0.75: 31.1, 0.9: 30.8, 0.99: 28.7}
# (RetinaNet paper, Table 1b): focal loss, gamma -> (best alpha, AP).
PAPER_TABLE1B = {0.0: (0.75, 31.1), 0.5: (0.5, 32.9), 1.0: (0.25, 33.7), 2.0: (0.25, 34.0),
                 5.0: (0.25, 32.2)}
# (RetinaNet paper, Table 1d), ResNet-101-FPN: best OHEM (batch 128, NMS 0.5), best OHEM 1:3,
# focal loss. Its grid: batch 128, 256, 512 at NMS 0.5 and 0.7, with and without 1:3.
PAPER_TABLE1D = {"ohem_best": 32.8, "ohem_1to3_best": 31.1, "focal": 36.0}
# (RetinaNet paper, appendix A): FL*, (gamma, beta) -> AP; FL (gamma 2, alpha .25) is Table 1b's.
PAPER_FL_STAR = {(2.0, 1.0): 33.8, (4.0, 0.0): 33.9}
PAPER_IMBALANCE = "about 100k anchors an image, foreground:background near 1:1000 (sections 1, 3)"
RPN_SOURCE = (
    "FL-RPN (Chen, Song, Jiang, Focal Loss for Region Proposal Network, PRCV 2018); its claims "
    "are orderings, no table values are compared"
)
# P2-P6 of an 800x1333 image padded to 800x1344 (a multiple of 32): ceil(800 / s) x
# ceil(1344 / s) locations at strides s = 4-64, 3 anchors each: 268,569.
RPN_IMBALANCE = ("about 269k RPN anchors an image (detectron2's R50-FPN at 800x1333, P2-P6, 3 "
                 "aspect ratios), of which the standard RPN samples 256")
PAPER_INIT = "CE from a zero bias diverges (section 3.3); from the prior pi = 0.01 it trains"
PAPER_FIGURE4 = (
    "Figure 4 (R101, 600 px, gamma 2, a converged model): for negatives at gamma 2 nearly all the "
    "loss comes from a small fraction of the anchors; for positives the curve changes little "
    "with gamma"
)
FL_RPN_SOURCE = (
    "FL-RPN paper (Chen, Song, Jiang, Focal Loss for Region Proposal Network, PRCV 2018): focal "
    "loss slightly improves accuracy; the softmax form beats the sigmoid form (table values not "
    "available to us)"
)

TABLE1A_ALPHAS = (0.25, 0.5, 0.75, 0.9, 0.99)
# The paper's OHEM batch of 128 is about 1.3 anchors per positive (about 100 positives an
# image); the grid scales the batch to the setting's positives an image, so that it spans about
# 1 to 5 anchors per positive (`grid.ohem_batch`).
OHEM_ANCHORS_PER_POSITIVE = (1.3, 5.0)
OHEM_NMS_THRESHOLDS = (0.5, 0.7)
OHEM_PRE_NMS_TOPK = 512
FIGURE4_GAMMAS = (0.0, 0.5, 1.0, 2.0)

# The recipes a variant trains with. "grid" is the base config's own (for the shapes configs
# AdamW, cosine); "sgd" is the paper's (section 4.1: SGD, momentum 0.9, lr 0.01 for 16 images,
# linear warm-up, x0.1 at 2/3 and 8/9 of the run), with which section 3.3's claim was made: Adam
# bounds every step, so a zero-bias start cannot blow up the same way.
SGD_RECIPE = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.01,
              "optimizer.momentum": 0.9, "schedule.name": "step", "schedule.decay_factor": 0.1}
SGD_DECAY_FRACTIONS = (2 / 3, 8 / 9)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting of the loss: `name` names its runs (`{name}_s{seed}`). `seeds` is None for
    every seed of the study (the rows that enter a verdict), or how many a side run gets.
    `ohem_per_positive` asks for an OHEM batch of that many anchors per positive of the
    setting; `recipe` is a key of the recipes above; `schedule_factor` trains it that many times
    the preset's steps."""

    name: str
    overrides: Mapping[str, Any]
    seeds: int | None = None
    ohem_per_positive: float | None = None
    recipe: str = "grid"
    schedule_factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class Table:
    """`claim(stats, rows) -> str` is the table's verdict line, from each row's `Stats` per
    metric (`stats[variant][metric]`)."""

    key: str
    title: str
    source: str
    rows: tuple[Row, ...]
    metrics: tuple[str, ...]
    claim: Callable[[Mapping[str, Mapping[str, verdicts.Stats]], tuple[Row, ...]], str]
    # A schedule check (the preset's row, then the one at twice the steps): its
    # `verdicts.schedule_verdict` says in study.md whether the study's runs converged.
    schedule_check: bool = False


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    detector: str
    default_base_config: str
    default_setting: str  # Used with a shapes base config; other data sets use "base".
    variants: Callable[[bool], list[Variant]]
    tables: Callable[[bool], list[Table]]
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    paper_source: str = PAPER_SOURCE  # Where the paper's numbers and claims come from.
    paper_regime: str = PAPER_IMBALANCE  # The anchors and imbalance the paper trains with.


def _g(value: float) -> str:
    return f"{value:g}"


def alpha_ce(alpha: float) -> Variant:
    return Variant(f"alpha_ce_a{_g(alpha)}",
                   {"model.loss.cls": "alpha_ce", "model.loss.alpha": alpha})


def focal(gamma: float, alpha: float, seeds: int | None = None) -> Variant:
    if gamma == 0:  # FL at gamma 0 is alpha-balanced CE: one run for both tables.
        return dataclasses.replace(alpha_ce(alpha), seeds=seeds)
    return Variant(
        f"focal_g{_g(gamma)}_a{_g(alpha)}",
        {"model.loss.cls": "focal", "model.loss.gamma": gamma, "model.loss.alpha": alpha},
        seeds,
    )


def ohem(per_positive: float, nms: float, one_to_three: bool) -> Variant:
    """The paper's OHEM: cross-entropy on the highest-loss anchors of each image after greedy NMS
    over them (anchor boxes) at `nms`; a batch of `per_positive` anchors per positive of the
    setting; `one_to_three`: SSD's rule, every picked positive and at most 3 negatives for each.
    NMS runs over the `OHEM_PRE_NMS_TOPK` highest-loss anchors of an image: with a positive rule
    it must visit all of its candidates (about 1.2 s an image at 49k anchors on this CPU), so the
    candidates are bounded the same way in every OHEM row."""
    return Variant(
        f"ohem_x{_g(per_positive)}_nms{_g(nms)}" + ("_1to3" if one_to_three else ""),
        {"model.loss.cls": "ohem", "model.loss.ohem_nms_iou_threshold": nms,
         "model.loss.ohem_pre_nms_topk": OHEM_PRE_NMS_TOPK, "model.loss.ohem_nms_boxes": "anchors",
         "model.loss.ohem_positive_fraction": 0.0,
         "model.loss.ohem_negative_ratio": 3.0 if one_to_three else 0.0},
        ohem_per_positive=per_positive,
    )


def ohem_label(variant: Variant) -> str:
    """An OHEM row's label: its anchors per positive and NMS threshold, "1:3" for SSD's rule."""
    rule = " 1:3" if variant.overrides["model.loss.ohem_negative_ratio"] else ""
    nms = variant.overrides["model.loss.ohem_nms_iou_threshold"]
    return f"OHEM{rule}, {_g(variant.ohem_per_positive)} per positive, NMS {_g(nms)}"


def fl_star(gamma: float, beta: float) -> Variant:
    return Variant(
        f"flstar_g{_g(gamma)}_b{_g(beta)}",
        {"model.loss.cls": "fl_star", "model.loss.gamma": gamma, "model.loss.fl_star_beta": beta},
    )


def ce_init(prior_prob: float) -> Variant:
    """Plain CE under the paper's SGD from the prior (`model.prior_prob` 0.01) or from a zero
    bias (0.5: sigmoid(0)); only the initialisation differs."""
    name = "ce_prior_sgd" if prior_prob != 0.5 else "ce_bias0_sgd"
    return Variant(name, {"model.loss.cls": "ce", "model.prior_prob": prior_prob}, recipe="sgd")


BEST_FOCAL = focal(2.0, 0.25)
# Table 1d's axes, one step from the paper's best OHEM (batch about 1.3 a positive, NMS 0.5): NMS
# 0.7, a batch of about 5 a positive, and SSD's 1:3 at that batch (at 1.3 a positive the batch
# leaves no room for 3 negatives a positive).
OHEM_VARIANTS = (ohem(1.3, 0.5, False), ohem(1.3, 0.7, False), ohem(5.0, 0.5, False),
                 ohem(5.0, 0.5, True))
# The schedule check: FL at twice the preset's steps, one seed.
FL_LONG = dataclasses.replace(BEST_FOCAL, name=f"{BEST_FOCAL.name}_2x", seeds=1,
                              schedule_factor=2.0)


def table1_variants(full_grid: bool) -> list[Variant]:
    variants = [alpha_ce(a) for a in TABLE1A_ALPHAS]
    for gamma, (best, _) in PAPER_TABLE1B.items():
        variants.append(focal(gamma, best))
        if full_grid:  # Every other alpha at every gamma: one seed, no verdict of its own.
            variants += [focal(gamma, a, seeds=1) for a in TABLE1A_ALPHAS if a != best]
    variants += list(OHEM_VARIANTS)
    variants += [fl_star(g, b) for g, b in PAPER_FL_STAR]
    variants += [ce_init(0.01), ce_init(0.5), FL_LONG]
    return _unique(variants)


def _unique(variants: list[Variant]) -> list[Variant]:
    seen: dict[str, Variant] = {}
    for variant in variants:
        seen.setdefault(variant.name, variant)
    return list(seen.values())


AP_METRICS = ("AP", "AP50", "AP@0.05", "AP50@0.05")
_R101 = "(ResNet-101)"  # Table 1d's numbers, beside the ResNet-50 of the other tables.


def table1_tables(full_grid: bool) -> list[Table]:
    # The central claim's FL rows: the paper's (gamma 2) first, then Table 1b's other gammas.
    focal_rows = [Row("FL (gamma 2, alpha 0.25)", BEST_FOCAL.name, PAPER_TABLE1B[2.0][1])]
    focal_rows += [Row(f"FL (gamma {_g(g)}, alpha {_g(a)})", focal(g, a).name, ap)
                   for g, (a, ap) in PAPER_TABLE1B.items() if g not in (0.0, 2.0)]
    tables = [
        Table(
            "table1a", "Table 1a: alpha-balanced CE (gamma 0)", "(RetinaNet paper, Table 1a)",
            tuple(Row(f"alpha {_g(a)}", alpha_ce(a).name, PAPER_TABLE1A[a])
                  for a in TABLE1A_ALPHAS),
            AP_METRICS, verdicts.best_row_claim,
        ),
        Table(
            "table1b", "Table 1b: focal loss at the paper's best alpha for each gamma",
            "(RetinaNet paper, Table 1b)",
            tuple(Row(f"gamma {_g(g)}, alpha {_g(a)}", focal(g, a).name, ap)
                  for g, (a, ap) in PAPER_TABLE1B.items()),
            AP_METRICS, verdicts.best_row_claim,
        ),
        Table(
            "fl_vs_ce", "FL against the best alpha-balanced CE (the paper's central claim)",
            "(RetinaNet paper, Table 1a-b: FL gamma 2 34.0 against alpha-CE 31.1)",
            (*focal_rows, *(Row(f"alpha-CE, alpha {_g(a)}", alpha_ce(a).name, PAPER_TABLE1A[a])
                            for a in TABLE1A_ALPHAS)),
            AP_METRICS, functools.partial(verdicts.tuned_fl_claim, focal_rows=len(focal_rows)),
        ),
    ]
    if full_grid:
        tables.append(Table(
            "table1b_grid", "Table 1b, every alpha x gamma, one seed each (no verdict)",
            "(RetinaNet paper, Table 1b: the AP of its best alpha per gamma)",
            tuple(Row(f"gamma {_g(g)}, alpha {_g(a)}", focal(g, a).name,
                      ap if a == best else None)
                  for g, (best, ap) in PAPER_TABLE1B.items() for a in TABLE1A_ALPHAS),
            AP_METRICS, verdicts.no_claim,
        ))
    ohem_rows = []
    for variant in OHEM_VARIANTS:
        k = variant.ohem_per_positive
        nms = variant.overrides["model.loss.ohem_nms_iou_threshold"]
        if variant.overrides["model.loss.ohem_negative_ratio"]:
            ohem_rows.append(Row(ohem_label(variant), variant.name, None,
                                 f"best 1:3: {PAPER_TABLE1D['ohem_1to3_best']} {_R101}"))
        else:
            paper = PAPER_TABLE1D["ohem_best"] if (k, nms) == (1.3, 0.5) else None
            ohem_rows.append(Row(ohem_label(variant), variant.name, paper,
                                 _R101 if paper else "grid of the paper's Table 1d"))
    tables += [
        Table(
            "table1d", "Table 1d: focal loss against the paper's OHEM (NMS over the anchors)",
            "(RetinaNet paper, Table 1d; the paper's numbers are ResNet-101-FPN)",
            (Row("FL (gamma 2, alpha 0.25)", BEST_FOCAL.name, PAPER_TABLE1D["focal"], _R101),
             *ohem_rows),
            AP_METRICS, verdicts.first_beats_best_of_rest_claim,
        ),
        Table(
            "fl_star", "Appendix A: FL* against FL", "(RetinaNet paper, appendix A; Table 1b)",
            (Row("FL (gamma 2, alpha 0.25)", BEST_FOCAL.name, PAPER_TABLE1B[2.0][1]),
             *(Row(f"FL* (gamma {_g(g)}, beta {_g(b)})", fl_star(g, b).name, ap)
               for (g, b), ap in PAPER_FL_STAR.items())),
            AP_METRICS, verdicts.no_difference_claim,
        ),
        Table(
            "init", "Section 3.3: plain CE under the paper's SGD, prior-bias initialisation",
            "(RetinaNet paper, section 3.3; plain CE is alpha 0.5 up to a factor 2, Table 1a)",
            (Row("CE, bias from pi = 0.01", ce_init(0.01).name, PAPER_TABLE1A[0.5]),
             Row("CE, bias 0", ce_init(0.5).name, None, "diverges")),
            AP_METRICS, verdicts.init_claim,
        ),
        Table(
            "schedule", "Schedule check: FL at twice the steps (one seed)",
            "(no paper number: whether our runs ended converged)",
            (Row("FL, the preset's steps", BEST_FOCAL.name),
             Row("FL, twice the steps", FL_LONG.name)),
            AP_METRICS, verdicts.schedule_claim, schedule_check=True,
        ),
    ]
    return tables


def figure4_variants(full_grid: bool) -> list[Variant]:
    del full_grid
    return [FL_LONG]  # The most converged focal-loss model of the study.


def rpn_variant(loss: str) -> Variant:
    return Variant(f"rpn_{loss}", {"model.rpn.loss": loss})


# FL-RPN's loss (the shapes Faster R-CNN's default) at twice the preset's steps, one seed: whether
# the RPN study's runs ended converged.
RPN_LONG = dataclasses.replace(rpn_variant("focal_softmax"), name="rpn_focal_softmax_2x",
                               seeds=1, schedule_factor=2.0)


def rpn_variants(full_grid: bool) -> list[Variant]:
    del full_grid
    return [rpn_variant(name) for name in RPN_LOSSES] + [RPN_LONG]


def rpn_tables(full_grid: bool) -> list[Table]:
    del full_grid
    return [
        Table(
            "rpn", "FL-RPN: the RPN loss of a Faster R-CNN",
            "(FL-RPN paper; no table values). AR@100: the RPN's class-agnostic proposal recall "
            "at 100 proposals an image",
            tuple(Row(name, rpn_variant(name).name) for name in RPN_LOSSES),
            ("AP", "AP50", "AP@0.05", "AR@100", "rpn_box_noise"), verdicts.rpn_claim,
        ),
        Table(
            "rpn_schedule", "Schedule check: FL-RPN at twice the steps (one seed)",
            "(no paper number: whether the RPN study's runs ended converged)",
            (Row("FL-RPN (softmax), the preset's steps", rpn_variant("focal_softmax").name),
             Row("FL-RPN (softmax), twice the steps", RPN_LONG.name)),
            AP_METRICS, verdicts.schedule_claim, schedule_check=True,
        ),
    ]


STUDIES = {
    "table1": Study("table1", "retinanet", "configs/shapes_retinanet.py", "paper_regime",
                    table1_variants, table1_tables),
    "figure4": Study("figure4", "retinanet", "configs/shapes_retinanet.py", "paper_regime",
                     figure4_variants, lambda full_grid: []),
    "rpn": Study("rpn", "faster_rcnn", "configs/shapes_faster_rcnn.py", "rpn_regime",
                 rpn_variants, rpn_tables, overrides={"log_every_steps": 2},
                 paper_source=RPN_SOURCE, paper_regime=RPN_IMBALANCE),
}
FIGURE4_VARIANT = FL_LONG.name
