"""Pictures of detections: boxes drawn on an image, and PNG grids of predictions vs ground truth.

Predictions are solid boxes, one colour per class, labelled "name 0.87"; ground truth is a thin
dashed green box. Boxes are xyxy in pixels of the image they are drawn on (for detector outputs,
the resized image of the batch). Drawing uses PIL only, so it needs no display and no matplotlib
backend.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GROUND_TRUTH_COLOR = (0, 255, 0)
_DASH, _GAP = 4, 3
_GRID_BACKGROUND = (32, 32, 32)


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated colour for a class; hues step by the golden ratio so neighbours differ."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _check_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image has dtype {image.dtype} and shape {image.shape}, expected uint8 [H, W, 3] "
            "(undo the input normalization first)"
        )
    return image


def _drawable(box: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box rounded to pixels, or None for padding rows and degenerate boxes."""
    if not np.all(np.isfinite(box)):
        return None
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: tuple[int, ...], color: tuple) -> None:
    x1, y1, x2, y2 = box
    for start in range(x1, x2 + 1, _DASH + _GAP):
        end = min(start + _DASH - 1, x2)
        draw.line([(start, y1), (end, y1)], fill=color)
        draw.line([(start, y2), (end, y2)], fill=color)
    for start in range(y1, y2 + 1, _DASH + _GAP):
        end = min(start + _DASH - 1, y2)
        draw.line([(x1, start), (x1, end)], fill=color)
        draw.line([(x2, start), (x2, end)], fill=color)


