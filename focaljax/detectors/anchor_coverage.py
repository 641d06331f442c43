"""How well a detector's anchors fit a data set's objects: the anchor-coverage report.

An object that no anchor overlaps at the foreground IoU is trained only through the matcher's
low-quality matches (or not at all), and a user whose boxes are far from the anchor sizes finds
out after a long run. The report measures, for a config's anchors and image size (its detector's:
`detector_anchors`) and the ground truth as the detector sees it (resized, crowd regions left
out: `dataset_boxes`):

- the objects' sizes, `sqrt(w * h)` in input pixels, and aspect ratios `h / w`, beside the
  anchors' (the anchors' ratios use the same `height / width` convention);
- coverage: the share of objects whose best anchor has IoU >= the foreground threshold, and
  >= 0.4 and 0.5;
- the share positive only through a low-quality match: best IoU below the foreground threshold,
  but trained on its best anchors because the matcher keeps them;
- positives: the anchors `focaljax.ops.matching.match` makes foreground for each object, and
  per image;
- a suggestion: the smallest change, on a small grid, of the detector's anchor fields (RetinaNet:
  `anchor_base_scale`, `anchor_scales`, `aspect_ratios`; Faster R-CNN's RPN: `anchor_sizes`,
  `aspect_ratios`) after which at least `COVERAGE_TARGET` of the objects have an anchor at the
  foreground IoU (`suggest_anchors`);
- a picture of the size and ratio distributions against the anchors' (`save_picture`).

`python -m train.prepare_data --config ...` prints it; `report_anchor_coverage` prints it and a
one-line warning below the target, for the start of training.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from focaljax import detectors
from focaljax.data.pipeline import create_eval_iterator
from focaljax.detectors.retinanet import retinanet_anchors
from focaljax.ops import matching
from focaljax.ops.boxes import pairwise_iou

__all__ = [
    "COVERAGE_TARGET",
    "AnchorSetup",
    "CoverageReport",
    "MatchedObjects",
    "Suggestion",
    "anchor_coverage_report",
    "best_anchor_iou",
    "dataset_boxes",
    "detector_anchors",
    "match_objects",
    "report_anchor_coverage",
    "suggest_anchors",
]

COVERAGE_TARGET = 0.95
"""The share of objects that should have an anchor at the foreground IoU."""
REPORT_IOUS = (0.4, 0.5)
"""IoUs the coverage is reported at besides the foreground threshold."""
# The suggestion grid: the size fields times 2**(k / 4) for |k| <= 8 (a quarter octave a step,
# up to two octaves either way), and these alternatives of the per-location shapes.
SIZE_STEPS = 8
SCALE_OPTIONS = (
    (1.0,),
    (1.0, 2 ** (1 / 2)),
    (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
    (1.0, 2 ** (1 / 4), 2 ** (1 / 2), 2 ** (3 / 4)),
)
RATIO_OPTIONS = ((1.0,), (0.5, 1.0, 2.0), (1 / 3, 0.5, 1.0, 2.0, 3.0), (0.25, 0.5, 1.0, 2.0, 4.0))


@dataclasses.dataclass(frozen=True)
class AnchorSetup:
    """A detector's anchors for one image size and the matcher that assigns them.

    Attributes:
      anchors: float32 `[A, 4]` xyxy, input pixels, in the order (level, y, x, anchor) of
        `focaljax.ops.generate_anchors`.
      anchors_per_level: how many of them each level has.
      fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches: the matcher's settings.
    """

    anchors: np.ndarray
    anchors_per_level: tuple[int, ...]
    fg_iou_threshold: float
    bg_iou_threshold: float
    allow_low_quality_matches: bool


# The detectors whose anchors the report knows (`detector_anchors`).
DETECTORS = ("retinanet", "faster_rcnn")


def detector_anchors(model: Any, image_size: Sequence[int]) -> AnchorSetup:
    """The anchors and matcher of the detector of model config `model` (`config.model`) for
    `image_size` `(height, width)` inputs: a RetinaNet's, or a Faster R-CNN's RPN's.

    Examples:
      >>> from focaljax.detectors import retinanet
      >>> model = retinanet.default_config()  # The shapes config's anchors: 16-101 px, P3-P5.
      >>> model.update(max_level=5, anchor_base_scale=2.0, aspect_ratios=(1.0,))
      >>> setup = detector_anchors(model, (128, 128))
      >>> setup.anchors.shape, setup.anchors_per_level, setup.fg_iou_threshold
      ((1008, 4), (768, 192, 48), 0.5)
    """
    image_size = tuple(int(s) for s in image_size)
    if model.name == "retinanet":
        anchors, per_level = retinanet_anchors(model, image_size)
        matcher = model
    elif model.name == "faster_rcnn":
        module = detectors.build(model, num_classes=1, image_size=image_size).module
        anchors, per_level = module.anchors(image_size)
        matcher = model.rpn
    else:
        raise ValueError(f"model.name is {model.name!r}: the anchor report knows the anchors of "
                         "'retinanet' and 'faster_rcnn'")
    return AnchorSetup(
        anchors=np.asarray(anchors, np.float32), anchors_per_level=tuple(per_level),
        fg_iou_threshold=float(matcher.fg_iou_threshold),
        bg_iou_threshold=float(matcher.bg_iou_threshold),
        allow_low_quality_matches=bool(matcher.allow_low_quality_matches),
    )


@dataclasses.dataclass(frozen=True)
class MatchedObjects:
    """The objects of some images matched to anchors as the detector's matcher does it.

    Attributes:
      boxes: float32 `[N, 4]` xyxy, the objects of all images.
      best_iou: float32 `[N]`, each object's highest IoU with an anchor.
      positives: int `[N]`, the anchors made foreground for each object.
      num_images: images the objects come from (images without objects count).
      num_positive_anchors: foreground anchors over all images.
    """

    boxes: np.ndarray
    best_iou: np.ndarray
    positives: np.ndarray
    num_images: int
    num_positive_anchors: int

    def coverage(self, iou: float) -> float:
        """The share of objects with an anchor at IoU >= `iou` (0 without objects)."""
        return float(np.mean(self.best_iou >= iou)) if len(self.best_iou) else 0.0


def match_objects(
    anchors: np.ndarray,
    boxes_per_image: Sequence[np.ndarray],
    *,
    fg_iou_threshold: float,
    bg_iou_threshold: float,
    allow_low_quality_matches: bool,
) -> MatchedObjects:
    """Matches each image's objects `boxes_per_image[i]` (`[M_i, 4]` xyxy, the pixels of the
    anchors) to `anchors` `[A, 4]` with `focaljax.ops.matching.match`.

    An object's positives are the anchors matched to it: those with IoU >= `fg_iou_threshold`
    whose best object it is, and with low-quality matches its best anchors.

    Examples:
      >>> anchors = np.array([[0, 0, 10, 10], [0, 0, 20, 20]], np.float32)
      >>> boxes = [np.array([[0, 0, 10, 10], [0, 0, 16, 16]], np.float32)]
      >>> m = match_objects(anchors, boxes, fg_iou_threshold=0.5, bg_iou_threshold=0.4,
      ...                   allow_low_quality_matches=True)
      >>> [round(float(iou), 4) for iou in m.best_iou], m.positives.tolist()  # 256 / 400
      ([1.0, 0.64], [1, 1])
    """
    all_boxes, best, positives = [], [], []
    num_positive = 0
    for boxes in boxes_per_image:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        # Padded to a power of 2 rows (masked in `match`), so that a few shapes are compiled.
        rows = 1 << (len(boxes) - 1).bit_length()
        padded = np.concatenate([boxes, np.zeros((rows - len(boxes), 4), np.float32)])
        iou = pairwise_iou(padded, anchors)
        matched, labels = matching.match(
            iou, fg_iou_threshold=fg_iou_threshold, bg_iou_threshold=bg_iou_threshold,
            allow_low_quality_matches=allow_low_quality_matches, valid=np.arange(rows) < len(boxes),
        )
        matched, labels = np.asarray(matched), np.asarray(labels)
        all_boxes.append(boxes)
        best.append(np.asarray(iou)[:len(boxes)].max(axis=1))
        positives.append(np.bincount(matched[matched >= 0], minlength=len(boxes)))
        num_positive += int(np.sum(labels == matching.FOREGROUND))
    if not all_boxes:
        all_boxes, best, positives = [np.zeros((0, 4), np.float32)], [np.zeros(0)], [np.zeros(0)]
    return MatchedObjects(
        boxes=np.concatenate(all_boxes), best_iou=np.concatenate(best).astype(np.float32),
        positives=np.concatenate(positives).astype(np.int64), num_images=len(boxes_per_image),
        num_positive_anchors=num_positive,
    )


def _nearest(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of the value of `sorted_values` nearest to each query."""
    right = np.clip(np.searchsorted(sorted_values, queries), 1, len(sorted_values) - 1)
    left = right - 1
    if len(sorted_values) == 1:
        return np.zeros(len(queries), np.int64)
    closer_left = queries - sorted_values[left] <= sorted_values[right] - queries
    return np.where(closer_left, left, right)


