"""Evaluation of a trained state on the evaluation split: every evaluator of the run, and a picture.

  metrics, grid = evaluate(p_eval_step, state, dataset, config, detector=detector, grid_path=path)

The detections of every process are gathered before the metrics (`distributed.gather`), so every
process scores the whole split and all agree on the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from focaljax import data as data_lib
from focaljax import detectors, evaluation
from focaljax.errors import ConfigError
from focaljax.evaluation.visualize import save_detection_grid
from train import distributed

if TYPE_CHECKING:
    from train.state import TrainState

EVAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# The outputs of `Detector.postprocess` that the detection pictures draw.
DETECTION_KEYS = ("boxes", "scores", "classes", "num_valid")


def _merge_devices(tree: Any) -> Any:
    """[D, B, ...] -> [D * B, ...] on the host."""
    return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)


def denormalize(images: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Normalized float images back to uint8 RGB, for pictures."""
    images = images * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def min_score_suffix(score: float) -> str:
    """The suffix of the COCO metrics over the detections scoring at least `score`: "@0.05"."""
    return f"@{float(score):g}"


def evaluator_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The evaluators `config` names: `config.evaluators`, then `config.voc_metric` when set
    (an alias kept for older configs: `voc_metric="voc07"` is `evaluators=("coco", "voc07")`);
    ConfigError for an unknown or repeated name."""
    voc_metric = config.voc_metric
    if voc_metric and voc_metric not in evaluation.VOC_METRICS:
        raise ConfigError(f"config.voc_metric is {voc_metric!r}, expected '' (off) or one of "
                          f"{tuple(evaluation.VOC_METRICS)}")
    names = tuple(config.evaluators)
    if voc_metric and voc_metric not in names:
        names += (voc_metric,)
    return evaluation.check_names(names, field="config.evaluators")


def read_ground_truth(
    dataset: data_lib.DetectionDataset, config: ml_collections.ConfigDict
) -> evaluation.GroundTruth:
    """The evaluation split's ground truth, read once for every evaluation of the run: COCO's
    format always, VOC's (with "difficult" flags) when a VOC evaluator is named; ConfigError,
    before training, for a VOC evaluator on a data set without those flags."""
    split = config.dataset.eval_split
    names = evaluator_names(config)
    voc = None
    if evaluation.needs_voc(names):
        try:
            voc = dataset.voc_ground_truth(split)
        except ConfigError as error:
            raise ConfigError(
                f"config.evaluators names {[n for n in names if n in evaluation.VOC_METRICS]}, "
                f"but {error}. Leave the VOC evaluators out for this data set."
            ) from error
    return evaluation.GroundTruth(
        coco=dataset.coco_ground_truth(split), category_ids=dataset.info.category_ids,
        num_classes=dataset.info.num_classes, voc=voc,
    )


def build_evaluators(
    truth: evaluation.GroundTruth,
    detector: detectors.Detector,
    config: ml_collections.ConfigDict,
) -> list[evaluation.Evaluator]:
    """Fresh evaluators for one evaluation: those `config` names (`evaluator_names`; "coco"
    again over the detections scoring at least each of `config.eval_min_scores`, names
    suffixed by `min_score_suffix`), then the detector's own (`Detector.evaluators`)."""
    # "faster_coco_eval" gives pycocotools' numbers (to 1e-4, tested) an order of magnitude faster.
    evaluators = evaluation.build_evaluators(
        evaluator_names(config), truth, coco_backend=config.eval_backend,
        coco_min_scores=tuple(config.eval_min_scores), min_score_suffix=min_score_suffix,
    )
    return evaluators + list(detector.evaluators(truth.coco))


