"""Evaluation of detections: COCO AP (pycocotools or faster-coco-eval), PASCAL VOC mAP, proposal
recall, the evaluators the trainer feeds batch by batch, pictures of predicted vs ground-truth
boxes, and the loss curves of the RetinaNet paper's Figure 4."""

from focaljax.evaluation.coco import STAT_NAMES, CocoEvaluator, detections_to_coco
from focaljax.evaluation.evaluator import (
    CocoDetectionEvaluator,
    Evaluator,
    VocDetectionEvaluator,
    per_category_name,
    split_per_category,
)
from focaljax.evaluation.loss_curves import (
    anchor_focal_losses,
    cumulative_loss_curves,
    cumulative_share,
    curve_points,
    share_of_hardest,
)
from focaljax.evaluation.proposals import ProposalRecallEvaluator
from focaljax.evaluation.registry import (
    EVALUATORS,
    VOC_METRICS,
    GroundTruth,
    build_evaluators,
    check_names,
    needs_voc,
)
from focaljax.evaluation.visualize import class_color, draw_detections, save_detection_grid
from focaljax.evaluation.voc import voc_ap, voc_map

__all__ = [
    "EVALUATORS",
    "STAT_NAMES",
    "VOC_METRICS",
    "GroundTruth",
    "build_evaluators",
    "check_names",
    "needs_voc",
    "CocoDetectionEvaluator",
    "CocoEvaluator",
    "Evaluator",
    "ProposalRecallEvaluator",
    "VocDetectionEvaluator",
    "anchor_focal_losses",
    "class_color",
    "cumulative_loss_curves",
    "cumulative_share",
    "curve_points",
    "detections_to_coco",
    "draw_detections",
    "per_category_name",
    "save_detection_grid",
    "share_of_hardest",
    "split_per_category",
    "voc_ap",
    "voc_map",
]
