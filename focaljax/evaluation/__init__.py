"""Evaluation of detections: COCO AP (pycocotools or faster-coco-eval), PASCAL VOC mAP, proposal
recall, the evaluators the trainer feeds batch by batch, and pictures of predicted vs ground-truth
boxes."""

from focaljax.evaluation.coco import STAT_NAMES, CocoEvaluator, detections_to_coco
from focaljax.evaluation.evaluator import (
    CocoDetectionEvaluator,
    Evaluator,
    VocDetectionEvaluator,
)
from focaljax.evaluation.proposals import ProposalRecallEvaluator
from focaljax.evaluation.visualize import class_color, draw_detections, save_detection_grid
from focaljax.evaluation.voc import voc_ap, voc_map

__all__ = [
    "STAT_NAMES",
    "CocoDetectionEvaluator",
    "CocoEvaluator",
    "Evaluator",
    "ProposalRecallEvaluator",
    "VocDetectionEvaluator",
    "class_color",
    "detections_to_coco",
    "draw_detections",
    "save_detection_grid",
    "voc_ap",
    "voc_map",
]
