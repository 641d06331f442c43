"""Tests for focaljax.evaluation.visualize: pixels on the boxes, nothing where there are none."""

import numpy as np
import pytest
from PIL import Image

from focaljax.evaluation.visualize import (
    GROUND_TRUTH_COLOR,
    class_color,
    draw_detections,
    save_detection_grid,
)

CLASS_NAMES = ["circle", "square", "triangle"]


def _blank(height=80, width=100):
    return np.zeros((height, width, 3), np.uint8)


def test_prediction_is_drawn_on_the_box_edges_in_its_class_colour():
    image = _blank()
    drawn = draw_detections(image, [[10, 30, 50, 70]], [1], [0.9], CLASS_NAMES)
    assert drawn.dtype == np.uint8 and drawn.shape == image.shape
    color = class_color(1)
    for y, x in [(50, 10), (50, 50), (30, 30), (70, 30)]:  # left, right, top, bottom edge
        assert tuple(drawn[y, x]) == color, (y, x)
    assert tuple(drawn[50, 30]) == (0, 0, 0)  # inside the box
    assert tuple(drawn[50, 80]) == (0, 0, 0)  # beside it
    # The "square 0.90" tag sits on a filled strip just above the box's top-left corner.
    tag = np.argwhere(drawn[:30].any(axis=-1))
    assert tag[:, 0].min() >= 30 - 20 and tag[:, 1].min() == 10
    assert np.all(drawn[29, 10:40] != 0)
    assert not np.any(image)  # the input is left alone


def test_tag_goes_inside_a_box_at_the_top_of_the_image():
    drawn = draw_detections(_blank(), [[10, 2, 50, 70]], [0], [0.9], CLASS_NAMES)
    assert not np.any(drawn[:2])
    # The tag's filled strip lies under the top edge, inside the box.
    assert np.mean(np.all(drawn[5:12, 10:50] == class_color(0), axis=-1)) > 0.5


def test_nothing_is_drawn_below_the_threshold_or_for_padding():
    image = _blank()
    boxes = [[10, 10, 50, 50], [20, 20, 60, 60], [0, 0, 0, 0]]
    drawn = draw_detections(
        image, boxes, [0, -1, 0], [0.29, 0.9, 0.0], CLASS_NAMES, score_threshold=0.3
    )
    np.testing.assert_array_equal(drawn, image)
    assert np.any(
        draw_detections(
            image, boxes, [0, -1, 0], [0.29, 0.9, 0.0], CLASS_NAMES, score_threshold=0.25
        )
    )


def test_ground_truth_is_dashed_green_and_padding_rows_are_skipped():
    drawn = draw_detections(
        _blank(),
        np.zeros((0, 4)),
        np.zeros(0, int),
        np.zeros(0),
        CLASS_NAMES,
        gt_boxes=[[10, 10, 70, 60], [0, 0, 99, 79]],
        gt_classes=[2, -1],
    )
    left_edge = drawn[10:61, 10]
    is_green = np.all(left_edge == GROUND_TRUTH_COLOR, axis=1)
    assert is_green.any() and not is_green.all()  # dashes and gaps
    assert tuple(drawn[10, 10]) == GROUND_TRUTH_COLOR
    assert not np.any(drawn[:, 90:]) and not np.any(drawn[70:])  # the padding row is not drawn


def test_draw_detections_rejects_a_normalized_image():
    with pytest.raises(ValueError, match=r"expected uint8 \[H, W, 3\]"):
        draw_detections(np.zeros((8, 8, 3), np.float32), [], [], [], CLASS_NAMES)
    with pytest.raises(ValueError, match="same number"):
        draw_detections(_blank(), [[0, 0, 1, 1]], [0, 1], [0.5], CLASS_NAMES)


def test_grid_png_has_the_expected_size_and_boxes(tmp_path):
    height, width, padding = 48, 64, 4
    images = [np.full((height, width, 3), 10 * i, np.uint8) for i in range(5)]
    predictions = [
        {
            "boxes": np.array([[8, 16, 40, 40], [0, 0, 20, 20]], np.float32),
            "classes": np.array([i % 3, 0]),
            "scores": np.array([0.8, 0.99], np.float32),
            "num_valid": 1,  # the second row is padding although it scores high
        }
        for i in range(5)
    ]
    ground_truths = [
        {"boxes": np.array([[30, 5, 60, 45], [0, 0, 0, 0]]), "labels": np.array([1, -1])}
        for _ in range(5)
    ]
    path = tmp_path / "grids" / "step_100.png"
    grid = save_detection_grid(
        path, images, predictions, ground_truths, CLASS_NAMES, ncols=2, padding=padding
    )

    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        # 2 columns, 3 rows.
        assert png.size == (2 * width + 3 * padding, 3 * height + 4 * padding)
        np.testing.assert_array_equal(np.asarray(png), grid)
    for i in range(5):
        row, col = divmod(i, 2)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        cell = grid[top : top + height, left : left + width]
        assert tuple(cell[28, 8]) == class_color(i % 3)  # left edge of the prediction
        assert tuple(cell[45, 30]) == GROUND_TRUTH_COLOR  # a corner of the ground truth
        # The padding prediction [0, 0, 20, 20] is not drawn.
        assert tuple(cell[12, 0]) == tuple(cell[20, 5]) == (10 * i,) * 3
    assert tuple(grid[-2, -2]) == tuple(grid[0, 0])  # the empty sixth cell is background


def test_grid_title_adds_a_strip_above(tmp_path):
    images = [np.zeros((32, 32, 3), np.uint8)] * 3
    predictions = [{"boxes": np.zeros((0, 4)), "classes": [], "scores": []}] * 3
    plain = save_detection_grid(tmp_path / "a.png", images, predictions, None, CLASS_NAMES)
    titled = save_detection_grid(
        tmp_path / "b.png", images, predictions, None, CLASS_NAMES, title="step 100"
    )
    assert plain.shape == (32 + 8, 3 * 32 + 4 * 4, 3)  # fewer images than ncols: one row of 3
    assert titled.shape[1] == plain.shape[1] and titled.shape[0] > plain.shape[0]
    np.testing.assert_array_equal(titled[-plain.shape[0] :], plain)
    assert titled[: titled.shape[0] - plain.shape[0]].max() > 200  # white title text


def test_grid_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="expected one per image"):
        save_detection_grid(tmp_path / "x.png", [_blank()], [], None, CLASS_NAMES)
    with pytest.raises(ValueError, match="at least one image"):
        save_detection_grid(tmp_path / "x.png", [], [], None, CLASS_NAMES)
