"""What a setting trains under, measured: anchors and positives an image, how well the anchors
cover the objects, and how hard its negatives are.

Everything is measured on the evaluation split's images as the detector sees them (resized, crowd
regions left out), with the detector's own anchors and IoU thresholds (the anchor figures come from
`focaljax.detectors.anchor_coverage`); it is computed once per setting and kept in the study's
workdir (`settings/SETTING.json`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from focaljax import data as data_lib
from focaljax.data import shapes as shapes_lib
from focaljax.detectors import anchor_coverage

# Images the measures are taken on (the first ones of the evaluation split).
MAX_IMAGES = 500
COVERAGE_IOU = 0.5


def anchor_statistics(anchors: np.ndarray, boxes_per_image: list[np.ndarray], *,
                      fg_iou: float, allow_low_quality: bool) -> dict[str, float]:
    """The study's names for `focaljax.detectors.anchor_coverage`'s figures over images with
    `boxes_per_image[i]` ([M_i, 4] xyxy, same pixels as the anchors): positives an image, the share
    of objects with an anchor at IoU >= `COVERAGE_IOU` and at IoU >= `fg_iou`, and the share of
    objects positive only through a low-quality match."""
    # The background threshold does not change which anchors are positive.
    matched = anchor_coverage.match_objects(
        anchors, boxes_per_image, fg_iou_threshold=fg_iou, bg_iou_threshold=fg_iou,
        allow_low_quality_matches=allow_low_quality,
    )
    images, objects = matched.num_images, len(matched.best_iou)
    low_quality_only = (matched.best_iou < fg_iou) & (matched.positives > 0)
    return {
        "images": images, "objects_per_image": objects / max(images, 1),
        "positives_per_image": matched.num_positive_anchors / max(images, 1),
        "objects_with_anchor_iou_0.5": matched.coverage(COVERAGE_IOU),
        "objects_with_anchor_at_fg_iou": matched.coverage(fg_iou),
        "objects_positive_only_by_low_quality_match": int(low_quality_only.sum()) / max(objects, 1),
    }


def measure_setting(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The figures of the setting `config` trains under (see the module docstring); the
    single-pixel hardness only for shapes data (it needs the objects' pixel masks)."""
    dataset = data_lib.build(config.dataset)
    setup = anchor_coverage.detector_anchors(config.model, config.dataset.image_size)
    boxes_per_image = anchor_coverage.dataset_boxes(
        dataset.builder, split=config.dataset.eval_split, image_size=config.dataset.image_size,
        max_boxes=config.dataset.max_boxes, max_images=MAX_IMAGES,
    )
    result = {
        "dataset": config.dataset.name, "image_size": list(config.dataset.image_size),
        "anchors_per_image": len(setup.anchors), "fg_iou": setup.fg_iou_threshold,
        "bg_iou": setup.bg_iou_threshold,
        **anchor_statistics(setup.anchors, boxes_per_image, fg_iou=setup.fg_iou_threshold,
                            allow_low_quality=setup.allow_low_quality_matches),
        "pixel_threshold_accuracy": None,
    }
    result["negatives_per_positive"] = (len(setup.anchors) / result["positives_per_image"]
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
