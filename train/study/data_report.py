"""What a setting trains under, measured: anchors and positives an image, how well the anchors
cover the objects, and how hard its negatives are.

Everything is measured on the evaluation split's images as the detector sees them (resized), with
the detector's own anchors and IoU thresholds; it is computed once per setting and kept in the
study's workdir (`settings/SETTING.json`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from focaljax import data as data_lib
from focaljax import detectors
from focaljax.data import shapes as shapes_lib
from focaljax.detectors.retinanet import retinanet_anchors
from focaljax.ops.boxes import pairwise_iou
from train import distributed

# Images the measures are taken on (the first ones of the evaluation split).
MAX_IMAGES = 500
COVERAGE_IOU = 0.5


def detector_anchors(config: ml_collections.ConfigDict) -> tuple[np.ndarray, float, float, bool]:
    """`(anchors [A, 4] xyxy, foreground IoU, background IoU, low-quality matches)` of the
    config's detector: a RetinaNet's anchors and matcher, or a Faster R-CNN's RPN's."""
    image_size = tuple(int(s) for s in config.dataset.image_size)
    model = config.model
    if model.name == "retinanet":
        anchors = retinanet_anchors(model, image_size)[0]
        matcher = model
    else:
        detector = detectors.build(model, num_classes=1, image_size=image_size,
                                   axis_name=distributed.AXIS_NAME)
        anchors = detector.module.anchors(image_size)[0]
        matcher = model.rpn
    return (np.asarray(anchors, np.float32), float(matcher.fg_iou_threshold),
            float(matcher.bg_iou_threshold), bool(matcher.allow_low_quality_matches))


def anchor_statistics(anchors: np.ndarray, boxes_per_image: list[np.ndarray], *,
                      fg_iou: float, allow_low_quality: bool) -> dict[str, float]:
    """Over images with `boxes_per_image[i]` ([M_i, 4] xyxy, same pixels as the anchors):
    positives an image (IoU >= `fg_iou` with some object, plus each object's best anchors when
    `allow_low_quality`), the share of objects with an anchor at IoU >= `COVERAGE_IOU` and at
    IoU >= `fg_iou`, and the share of objects positive only through a low-quality match."""
    positives, objects, covered, covered_fg, low_quality_only = 0, 0, 0, 0, 0
    for boxes in boxes_per_image:
        if len(boxes) == 0:
            continue
        iou = np.asarray(pairwise_iou(boxes, anchors))  # [M, A]
        best = iou.max(axis=1)
        positive = iou.max(axis=0) >= fg_iou
        if allow_low_quality:
            positive |= np.any((iou == best[:, None]) & (best[:, None] > 0), axis=0)
        positives += int(positive.sum())
        objects += len(boxes)
        covered += int(np.sum(best >= COVERAGE_IOU))
        covered_fg += int(np.sum(best >= fg_iou))
        low_quality_only += int(np.sum(best < fg_iou)) if allow_low_quality else 0
    images = len(boxes_per_image)
    return {
        "images": images, "objects_per_image": objects / max(images, 1),
        "positives_per_image": positives / max(images, 1),
        "objects_with_anchor_iou_0.5": covered / max(objects, 1),
        "objects_with_anchor_at_fg_iou": covered_fg / max(objects, 1),
        "objects_positive_only_by_low_quality_match": low_quality_only / max(objects, 1),
    }


def measure_setting(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The figures of the setting `config` trains under (see the module docstring); the
    single-pixel hardness only for shapes data (it needs the objects' pixel masks)."""
    dataset = data_lib.build(config.dataset)
    anchors, fg_iou, bg_iou, low_quality = detector_anchors(config)
    boxes_per_image = []
    per_device = max(1, config.eval_batch_size // jax.local_device_count())
    for batch in dataset.eval_iterator(per_device):
        boxes = np.asarray(batch["boxes"]).reshape((-1,) + batch["boxes"].shape[2:])
        labels = np.asarray(batch["labels"]).reshape(-1, batch["labels"].shape[-1])
        valid = np.asarray(batch["valid"]).reshape(-1)
        for i in np.flatnonzero(valid):
            boxes_per_image.append(boxes[i][labels[i] >= 0])
            if len(boxes_per_image) == MAX_IMAGES:
                break
        if len(boxes_per_image) == MAX_IMAGES:
            break
    result = {
        "dataset": config.dataset.name, "image_size": list(config.dataset.image_size),
        "anchors_per_image": len(anchors), "fg_iou": fg_iou, "bg_iou": bg_iou,
        **anchor_statistics(anchors, boxes_per_image, fg_iou=fg_iou,
                            allow_low_quality=low_quality),
        "pixel_threshold_accuracy": None,
    }
    result["negatives_per_positive"] = (len(anchors) / result["positives_per_image"]
                                        if result["positives_per_image"] else None)
    if config.dataset.name == "shapes":
        shapes_config = dataset.builder.builder_config
        hardness = shapes_lib.pixel_threshold_accuracy(shapes_config, split="validation",
                                                       num_images=min(200, MAX_IMAGES))
        result["pixel_threshold_accuracy"] = hardness
    return result


def setting_figures(workdir: str, setting: str,
                    config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`measure_setting` of `config`, computed once and kept in `workdir/settings/`."""
    path = os.path.join(workdir, "settings", f"{setting}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    figures = measure_setting(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(figures, f, indent=1, sort_keys=True, default=float)
    os.replace(temporary, path)
    return figures
