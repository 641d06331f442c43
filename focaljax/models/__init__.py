"""Flax Linen networks: ResNet backbones, the FPN, the RetinaNet and Faster R-CNN networks (no
losses)."""

from focaljax.models.faster_rcnn import FasterRCNN, RoIBoxHead, RPNHead
from focaljax.models.fpn import FPN, ResNetFPN
from focaljax.models.resnet import (
    PRESETS,
    BasicBlock,
    Bottleneck,
    FrozenBatchNorm,
    ResNet,
    build_resnet,
)
from focaljax.models.retinanet import RetinaNet, Subnet

__all__ = [
    "FPN",
    "PRESETS",
    "FasterRCNN",
    "BasicBlock",
    "Bottleneck",
    "FrozenBatchNorm",
    "ResNet",
    "RPNHead",
    "ResNetFPN",
    "RetinaNet",
    "RoIBoxHead",
    "Subnet",
    "build_resnet",
]
