"""The trainer runs the Faster R-CNN detector end to end, as it runs RetinaNet: named loss terms
logged and summed, proposal recall evaluated beside the COCO AP."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from configs import default
from tests.train.conftest import tiny_config
from train import evaluate as evaluate_lib
from train import train

RPN_LOSSES = ("sampled", "focal_softmax")


def tiny_faster_rcnn_config(data_dir: str, rpn_loss: str):
    """`tiny_config`'s data and schedule with a Faster R-CNN of 16 channels on P2-P4."""
    config = tiny_config(data_dir)
    model = config.model = default.faster_rcnn_model()
    model.backbone = "resnet_tiny"
    model.norm = "gn"
    model.fpn_channels = 16
    model.anchor_sizes = (16.0, 32.0, 64.0)
    model.aspect_ratios = (1.0,)
    model.rpn.loss = rpn_loss
    model.rpn.batch_size_per_image = 64
    for mode in ("train", "test"):
        model.rpn[f"{mode}_pre_nms_topk"] = 200
        model.rpn[f"{mode}_post_nms_topk"] = 50
    model.roi.num_samples = 16
    model.roi.sampling_ratio = 1
    model.roi.head_fc_dim = 32
    model.postprocess.max_detections = 20
    return config


@pytest.mark.parametrize("rpn_loss", RPN_LOSSES)
def test_trainer_trains_and_evaluates_faster_rcnn_with_proposal_recall(
    tiny_data_dir, tmp_path, rpn_loss
):
    config = tiny_faster_rcnn_config(tiny_data_dir, rpn_loss)
    workdir = str(tmp_path)

    metrics = train.train_and_evaluate(config, workdir)

    assert set(evaluate_lib.EVAL_METRICS) <= set(metrics)
    # The detector's own evaluator: AR at 100 and 300 proposals equal (only 50 per image), and
    # recall cannot exceed what more proposals find.
    assert {"AR@100", "AR@300", "AR@1000"} <= set(metrics)
    assert 0.0 <= metrics["AR@100"] <= 1.0
    assert metrics["AR@100"] == metrics["AR@300"] == metrics["AR@1000"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    terms = ("rpn_cls", "rpn_box", "roi_cls", "roi_box")
    for record in train_records:
        values = [record[f"train/loss_{term}"] for term in terms]
        assert all(np.isfinite(values)), record
        # The trainer minimizes the sum of the detector's terms.
        np.testing.assert_allclose(record["train/loss"], sum(values), rtol=1e-5)
    assert records[-1]["eval/AR@100"] == metrics["AR@100"]

