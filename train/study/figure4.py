"""Figure 4 of the RetinaNet paper from a finished run: every anchor's logits over the evaluation
images, its matched class, and the cumulative loss curves (`focaljax.evaluation.loss_curves`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from focaljax import data as data_lib
from focaljax import evaluation
from focaljax.detectors.retinanet import anchor_targets, retinanet_anchors
from focaljax.inference import load_trained
from focaljax.ops.boxes import BoxCoder
from train.study.studies import FIGURE4_GAMMAS

# Evaluation images of Figure 4. Their logits are kept in memory: images x anchors x classes x 4
# bytes (the paper regime: 24 MB; COCO at 100k anchors and 80 classes: 16 GB for 500).
FIGURE4_MAX_IMAGES = 500
FIGURE4_FILE = "figure4.json"


def figure4_anchors(
    config: ml_collections.ConfigDict, workdir: str, *, max_images: int = FIGURE4_MAX_IMAGES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`(logits [N, C], labels [N], weights [N], num_images)` of every anchor of the first
    `max_images` evaluation images, from the latest checkpoint of the RetinaNet run in `workdir`;
    labels and weights from the matcher of its loss (`anchor_targets`)."""
    dataset = data_lib.build(config.dataset)
    image_size = tuple(int(s) for s in config.dataset.image_size)
    run = load_trained(workdir)
    detector, variables = run.detector, run.variables
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


def figure4_result(config: ml_collections.ConfigDict, run_key: str, run_dir: str) -> dict[str, Any]:
    """Figure 4's numbers for the finished run in `run_dir`, computed once and kept there; with
    the share of its negative anchors that still score above 0.05 (a measure of how hard the
    negatives stay once the model has converged)."""
    path = os.path.join(run_dir, FIGURE4_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    logits, labels, weights, num_images = figure4_anchors(config, run_dir)
    curves = evaluation.cumulative_loss_curves(logits, labels, weights, gammas=FIGURE4_GAMMAS)
    negative = (labels < 0) & (weights > 0)
    scores = 1.0 / (1.0 + np.exp(-logits[negative].astype(np.float64)))
    result = {
        "run": run_key, "num_images": num_images,
        "num_positives": int(np.sum((labels >= 0) & (weights > 0))),
        "num_negatives": int(np.sum(negative)),
        "negatives_above_0.05": float(np.mean(scores.max(axis=1) > 0.05)) if scores.size else None,
        "gammas": {
            f"{gamma:g}": {group: {"hardest_10%": evaluation.share_of_hardest(curve, 0.1),
                                   "hardest_1%": evaluation.share_of_hardest(curve, 0.01),
                                   "curve": evaluation.curve_points(curve)}
                           for group, curve in groups.items()}
            for gamma, groups in curves.items()
        },
    }
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    os.replace(temporary, path)
    return result
