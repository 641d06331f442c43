"""Detection ops: boxes, anchors, matching, NMS, region proposals, post-processing and RoIAlign.

Pure, jittable functions over fixed-shape arrays; `focaljax.models` and `focaljax.detectors` compose
them. This package imports nothing else from focaljax.
"""

from focaljax.ops.anchors import (
    DEFAULT_ASPECT_RATIOS,
    DEFAULT_SCALES,
    generate_anchors,
    level_sizes,
    num_anchors_per_level,
    num_anchors_per_location,
)
from focaljax.ops.boxes import (
    BoxCoder,
    box_area,
    clip_boxes,
    cxcywh_to_xyxy,
    elementwise_giou,
    elementwise_iou,
    pairwise_giou,
    pairwise_intersection,
    pairwise_iou,
    xyxy_to_cxcywh,
)
from focaljax.ops.matching import BACKGROUND, FOREGROUND, IGNORED, build_targets, match
from focaljax.ops.nms import batched_non_max_suppression, non_max_suppression
from focaljax.ops.postprocess import fast_rcnn_postprocess, retinanet_postprocess
from focaljax.ops.proposals import rpn_proposals
from focaljax.ops.roi_align import assign_boxes_to_levels, multilevel_roi_align, roi_align
from focaljax.ops.roi_sampling import sample_rois

__all__ = [
    "BACKGROUND",
    "DEFAULT_ASPECT_RATIOS",
    "DEFAULT_SCALES",
    "FOREGROUND",
    "IGNORED",
    "BoxCoder",
    "assign_boxes_to_levels",
    "batched_non_max_suppression",
    "box_area",
    "build_targets",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "elementwise_giou",
    "elementwise_iou",
    "fast_rcnn_postprocess",
    "generate_anchors",
    "level_sizes",
    "match",
    "multilevel_roi_align",
    "non_max_suppression",
    "num_anchors_per_level",
    "num_anchors_per_location",
    "pairwise_giou",
    "pairwise_intersection",
    "pairwise_iou",
    "retinanet_postprocess",
    "roi_align",
    "rpn_proposals",
    "sample_rois",
    "xyxy_to_cxcywh",
]
