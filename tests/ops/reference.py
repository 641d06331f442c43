"""Float64 NumPy transcriptions of the box formulas and of greedy NMS, for the ops tests.

Written from the definitions (R-CNN box coding, the greedy NMS loop of torchvision), one box or
one pair at a time, not from focaljax's vectorized code.
"""

import math

import numpy as np


def overlap(a, b):
    """(intersection, union, enclosing-box area) of two xyxy boxes; inverted sides count as 0."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - iw * ih
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return iw * ih, union, hull


def iou(a, b):
    inter, union, _ = overlap(a, b)
    return inter / union if union > 0 else 0.0


def encode(box, anchor, weights):
    """(dx, dy, dw, dh) of `box` relative to `anchor`, R-CNN coding, weights (wx, wy, ww, wh)."""
    wx, wy, ww, wh = weights
    w, h = box[2] - box[0], box[3] - box[1]
    wa, ha = anchor[2] - anchor[0], anchor[3] - anchor[1]
    dx = (box[0] + w / 2 - anchor[0] - wa / 2) / wa
    dy = (box[1] + h / 2 - anchor[1] - ha / 2) / ha
    return [wx * dx, wy * dy, ww * math.log(w / wa), wh * math.log(h / ha)]


CLAMP = math.log(1000 / 16)


def decode(delta, anchor, weights):
    """Inverse of `encode`, with dw / ww and dh / wh clamped at log(1000 / 16) before exp."""
    wx, wy, ww, wh = weights
    wa, ha = anchor[2] - anchor[0], anchor[3] - anchor[1]
    cx = anchor[0] + wa / 2 + delta[0] / wx * wa
    cy = anchor[1] + ha / 2 + delta[1] / wy * ha
    w = math.exp(min(delta[2] / ww, CLAMP)) * wa
    h = math.exp(min(delta[3] / wh, CLAMP)) * ha
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def nms(boxes, scores, threshold, max_output, *, classes=None, valid=None):
    """Visit boxes by descending score, ties by index; keep one unless a kept box of its class
    overlaps it with IoU > threshold. Boxes scored NaN or -inf, or not `valid`, take no part.
    Returns the kept indices padded with -1 to `max_output`."""
    boxes = np.asarray(boxes, np.float64)
    scores = np.asarray(scores, np.float64)
    candidates = [
        i
        for i in range(len(boxes))
        if (valid is None or valid[i]) and not np.isnan(scores[i]) and scores[i] > -np.inf
    ]
    candidates.sort(key=lambda i: (-scores[i], i))
    kept = []
    for i in candidates:
        if len(kept) == max_output:
            break
        if all(
            iou(boxes[i], boxes[j]) <= threshold
            for j in kept
            if classes is None or classes[i] == classes[j]
        ):
            kept.append(i)
    return np.array(kept + [-1] * (max_output - len(kept)), np.int64)


def clip(box, image_size):
    """`box` with x clamped to [0, width] and y to [0, height], `image_size` = (height, width)."""
    height, width = image_size
    x1, y1, x2, y2 = box
    return [
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    ]
