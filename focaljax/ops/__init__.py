"""Detection ops: boxes, anchors, matching, NMS, post-processing and RoIAlign.

Pure, jittable functions over fixed-shape arrays; `focaljax.models` and `focaljax.detectors` compose
them. This package imports nothing else from focaljax.
"""

from focaljax.ops.boxes import (
    BoxCoder,
    box_area,
    clip_boxes,
    cxcywh_to_xyxy,
    elementwise_giou,
    elementwise_iou,
    pairwise_giou,
    pairwise_iou,
    xyxy_to_cxcywh,
)
