"""Flax Linen networks: ResNet backbones and their ImageNet weights, the FPN, the RetinaNet and
Faster R-CNN networks (no losses)."""

from focaljax.models.faster_rcnn import FasterRCNN, RoIBoxHead, RPNHead
from focaljax.models.fpn import FPN, ResNetFPN
from focaljax.models.pretrained import PretrainedResNet, load_resnet_weights
from focaljax.models.resnet import (
    PRESETS,
    BasicBlock,
    Bottleneck,
    FrozenBatchNorm,
    ResNet,
    build_resnet,
    freeze_mask,
)
from focaljax.models.retinanet import RetinaNet, Subnet
from focaljax.models.weight_readers import FORMATS, WeightFileError, detect_format, read_arrays

__all__ = [
    "FORMATS",
    "FPN",
    "PRESETS",
    "FasterRCNN",
    "BasicBlock",
    "Bottleneck",
    "FrozenBatchNorm",
    "PretrainedResNet",
    "ResNet",
    "RPNHead",
    "ResNetFPN",
    "RetinaNet",
    "RoIBoxHead",
    "Subnet",
    "WeightFileError",
    "build_resnet",
    "detect_format",
    "freeze_mask",
    "load_resnet_weights",
    "read_arrays",
]