def draw_detections(
    image: Any,
    boxes: Any,
    classes: Any,
    scores: Any,
    class_names: Sequence[str],
    *,
    gt_boxes: Any = None,
    gt_classes: Any = None,
    score_threshold: float = 0.3,
    line_width: int = 2,
) -> np.ndarray:
    """Draws predicted (and ground-truth) boxes on a copy of an image.

    Args:
      image: uint8 ``[H, W, 3]``.
      boxes: float ``[K, 4]`` xyxy predicted boxes in pixels of ``image``.
      classes: int ``[K]`` contiguous labels; negative labels are padding and not drawn.
      scores: float ``[K]``; boxes scoring below ``score_threshold`` are not drawn, which also
        hides the zero-score padding of fixed-shape detector outputs.
      class_names: the name of each label, used in the "name 0.87" tags.
      gt_boxes: optional float ``[M, 4]`` xyxy ground truth, drawn dashed green.
      gt_classes: optional int ``[M]``; rows labelled -1 are padding and not drawn.
      score_threshold: the least score of a drawn prediction.
      line_width: width of the predicted boxes' outline in pixels.

    Returns:
      A new uint8 ``[H, W, 3]`` image.
    """
    image = _check_image(image)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(classes) == len(scores):
        raise ValueError(
            f"boxes, classes and scores have {len(boxes)}, {len(classes)} and {len(scores)} "
            "rows, expected the same number"
        )
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)

    if gt_boxes is not None:
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        real = np.ones(len(gt_boxes), bool) if gt_classes is None else np.asarray(gt_classes) >= 0
        if real.shape != (len(gt_boxes),):
            raise ValueError(
                f"gt_classes has shape {real.shape}, expected ({len(gt_boxes)},) like gt_boxes"
            )
        for box in gt_boxes[real]:
            box = _drawable(box)
            if box is not None:
                _dashed_rectangle(draw, box, GROUND_TRUTH_COLOR)

    font = ImageFont.load_default()
    # Lowest score first, so that the most confident boxes and tags end up on top.
    for k in np.argsort(scores, kind="stable"):
        box = _drawable(boxes[k])
        if box is None or scores[k] < score_threshold or classes[k] < 0:
            continue
        label = int(classes[k])
        color = class_color(label)
        name = class_names[label] if label < len(class_names) else str(label)
        draw.rectangle(box, outline=color, width=line_width)
        text = f"{name} {scores[k]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        height = bottom - top + 2
        # Above the box when there is room, otherwise just inside its top edge.
        y = box[1] - height if box[1] - height >= 0 else box[1] + line_width
        draw.rectangle((box[0], y, box[0] + right - left + 3, y + height - 1), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text(
            (box[0] + 2 - left, y + 1 - top),
            text,
            fill=(0, 0, 0) if luminance > 128 else (255, 255, 255),
            font=font,
        )
    return np.asarray(canvas)


def save_detection_grid(
    path: str | os.PathLike,
    images: Sequence[Any],
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]] | None,
    class_names: Sequence[str],
    *,
    ncols: int = 4,
    title: str | None = None,
    score_threshold: float = 0.3,
    padding: int = 4,
) -> np.ndarray:
    """Writes a PNG grid of images with their predicted and ground-truth boxes.

    Cell ``i`` is ``draw_detections`` of ``images[i]`` with ``predictions[i]`` and
    ``ground_truths[i]``. Cells are ``max H x max W`` (smaller images sit top-left), ``padding``
    pixels apart and from the border, in ``min(ncols, N)`` columns; a title, if given, takes a
    strip above them. Without a title the PNG is
    ``(cols * W + (cols + 1) * padding) x (rows * H + (rows + 1) * padding)`` pixels.

    Args:
      path: where to write the PNG; missing parent folders are created.
      images: ``N`` uint8 ``[H, W, 3]`` images.
      predictions: ``N`` mappings with ``boxes`` [K, 4], ``classes`` [K], ``scores`` [K]
        (``Detector.postprocess`` for one image) and optionally ``num_valid``.
      ground_truths: ``N`` mappings with ``boxes`` [M, 4] and ``labels`` [M] (-1 for padding
        rows, as in focaljax batches), or None to draw predictions only.
      class_names: the name of each label.
      ncols: the most cells in a row.
      title: text above the grid.
      score_threshold: the least score of a drawn prediction.
      padding: pixels between cells and around the grid.

    Returns:
      The grid as uint8 ``[height, width, 3]``, e.g. for an image summary.
    """
    if len(images) == 0:
        raise ValueError("images is empty, expected at least one image")
    if len(predictions) != len(images) or (
        ground_truths is not None and len(ground_truths) != len(images)
    ):
        raise ValueError(
            f"images, predictions and ground_truths have {len(images)}, {len(predictions)} and "
            f"{None if ground_truths is None else len(ground_truths)} entries, expected one per "
            "image"
        )
    if ncols < 1:
        raise ValueError(f"ncols is {ncols}, expected at least 1")

    cells = []
    for i, image in enumerate(images):
        prediction = predictions[i]
        count = int(prediction.get("num_valid", len(np.asarray(prediction["scores"]))))
        gt = ground_truths[i] if ground_truths is not None else {}
        cells.append(
            draw_detections(
                image,
                np.asarray(prediction["boxes"])[:count],
                np.asarray(prediction["classes"])[:count],
                np.asarray(prediction["scores"])[:count],
                class_names,
                gt_boxes=gt.get("boxes"),
                gt_classes=gt.get("labels"),
                score_threshold=score_threshold,
            )
        )

    cols = min(ncols, len(cells))
    rows = math.ceil(len(cells) / cols)
    cell_h = max(cell.shape[0] for cell in cells)
    cell_w = max(cell.shape[1] for cell in cells)
    width = cols * cell_w + (cols + 1) * padding
    font = ImageFont.load_default()
    title_h = 0
    if title:
        left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox(
            (0, 0), title, font=font
        )
        title_h = bottom - top + padding
    height = title_h + rows * cell_h + (rows + 1) * padding
    grid = Image.new("RGB", (width, height), _GRID_BACKGROUND)
    if title:
        ImageDraw.Draw(grid).text((padding - left, padding - top), title, fill="white", font=font)
    for i, cell in enumerate(cells):
        row, col = divmod(i, cols)
        x = padding + col * (cell_w + padding)
        y = title_h + padding + row * (cell_h + padding)
        grid.paste(Image.fromarray(cell), (x, y))

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path, format="PNG")
    return np.asarray(grid)
