"""Model-zoo files for the tests, without torch: the fixtures' random weights drawn again, written
as torchvision's ``.pth`` / ``.safetensors`` and as detectron2's model-zoo ``.pkl``, and a small
torchvision-layout RetinaNet (a ``resnet_tiny`` under its FPN and heads) for fine-tuning runs.

``to_detectron2`` renames a torchvision state dict into detectron2's key layout, as detectron2's
own modules name their parameters (``detectron2/modeling``: ``backbone.bottom_up.res2.0.conv1``
with ``.norm``, ``backbone.fpn_lateral3``, ``backbone.top_block.p6``, ``head.cls_subnet.0``,
``proposal_generator.rpn_head.objectness_logits``, ``roi_heads.box_head.fc1``,
``roi_heads.box_predictor.cls_score`` with background last) and its conventions: BGR input in
0..255 with the MSRA mean and no std (undone in the stem kernel so that the network is the same),
anchors scale-major within a location. detectron2 itself cannot run here (no wheel for this
Python), so its layout is checked this way against torchvision's outputs.
"""

import json
import pathlib
import pickle

import numpy as np
from safetensors.numpy import save_file

from tests.fixtures.zoo.random_weights import random_state_dict
from tests.models import weight_files

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return dict(data)


def fixture_state(fixture: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights the fixture's model ran with, drawn again from its layout and seed."""
    return random_state_dict(str(fixture["layout"]), int(fixture["seed"]))


def normalized(images: np.ndarray) -> np.ndarray:
    """The fixture script's input normalization."""
    return (images.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD


def write_pth(path, state) -> str:
    weight_files.write_torch_zip(path, state)
    return str(path)


def write_safetensors(path, state) -> str:
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return str(path)


def write_detectron2_pkl(path, state) -> str:
    """As detectron2's model zoo ships them: a pickle of ``{"model": {name: array}, ...}``."""
    with open(path, "wb") as f:
        pickle.dump({"model": dict(state), "__author__": "focaljax tests",
                     "matching_heuristics": True}, f, protocol=2)
    return str(path)


def _ratio_major_to_scale_major(value, num_scales=3, num_ratios=3):
    """A torchvision RetinaNet head output's ``[A * K, ...]`` in detectron2's anchor order."""
    per_anchor = value.shape[0] // (num_scales * num_ratios)
    value = value.reshape(num_ratios, num_scales, per_anchor, *value.shape[1:])
    return value.swapaxes(0, 1).reshape(-1, *value.shape[3:])


def to_detectron2(state: dict[str, np.ndarray], architecture: str) -> dict[str, np.ndarray]:
    """The torchvision ``state`` of a RetinaNet or Faster R-CNN in detectron2's layout."""
    out = {}
    norm_names = {"weight": "weight", "bias": "bias", "running_mean": "running_mean",
                  "running_var": "running_var"}
    min_level = 3 if architecture == "retinanet" else 2
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("backbone.body."):
            rest = parts[2:]
            if rest[0] == "conv1":
                # detectron2's input: BGR pixels - 255 * mean, no std.
                value = (value / (255.0 * IMAGENET_STD)[None, :, None, None])[:, ::-1]
                out["backbone.bottom_up.stem.conv1.weight"] = value
            elif rest[0] == "bn1":
                out[f"backbone.bottom_up.stem.conv1.norm.{norm_names[rest[1]]}"] = value
            else:
                stage = int(rest[0][len("layer"):]) + 1
                block = rest[1]
                prefix = f"backbone.bottom_up.res{stage}.{block}"
                if rest[2] == "downsample":
                    name = "shortcut" + ("" if rest[3] == "0" else ".norm")
                    out[f"{prefix}.{name}.{rest[-1]}"] = value
                elif rest[2].startswith("conv"):
                    out[f"{prefix}.{rest[2]}.weight"] = value
                else:
                    out[f"{prefix}.conv{rest[2][-1]}.norm.{rest[-1]}"] = value
        elif key.startswith("backbone.fpn."):
            if parts[2] == "extra_blocks":
                out[f"backbone.top_block.{parts[3]}.{parts[4]}"] = value
            else:
                kind = "lateral" if parts[2] == "inner_blocks" else "output"
                out[f"backbone.fpn_{kind}{min_level + int(parts[3])}.{parts[-1]}"] = value
        elif key.startswith("head."):
            head = "cls" if "classification" in key else "bbox"
            if parts[2] == "conv":
                out[f"head.{head}_subnet.{2 * int(parts[3])}.{parts[-1]}"] = value
            else:
                name = "cls_score" if head == "cls" else "bbox_pred"
                out[f"head.{name}.{parts[-1]}"] = _ratio_major_to_scale_major(value)
        elif key.startswith("rpn.head."):
            name = {"conv": "conv", "cls_logits": "objectness_logits",
                    "bbox_pred": "anchor_deltas"}[parts[2]]
            out[f"proposal_generator.rpn_head.{name}.{parts[-1]}"] = value
        elif key.startswith("roi_heads.box_head."):
            fc = {"fc6": "fc1", "fc7": "fc2"}[parts[2]]
            out[f"roi_heads.box_head.{fc}.{parts[-1]}"] = value
        elif key.startswith("roi_heads.box_predictor.cls_score"):
            out[key] = np.concatenate([value[1:], value[:1]])  # background last
        elif key.startswith("roi_heads.box_predictor.bbox_pred"):
            out[key] = value[4:]  # no background deltas
        else:
            raise AssertionError(f"unmapped key {key}")
    out["pixel_mean"] = np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1)
    out["pixel_std"] = np.ones((3, 1, 1), np.float32)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def tiny_retinanet_state(*, seed: int = 0, num_classes: int = 91, channels: int = 32,
                         head_convs: int = 2) -> dict[str, np.ndarray]:
    """A torchvision-layout RetinaNet state dict around a ``resnet_tiny`` (basic blocks, width
    16): C3-C5 of 32, 64 and 128 channels, an FPN and heads of ``channels``, P6 from P5."""
    rng = np.random.default_rng(seed)
    net = weight_files.random_resnet(rng, "basic", (1, 1, 1, 1), width=16)
    state = {f"backbone.body.{k}": v for k, v in weight_files.torchvision_state(net).items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    layout = []
    for i, c_channels in enumerate((32, 64, 128)):
        layout += [[f"backbone.fpn.inner_blocks.{i}.0.weight", [channels, c_channels, 1, 1]],
                   [f"backbone.fpn.inner_blocks.{i}.0.bias", [channels]],
                   [f"backbone.fpn.layer_blocks.{i}.0.weight", [channels, channels, 3, 3]],
                   [f"backbone.fpn.layer_blocks.{i}.0.bias", [channels]]]
    for name in ("p6", "p7"):
        layout += [[f"backbone.fpn.extra_blocks.{name}.weight", [channels, channels, 3, 3]],
                   [f"backbone.fpn.extra_blocks.{name}.bias", [channels]]]
    for head, output, values in (("classification_head", "cls_logits", num_classes),
                                 ("regression_head", "bbox_reg", 4)):
        for i in range(head_convs):
            layout += [[f"head.{head}.conv.{i}.0.weight", [channels, channels, 3, 3]],
                       [f"head.{head}.conv.{i}.0.bias", [channels]]]
        layout += [[f"head.{head}.{output}.weight", [9 * values, channels, 3, 3]],
                   [f"head.{head}.{output}.bias", [9 * values]]]
    state.update(random_state_dict(json.dumps(layout), seed))
    return {k: np.asarray(v, np.float32) for k, v in state.items()}

