"""Flax Linen networks: ResNet backbones, the FPN, and the RetinaNet network (no losses)."""

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
    "BasicBlock",
    "Bottleneck",
    "FrozenBatchNorm",
    "ResNet",
    "ResNetFPN",
    "RetinaNet",
    "Subnet",
    "build_resnet",
]
