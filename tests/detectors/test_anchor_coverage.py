"""Tests of focaljax/detectors/anchor_coverage.py against hand-computed IoUs and a brute-force loop
over every (box, anchor) pair (tests/ops/reference.py's float64 IoU, one pair at a time)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from configs import default
from focaljax.detectors import anchor_coverage
from focaljax.detectors.anchor_coverage import (
    anchor_coverage_report,
    best_anchor_iou,
    dataset_boxes,
    detector_anchors,
    match_objects,
    report_anchor_coverage,
    suggest_anchors,
)
from focaljax.ops import generate_anchors, num_anchors_per_level
from tests.ops.reference import iou as reference_iou


def brute_best_iou(boxes, anchors):
    """Each box's highest IoU over all anchors, one pair at a time in float64."""
    return np.array([max(reference_iou(b, a) for a in anchors) for b in boxes])


def random_boxes(rng, n, image_size, low, high):
    height, width = image_size
    wh = rng.uniform(low, high, (n, 2)) * rng.uniform(0.5, 2.0, (n, 1)) ** np.array([0.5, -0.5])
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([width, height]) - wh).clip(1)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def retinanet(**fields):
    model = default.retinanet_model()
    for name, value in fields.items():
        model[name] = value
    return model


def test_doctests_of_the_module_pass():
    results = doctest.testmod(anchor_coverage, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted >= 5 and results.failed == 0


@pytest.mark.parametrize(
    ("image_size", "levels", "scales", "ratios"),
    [
        ((100, 72), (3, 5), (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0)),  # cut cells
        ((64, 64), (2, 4), (1.0,), (1.0,)),
        ((48, 128), (3, 3), (1.0, 1.5), (0.25, 1.0, 3.0)),
    ],
)
def test_best_iou_through_the_nearest_centres_equals_every_pair(image_size, levels, scales,
                                                                ratios):
    shape = {"min_level": levels[0], "max_level": levels[1], "scales": scales,
             "aspect_ratios": ratios}
    anchors = generate_anchors(image_size, **shape)
    per_level = num_anchors_per_level(image_size, **shape)
    boxes = random_boxes(np.random.default_rng(len(anchors)), 60, image_size, 3, 90)
    np.testing.assert_allclose(best_anchor_iou(anchors, per_level, boxes),
                               brute_best_iou(boxes, anchors), atol=1e-6)


def test_anchors_off_a_grid_are_compared_with_every_anchor():
    anchors = generate_anchors((64, 64), min_level=3, max_level=4)
    shuffled = np.random.default_rng(0).permutation(anchors)  # No level order left: one level.
    boxes = random_boxes(np.random.default_rng(1), 20, (64, 64), 4, 60)
    np.testing.assert_allclose(best_anchor_iou(shuffled, (len(anchors),), boxes),
                               brute_best_iou(boxes, anchors), atol=1e-6)
    with pytest.raises(ValueError, match=r"sum to 10, expected the 720 anchors"):
        best_anchor_iou(anchors, (10,), boxes)


def test_positives_low_quality_matches_and_coverage_by_hand():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60]], np.float32)
    boxes = [
        # The 14 px box: IoU 100/196 = 0.51 with anchor 0, 196/400 = 0.49 with anchor 1. Anchor 0
        # goes to the 10 px box (IoU 1), anchor 1 is below 0.5 and nobody's best: no positive.
        np.array([[0, 0, 10, 10], [0, 0, 14, 14]], np.float32),
        np.array([[50, 50, 57, 57]], np.float32),  # 49 / 100 with anchor 2: low quality
        np.zeros((0, 4), np.float32),
    ]
    matched = match_objects(anchors, boxes, fg_iou_threshold=0.5, bg_iou_threshold=0.4,
                            allow_low_quality_matches=True)
    np.testing.assert_allclose(matched.best_iou, [1.0, 100 / 196, 49 / 100], rtol=1e-6)
    assert matched.positives.tolist() == [1, 0, 1]
    assert matched.num_positive_anchors == 2 and matched.num_images == 3
    assert matched.coverage(0.5) == pytest.approx(2 / 3)
    assert matched.coverage(0.4) == 1.0
    without = match_objects(anchors, boxes, fg_iou_threshold=0.5, bg_iou_threshold=0.4,
                            allow_low_quality_matches=False)
    assert without.positives.tolist() == [1, 0, 0]


def test_report_figures_and_lines_of_a_hand_made_case():
    # configs/default's RetinaNet on 128x128 inputs: P3-P7 anchors of 32 to 812 px. A 32 px box on
    # a P3 centre (12 + 8k) has IoU 1; an 8 px box has at best 64 / 1024 with the 32 px anchors.
    model = retinanet()
    boxes = [np.array([[-4, -4, 28, 28], [60, 60, 68, 68]], np.float32)]
    report = anchor_coverage_report(model, (128, 128), boxes)
    figures = report.figures()
    assert report.matched.best_iou[0] == 1.0
    assert report.matched.best_iou[1] == pytest.approx(64 / 1024)
    assert figures["objects_at_fg_iou"] == 0.5 and figures["objects_at_iou_0.4"] == 0.5
    assert figures["objects_positive_only_by_low_quality_match"] == 0.5
    text = "\n".join(report.lines())
    assert "2 objects in 1 images" in text
    assert ">= 0.4: 50.0%, >= 0.5: 50.0%" in text
    warning = report.warning()
    assert warning.startswith("warning: only 50.0% of the objects have an anchor at IoU >= 0.5")
    assert "\n" not in warning