def evaluate(
    p_eval_step: Callable,
    state: TrainState,
    dataset: data_lib.DetectionDataset,
    config: ml_collections.ConfigDict,
    *,
    detector: detectors.Detector,
    truth: evaluation.GroundTruth,
    grid_path: str | None = None,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics of the (replicated) `state` on the evaluation split, and a picture grid.

    Every batch of detections goes to each of `build_evaluators`' evaluators (fresh ones, from
    `truth`, the split's ground truth `read_ground_truth` read once), with each of the detector's
    `box_outputs` mapped back to original pixels (`focaljax.data.to_original_pixels`) first; the
    metrics are the union of theirs (COCO's under `EVAL_METRICS` and the rest of
    `focaljax.evaluation.STAT_NAMES`, VOC's mAP under its `focaljax.evaluation.VOC_METRICS` name,
    a Faster R-CNN's proposal recall ...). The grid, written to `grid_path` as a PNG, shows the
    first `config.num_grid_images` images with their predicted and true boxes, in resized-image
    pixels.
    """
    info = dataset.info
    evaluators = build_evaluators(truth, detector, config)
    sizes = {image["id"]: (image["height"], image["width"]) for image in truth.coco["images"]}
    per_device = config.eval_batch_size // jax.device_count()
    grid_images, grid_predictions, grid_truths = [], [], []
    for batch in dataset.eval_iterator(per_device):
        predictions = _merge_devices(jax.device_get(p_eval_step(state, batch)))
        batch = _merge_devices(batch)
        # Each process scored its share of the split (with the same number of batches on every
        # process); every process adds the detections of all of them, so all agree on the metrics.
        # The images stay where they are: only process 0's first ones are drawn.
        images = batch.pop("image")
        everything = distributed.gather({"predictions": predictions, "batch": batch})
        # Padding examples (valid False, image_id -1) are skipped by every evaluator.
        all_batch = everything["batch"]
        image_sizes = np.array([sizes.get(i, (np.inf, np.inf)) for i in all_batch["image_id"]])
        original = {
            **everything["predictions"],
            **{key: data_lib.to_original_pixels(everything["predictions"][key],
                                                all_batch["scale"], image_sizes)
               for key in detector.box_outputs},
        }
        for evaluator in evaluators:
            evaluator.add(original, all_batch)
        batch["image"] = images
        for i in np.flatnonzero(batch["valid"])[: config.num_grid_images - len(grid_images)]:
            grid_images.append(batch["image"][i])
            grid_predictions.append({k: predictions[k][i] for k in DETECTION_KEYS})
            grid_truths.append({"boxes": batch["boxes"][i], "labels": batch["labels"][i]})
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        metrics.update(evaluator.evaluate())
    grid = None
    if grid_path is not None and grid_images and distributed.is_main():
        images = denormalize(np.stack(grid_images), dataset.mean, dataset.std)
        grid = save_detection_grid(
            grid_path, list(images), grid_predictions, grid_truths, info.class_names,
            title=f"{os.path.basename(grid_path)}: predicted (solid), ground truth (dashed)",
        )
    return metrics, grid


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """The COCO metrics as a table, then one line for the other metrics of the evaluators (AP,
    AP50 and AP75 at each `config.eval_min_scores`, VOC's mAP, proposal recall ...), if any,
    then each category's AP in a table of three columns (as detectron2 prints it)."""
    per_category, metrics = evaluation.split_per_category(metrics)
    header = " | ".join(f"{name:>6}" for name in EVAL_METRICS)
    values = " | ".join(f"{metrics[name]:6.3f}" for name in EVAL_METRICS)
    # Of the COCO metrics at a minimum score (AP@0.05 ...), AP, AP50 and AP75 only.
    others = [f"{name}: {value:.3f}" for name, value in metrics.items()
              if name not in evaluation.STAT_NAMES
              and (name.split("@")[0] not in evaluation.STAT_NAMES
                   or name.split("@")[0] in EVAL_METRICS[:3])]
    lines = [header, values] + (["  ".join(others)] if others else [])
    return "\n".join(lines + _per_category_table(per_category))


def _per_category_table(per_category: Mapping[str, float], columns: int = 3) -> list[str]:
    """Lines of `category | AP` pairs, `columns` pairs a line; none without categories."""
    if not per_category:
        return []
    width = max(len("category"), *(len(name) for name in per_category))
    cells = [f"{name:<{width}} | {value:5.3f}" for name, value in per_category.items()]
    header = " | ".join([f"{'category':<{width}} | {'AP':>5}"] * min(columns, len(cells)))
    rows = [" | ".join(cells[i:i + columns]) for i in range(0, len(cells), columns)]
    return ["Per-category AP:", header, *rows]