def _iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of broadcastable xyxy boxes, `focaljax.ops.boxes.pairwise_iou`'s formula in NumPy:
    the suggestion search calls it for hundreds of anchor sets of different shapes, each of
    which would compile the jnp version anew."""
    sides = np.maximum(np.minimum(boxes1[..., 2:], boxes2[..., 2:])
                       - np.maximum(boxes1[..., :2], boxes2[..., :2]), 0)
    intersection = sides[..., 0] * sides[..., 1]

    def area(boxes: np.ndarray) -> np.ndarray:
        return (np.maximum(boxes[..., 2] - boxes[..., 0], 0)
                * np.maximum(boxes[..., 3] - boxes[..., 1], 0))

    union = area(boxes1) + area(boxes2) - intersection
    positive = union > 0
    return np.where(positive, intersection / np.where(positive, union, 1), 0).astype(np.float32)


def best_anchor_iou(
    anchors: np.ndarray, anchors_per_level: Sequence[int], boxes: np.ndarray
) -> np.ndarray:
    """Each box's highest IoU with any anchor, without the `[N, A]` IoU matrix.

    The anchors of one shape on one level have their centres on a grid, and the IoU of two boxes
    of given sizes only falls as their centres move apart along either axis, so a box's best
    anchor of that shape is the one whose centre is nearest to the box's along x and along y.
    One IoU per box and (level, shape) is computed; a level whose anchors do not lie on a grid
    in the order (y, x, anchor) is compared with all of its anchors.

    Args:
      anchors: `[A, 4]` xyxy, in the order (level, y, x, anchor) of
        `focaljax.ops.generate_anchors`.
      anchors_per_level: how many of the anchors each level has; they sum to `A`.
      boxes: `[N, 4]` xyxy, in the pixels of the anchors.

    Returns:
      float32 `[N]`, equal to `pairwise_iou(boxes, anchors).max(axis=1)`.

    Examples:
      >>> from focaljax.ops import generate_anchors
      >>> anchors = generate_anchors((64, 64), min_level=3, max_level=4, scales=(1.0,),
      ...                            aspect_ratios=(1.0,))  # 32 px every 8, 64 px every 16
      >>> boxes = np.array([[4, 4, 36, 36], [20, 20, 44, 44]], np.float32)
      >>> best_anchor_iou(anchors, (64, 16), boxes).round(4).tolist()  # 576 / 1024 for 24 px
      [1.0, 0.5625]
    """
    anchors = np.asarray(anchors, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if sum(anchors_per_level) != len(anchors):
        raise ValueError(f"anchors_per_level {tuple(anchors_per_level)} sum to "
                         f"{sum(anchors_per_level)}, expected the {len(anchors)} anchors")
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    candidates, best = [], np.zeros(len(boxes), np.float32)
    start = 0
    for count in anchors_per_level:
        level = anchors[start:start + count]
        start += count
        # Rounded: the anchors of one cell differ in their centres by float32 rounding.
        centres = np.round((level[:, :2].astype(np.float64) + level[:, 2:]) / 2, 3)
        xs, ys = np.unique(centres[:, 0]), np.unique(centres[:, 1])
        cells = len(xs) * len(ys)
        per_cell = count // cells
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 1, 2)
        if cells * per_cell != count or not np.array_equal(
            centres.reshape(cells, per_cell, 2), np.broadcast_to(grid, (cells, per_cell, 2))
        ):
            for i in range(0, len(boxes), 256):  # [256, A_level] at a time
                iou = _iou(boxes[i:i + 256, None, :], level[None, :, :]).max(axis=1)
                best[i:i + 256] = np.maximum(best[i:i + 256], iou)
            continue
        cell = _nearest(ys, box_centres[:, 1]) * len(xs) + _nearest(xs, box_centres[:, 0])
        candidates.append(level.reshape(cells, per_cell, 4)[cell])  # [N, per_cell, 4]
    if candidates:
        nearest = np.concatenate(candidates, axis=1)
        best = np.maximum(best, _iou(boxes[:, None, :], nearest).max(axis=1))
    return best


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """Anchor fields of a model config (`{"anchor_base_scale": 1.68, ...}`, only the changed
    ones; empty for the config as it is) and the share of objects they cover at the foreground
    IoU, with the anchors they make per image."""

    fields: Mapping[str, Any]
    coverage: float
    num_anchors: int


def _size_field(model: Any) -> str:
    return "anchor_base_scale" if model.name == "retinanet" else "anchor_sizes"


def _candidates(model: Any) -> list[tuple[tuple[int, int], dict[str, Any]]]:
    """`((fields changed, steps), changed fields)` of the grid around `model`'s anchors."""
    size_field = _size_field(model)
    size = model[size_field]
    shape_fields = {"aspect_ratios": RATIO_OPTIONS}
    if model.name == "retinanet":
        shape_fields = {"anchor_scales": SCALE_OPTIONS, **shape_fields}

    def scaled(k: int) -> Any:
        factor = 2 ** (k / 4)
        if isinstance(size, (int, float)):
            return round(float(size) * factor, 2)
        return tuple(round(float(s) * factor, 1) for s in size)

    def same(a: Sequence[float], b: Sequence[float]) -> bool:
        return len(a) == len(b) and np.allclose(a, b, rtol=1e-3)

    shape_choices = []
    for name, options in shape_fields.items():
        current = tuple(model[name])
        shape_choices.append([None] + [
            (name, tuple(round(v, 4) for v in option)) for option in options
            if not same(option, current)
        ])
    result = []
    for k in range(-SIZE_STEPS, SIZE_STEPS + 1):
        for shapes in itertools.product(*shape_choices):
            fields = {size_field: scaled(k)} if k else {}
            fields.update(dict(choice for choice in shapes if choice is not None))
            result.append(((len(fields), abs(k) + sum(c is not None for c in shapes)), fields))
    return sorted(result, key=lambda item: item[0])