def _coverage_of(model, image_size, boxes):
    """The share of `boxes` at the foreground IoU with `model`'s anchors built here from the
    fields (`4 * stride`-style base sizes), checked pair by pair."""
    levels = range(model.min_level, model.max_level + 1)
    anchors = generate_anchors(
        image_size, min_level=model.min_level, max_level=model.max_level,
        anchor_sizes=[model.anchor_base_scale * 2**level for level in levels],
        scales=tuple(model.anchor_scales), aspect_ratios=tuple(model.aspect_ratios),
    )
    return float(np.mean(brute_best_iou(boxes, anchors) >= model.fg_iou_threshold))


def test_suggestion_is_the_smallest_change_and_its_coverage_holds():
    # 10 px squares on P3 centres: the 16 px anchors (base 2) reach 100 / 256 = 0.39; one quarter
    # octave down (base 1.68, 13.45 px) reaches 100 / 181 = 0.55.
    model = retinanet(max_level=5, anchor_base_scale=2.0, aspect_ratios=(1.0,))
    boxes = np.array([[7, 7, 17, 17], [39, 39, 49, 49], [71, 7, 81, 17]], np.float32)
    suggestion, best = suggest_anchors(model, (128, 128), boxes)
    assert dict(suggestion.fields) == {"anchor_base_scale": 1.68}
    assert suggestion.coverage == 1.0 == best.coverage
    changed = model.copy_and_resolve_references()
    changed.anchor_base_scale = 1.68
    assert _coverage_of(changed, (128, 128), boxes) == 1.0
    assert _coverage_of(model, (128, 128), boxes) == 0.0


def test_elongated_objects_get_aspect_ratios_and_covered_ones_no_change():
    # 8 x 32 px boxes (h/w 4): with square anchors of 32 px or more the best IoU is 256 / 1024,
    # and a 16 x 64 anchor (ratio 4 at base 4) gives no more: both fields must change.
    model = retinanet(max_level=5, aspect_ratios=(1.0,))
    boxes = np.array([[8, 0, 16, 32], [40, 32, 48, 64], [72, 64, 80, 96]], np.float32)
    suggestion, _ = suggest_anchors(model, (128, 128), boxes)
    assert set(suggestion.fields) == {"anchor_base_scale", "aspect_ratios"}
    assert max(suggestion.fields["aspect_ratios"]) >= 3
    changed = model.copy_and_resolve_references()
    for name, value in suggestion.fields.items():
        changed[name] = value
    assert _coverage_of(changed, (128, 128), boxes) == suggestion.coverage >= 0.95
    assert _coverage_of(model, (128, 128), boxes) == 0.0
    square = np.array([[-4, -4, 28, 28]], np.float32)
    unchanged, _ = suggest_anchors(model, (128, 128), square)
    assert dict(unchanged.fields) == {} and unchanged.coverage == 1.0


def test_out_of_reach_objects_get_no_suggestion_but_the_best_on_the_grid():
    model = retinanet(max_level=5)  # 32 px anchors every 8 px at the finest
    boxes = np.array([[1, 1, 3, 3]], np.float32)  # 2 px: no anchor on the grid reaches 0.5
    suggestion, best = suggest_anchors(model, (128, 128), boxes)
    assert suggestion is None and best.coverage == 0.0


def test_faster_rcnn_suggestions_scale_its_rpn_anchor_sizes():
    model = default.faster_rcnn_model()  # P2-P6, 32 to 512 px, RPN foreground IoU 0.7
    setup = detector_anchors(model, (128, 128))
    assert setup.fg_iou_threshold == 0.7 and len(setup.anchors_per_level) == 5
    boxes = np.array([[10, 10, 34, 34], [66, 66, 90, 90]], np.float32)  # 24 px on P2 centres
    suggestion, _ = suggest_anchors(model, (128, 128), boxes)
    assert dict(suggestion.fields) == {"anchor_sizes": (26.9, 53.8, 107.6, 215.3, 430.5)}
    anchors = generate_anchors((128, 128), min_level=2, max_level=6, scales=(1.0,),
                               anchor_sizes=suggestion.fields["anchor_sizes"],
                               aspect_ratios=tuple(model.aspect_ratios))
    assert np.all(brute_best_iou(boxes, anchors) >= 0.7)


def test_boxes_come_resized_from_the_records(small_builder, tmp_path):
    # SMALL_SETTINGS' 48x64 images at 96x128 inputs: scale 2, boxes read straight from the
    # records (normalized yxyx) times the resized size.
    boxes = dataset_boxes(small_builder, split="train", image_size=(96, 128), max_boxes=20,
                          max_images=5)
    expected = [
        np.asarray(example["objects"]["bbox"])[:, [1, 0, 3, 2]] * np.array([128, 96, 128, 96])
        for example in small_builder.as_dataset(split="train").take(5).as_numpy_iterator()
    ]
    assert len(boxes) == 5
    for got, want in zip(boxes, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)

    config = default.get_config()
    config.model = retinanet(max_level=5, anchor_base_scale=2.0)
    config.dataset.image_size = (96, 128)
    config.dataset.max_boxes = 20
    printed = []
    picture = tmp_path / "coverage.png"
    report = report_anchor_coverage(config, small_builder, picture=str(picture), max_images=5,
                                    print_fn=printed.append)
    assert printed[0].endswith(f"(first 5 images of {small_builder.info.full_name} 'train')")
    assert f"  picture: {picture}" in printed
    assert (report.warning() is None) == (report.coverage_at_fg >= 0.95)
    assert printed[-1] == (report.warning() or printed[-1])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