def suggest_anchors(
    model: Any,
    image_size: Sequence[int],
    boxes: np.ndarray,
    *,
    target: float = COVERAGE_TARGET,
) -> tuple[Suggestion | None, Suggestion]:
    """The smallest change of `model`'s anchor fields (`config.model`, a RetinaNet or a Faster
    R-CNN) on the module's grid after which at least `target` of `boxes` (`[N, 4]`, input
    pixels) have an anchor at the matcher's foreground IoU.

    The grid: the size field (`anchor_base_scale`, or all of `anchor_sizes`) times `2**(k / 4)`,
    `|k| <= 8`, and the alternatives `SCALE_OPTIONS` (RetinaNet) and `RATIO_OPTIONS`. A change is
    smaller when it changes fewer fields, then when it takes fewer steps (each `k` one, each
    other option one); among the changes of the smallest size that reach `target`, the one
    covering most objects, then with the fewest anchors, wins.

    Returns:
      `(suggestion, best)`: the suggestion (the config itself, `fields` empty, when it reaches
      `target`), or None when nothing on the grid does; `best` covers most objects on the grid.

    Examples:
      >>> from focaljax.detectors import retinanet
      >>> model = retinanet.default_config()  # 16-101 px anchors, one aspect ratio
      >>> model.update(max_level=5, anchor_base_scale=2.0, aspect_ratios=(1.0,))
      >>> boxes = np.array([[7, 7, 17, 17], [39, 39, 49, 49]], np.float32)  # 10 px, IoU 0.39
      >>> suggestion, _ = suggest_anchors(model, (128, 128), boxes)  # 13.5 px anchors: 0.55
      >>> dict(suggestion.fields), suggestion.coverage
      ({'anchor_base_scale': 1.68}, 1.0)
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    best, chosen, chosen_cost = None, None, None
    for cost, fields in _candidates(model):
        if chosen_cost is not None and cost != chosen_cost:
            break
        candidate = model.copy_and_resolve_references()
        for name, value in fields.items():
            candidate[name] = value
        setup = detector_anchors(candidate, image_size)
        covered = best_anchor_iou(setup.anchors, setup.anchors_per_level, boxes)
        coverage = float(np.mean(covered >= setup.fg_iou_threshold)) if len(boxes) else 1.0
        result = Suggestion(fields, coverage, len(setup.anchors))
        if best is None or coverage > best.coverage:
            best = result
        if coverage >= target and (chosen is None or (-coverage, result.num_anchors) < (
                -chosen.coverage, chosen.num_anchors)):
            chosen, chosen_cost = result, cost
    return chosen, best


def dataset_boxes(
    builder: Any, *, split: str, image_size: Sequence[int], max_boxes: int,
    max_images: int = 500,
) -> list[np.ndarray]:
    """The objects of the first `max_images` images of `split` of the prepared TFDS `builder`
    (e.g. `focaljax.data.build(config.dataset).builder`), `[M_i, 4]` xyxy in the pixels of
    `image_size` inputs as the evaluation batches have them (resized, at most `max_boxes` rows),
    crowd regions left out (no anchor is matched to them)."""
    per_device = max(1, min(max_images, 64) // jax.local_device_count())
    iterator = create_eval_iterator(
        builder, split=split, image_size=image_size, max_boxes=max_boxes,
        per_device_batch_size=per_device,
    )
    result = []
    for batch in iterator:
        boxes = np.asarray(batch["boxes"]).reshape(-1, max_boxes, 4)
        keep = (np.asarray(batch["labels"]) >= 0) & ~np.asarray(batch["is_crowd"])
        keep = keep.reshape(-1, max_boxes)
        for i in np.flatnonzero(np.asarray(batch["valid"]).reshape(-1)):
            result.append(boxes[i][keep[i]])
            if len(result) == max_images:
                return result
    return result


def _sizes_and_ratios(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.sqrt(width * height), height / np.maximum(width, 1e-6)


def _fmt(fields: Mapping[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, tuple):
            return "(" + ",".join(f"{x:.4g}" for x in v) + ("," if len(v) == 1 else "") + ")"
        return f"{v:.4g}"

    return " ".join(f"--config.model.{name}={value(v)}" for name, v in fields.items())


@dataclasses.dataclass(frozen=True)
class CoverageReport:
    """The anchor-coverage report of a model config over some images' objects (module
    docstring): `anchor_coverage_report` makes it, `lines` prints it."""

    model_name: str
    image_size: tuple[int, int]
    setup: AnchorSetup
    matched: MatchedObjects
    suggestion: Suggestion | None
    best: Suggestion
    target: float

    @property
    def coverage_at_fg(self) -> float:
        return self.matched.coverage(self.setup.fg_iou_threshold)

    @property
    def low_quality_only(self) -> float:
        """The share of objects with positives but no anchor at the foreground IoU."""
        m = self.matched
        below = (m.best_iou < self.setup.fg_iou_threshold) & (m.positives > 0)
        return float(np.mean(below)) if len(below) else 0.0

    def anchor_shapes(self) -> tuple[np.ndarray, np.ndarray]:
        """The anchors' distinct sizes `sqrt(w * h)` and aspect ratios `h / w`."""
        sizes, ratios = _sizes_and_ratios(self.setup.anchors.astype(np.float64))
        return np.unique(sizes.round(1)), np.unique(ratios.round(3))

    def figures(self) -> dict[str, float]:
        """The report's numbers, keyed by name."""
        m, fg = self.matched, self.setup.fg_iou_threshold
        objects = len(m.best_iou)
        figures = {
            "images": m.num_images, "objects": objects,
            "objects_per_image": objects / max(m.num_images, 1),
            "anchors_per_image": len(self.setup.anchors),
            "positives_per_image": m.num_positive_anchors / max(m.num_images, 1),
            "positives_per_object": float(np.mean(m.positives)) if objects else 0.0,
            "objects_without_positive": float(np.mean(m.positives == 0)) if objects else 0.0,
            "objects_at_fg_iou": self.coverage_at_fg,
            "objects_positive_only_by_low_quality_match": self.low_quality_only,
        }
        for iou in sorted({*REPORT_IOUS, fg}):
            figures[f"objects_at_iou_{iou:g}"] = m.coverage(iou)
        return figures

    def lines(self) -> list[str]:
        """The report as lines of text."""
        f, setup, m = self.figures(), self.setup, self.matched
        fg = setup.fg_iou_threshold
        anchor_sizes, anchor_ratios = self.anchor_shapes()
        lines = [
            f"Anchor coverage: {self.model_name}, {self.image_size[0]}x{self.image_size[1]} "
            f"inputs, {f['anchors_per_image']} anchors, sizes "
            f"{', '.join(f'{s:g}' for s in anchor_sizes)} px, aspect ratios (h/w) "
            f"{', '.join(f'{r:g}' for r in anchor_ratios)}; foreground IoU >= {fg:g}"
            f"{', low-quality matches on' if setup.allow_low_quality_matches else ''}",
            f"  {f['objects']} objects in {f['images']} images "
            f"({f['objects_per_image']:.2f} an image)",
        ]
        if f["objects"]:
            sizes, ratios = _sizes_and_ratios(m.boxes.astype(np.float64))
            percentiles = (0, 5, 25, 50, 75, 95, 100)

            def spread(values: np.ndarray, digits: str) -> str:
                return " ".join(f"p{p}={np.percentile(values, p):{digits}}" for p in percentiles)

            coverage = ", ".join(f">= {iou[len('objects_at_iou_'):]}: {value:.1%}"
                                 for iou, value in f.items() if iou.startswith("objects_at_iou_"))
            lines += [
                f"  object size sqrt(wh), px: {spread(sizes, '.1f')}",
                f"  object aspect ratio h/w:  {spread(ratios, '.2f')}",
                f"  objects whose best anchor has IoU {coverage}",
                f"  positive only through a low-quality match: "
                f"{f['objects_positive_only_by_low_quality_match']:.1%}; without any positive "
                f"anchor: {f['objects_without_positive']:.1%}",
                f"  positive anchors: {f['positives_per_object']:.2f} an object (median "
                f"{np.median(m.positives):g}, min {m.positives.min()}), "
                f"{f['positives_per_image']:.2f} an image",
            ]
        lines.append("  " + self.suggestion_line())
        return lines

    def suggestion_line(self) -> str:
        fg, target = self.setup.fg_iou_threshold, self.target
        if self.suggestion is not None and not self.suggestion.fields:
            return (f"the anchors cover {self.coverage_at_fg:.1%} of the objects at IoU >= "
                    f"{fg:g} (target {target:.0%}): no change needed")
        if self.suggestion is not None:
            s = self.suggestion
            return (f"suggestion: {_fmt(s.fields)} covers {s.coverage:.1%} at IoU >= {fg:g} "
                    f"(now {self.coverage_at_fg:.1%}), {s.num_anchors} anchors")
        b = self.best
        return (f"no anchor change on the grid covers {target:.0%} at IoU >= {fg:g}; the best, "
                f"{_fmt(b.fields) or 'the config as it is'}, covers {b.coverage:.1%}")

    def warning(self) -> str | None:
        """One line when the coverage at the foreground IoU is below the target, else None."""
        if self.coverage_at_fg >= self.target:
            return None
        return (f"warning: only {self.coverage_at_fg:.1%} of the objects have an anchor at IoU "
                f">= {self.setup.fg_iou_threshold:g} (the foreground threshold; target "
                f"{self.target:.0%}); {self.suggestion_line()}")

    def save_picture(self, path: str) -> None:
        """A PNG at `path`: the objects' sizes and aspect ratios against the anchors', and each
        object's best anchor IoU by its size."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker

        sizes, ratios = _sizes_and_ratios(self.matched.boxes.astype(np.float64))
        anchor_sizes, anchor_ratios = self.anchor_shapes()
        fg = self.setup.fg_iou_threshold
        figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
        size_range = np.concatenate([sizes, anchor_sizes])
        bins = np.geomspace(max(size_range.min(), 1.0) / 1.2, size_range.max() * 1.2, 40)
        left.hist(sizes, bins=bins, color="tab:blue")
        for i, s in enumerate(anchor_sizes):
            left.axvline(s, color="tab:red", lw=1, label="anchor sizes" if i == 0 else None)
        left.set(xscale="log", xlabel="sqrt(w h), px", ylabel="objects",
                 title="object sizes vs anchor sizes")
        left.legend()
        ratio_bins = np.geomspace(min(ratios.min(initial=1), anchor_ratios.min()) / 1.2,
                                  max(ratios.max(initial=1), anchor_ratios.max()) * 1.2, 30)
        middle.hist(ratios, bins=ratio_bins, color="tab:blue")
        for i, r in enumerate(anchor_ratios):
            middle.axvline(r, color="tab:red", lw=1, label="anchor ratios" if i == 0 else None)
        middle.set(xscale="log", xlabel="h / w", ylabel="objects",
                   title="object aspect ratios vs anchors'")
        middle.legend()
        right.scatter(sizes, self.matched.best_iou, s=6, alpha=0.5)
        right.axhline(fg, color="tab:red", lw=1, label=f"foreground IoU {fg:g}")
        right.set(xscale="log", xlabel="sqrt(w h), px", ylabel="best anchor IoU", ylim=(0, 1.02),
                  title=f"{self.coverage_at_fg:.1%} of objects at IoU >= {fg:g}")
        right.legend(loc="lower right")
        size_ticks = [t for t in 2.0 ** np.arange(0, 11) if bins[0] <= t <= bins[-1]]
        ratio_ticks = [t for t in 2.0 ** np.arange(-4, 5) if ratio_bins[0] <= t <= ratio_bins[-1]]
        for axis, ticks in ((left.xaxis, size_ticks), (middle.xaxis, ratio_ticks),
                            (right.xaxis, size_ticks)):
            axis.set_major_locator(ticker.FixedLocator(ticks))
            axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(ticker.NullFormatter())
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


def anchor_coverage_report(
    model: Any,
    image_size: Sequence[int],
    boxes_per_image: Sequence[np.ndarray],
    *,
    target: float = COVERAGE_TARGET,
) -> CoverageReport:
    """The anchor-coverage report (module docstring) of model config `model` (`config.model`)
    for `image_size` inputs over the objects `boxes_per_image` (`[M_i, 4]` xyxy input pixels per
    image, e.g. from `dataset_boxes`).

    Examples:
      >>> from focaljax.detectors import retinanet
      >>> model = retinanet.default_config()  # 16-101 px anchors, one aspect ratio
      >>> model.update(max_level=5, anchor_base_scale=2.0, aspect_ratios=(1.0,))
      >>> boxes = [np.array([[4, 4, 20, 20], [40, 40, 72, 72]], np.float32), np.zeros((0, 4))]
      >>> report = anchor_coverage_report(model, (128, 128), boxes)
      >>> report.matched.positives.tolist(), report.figures()["positives_per_image"]
      ([2, 6], 4.0)
      >>> report.suggestion_line()
      'the anchors cover 100.0% of the objects at IoU >= 0.5 (target 95%): no change needed'
    """
    if not 0 < target <= 1:
        raise ValueError(f"target is {target}, expected a share in (0, 1]")
    image_size = tuple(int(s) for s in image_size)
    setup = detector_anchors(model, image_size)
    matched = match_objects(
        setup.anchors, boxes_per_image, fg_iou_threshold=setup.fg_iou_threshold,
        bg_iou_threshold=setup.bg_iou_threshold,
        allow_low_quality_matches=setup.allow_low_quality_matches,
    )
    suggestion, best = suggest_anchors(model, image_size, matched.boxes, target=target)
    return CoverageReport(model.name, image_size, setup, matched, suggestion, best, target)


def report_anchor_coverage(
    config: Any,
    builder: Any,
    *,
    picture: str | None = None,
    max_images: int = 500,
    print_fn: Callable[[str], None] = print,
) -> CoverageReport:
    """Prints the anchor-coverage report of training `config` (a full config: `model`,
    `dataset.image_size`, `dataset.max_boxes`, `dataset.train_split`) over the first
    `max_images` training images of the prepared TFDS `builder` (`focaljax.data.build(
    config.dataset).builder`), then, when fewer than `COVERAGE_TARGET` of the objects have an
    anchor at the foreground IoU, a one-line warning starting "warning:"; writes the picture to
    `picture` when given. Returns the report."""
    image_size = tuple(int(s) for s in config.dataset.image_size)
    split = config.dataset.train_split
    boxes = dataset_boxes(builder, split=split, image_size=image_size,
                          max_boxes=config.dataset.max_boxes, max_images=max_images)
    report = anchor_coverage_report(config.model, image_size, boxes)
    lines = report.lines()
    lines[0] += f" (first {len(boxes)} images of {builder.info.full_name} {split!r})"
    if picture:
        report.save_picture(picture)
        lines.append(f"  picture: {picture}")
    warning = report.warning()
    for line in [*lines, *([warning] if warning else [])]:
        print_fn(line)
    return report
