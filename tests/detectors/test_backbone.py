"""Tests of focaljax.detectors.backbone: ImageNet weights merged into a detector's variables.

Reading the weight files is tested in tests/models/test_weight_readers.py, their conversion in
tests/models/test_pretrained.py; the config fields, the loader and the frozen parts through the
detectors that use them (test_retinanet.py, test_faster_rcnn.py) and the trainer
(tests/train/test_pretrained_training.py).
"""

import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from focaljax.detectors import backbone
from focaljax.detectors.backbone import merge_backbone
from focaljax.models import RetinaNet, build_resnet, load_resnet_weights
from tests.models import weight_files
from tests.models.variables import random_variables


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    net = weight_files.random_resnet(np.random.default_rng(2), "basic", (2, 2, 2, 2))
    path = tmp_path_factory.mktemp("r18") / "r18.safetensors"
    save_file(weight_files.torchvision_state(net), str(path))
    return path


def test_merge_backbone_replaces_only_the_detectors_resnet(resnet18_file):
    detector = RetinaNet(num_classes=3, backbone="resnet18", fpn_channels=8, head_channels=8,
                         head_convs=1)
    variables = random_variables(detector, jnp.zeros((1, 64, 64, 3)), train=False)
    loaded = load_resnet_weights(resnet18_file, build_resnet(18))
    merged = merge_backbone(variables, loaded)
    for collection in ("params", "batch_stats"):
        chex.assert_trees_all_equal(merged[collection]["backbone"]["resnet"],
                                    loaded.variables[collection])
    chex.assert_trees_all_equal(merged["params"]["backbone"]["fpn"],
                                variables["params"]["backbone"]["fpn"])
    chex.assert_trees_all_equal(merged["params"]["cls_subnet"], variables["params"]["cls_subnet"])
    bigger = RetinaNet(num_classes=3, backbone="resnet34", fpn_channels=8, head_channels=8,
                       head_convs=1)
    shapes = jax.eval_shape(lambda: bigger.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                train=False))
    with pytest.raises(ValueError, match=r"do not fit batch_stats/backbone/resnet .*"
                                         r"stage2_block2/norm1/bias: \(64,\) in the variables, "
                                         r"absent in the weights"):
        merge_backbone(shapes, loaded)
    with pytest.raises(ValueError, match=r"no batch_stats/neck/resnet .* found \['backbone'\]"):
        merge_backbone(variables, loaded, path=("neck", "resnet"))


def test_the_detectors_keep_their_resnet_at_backbone_path():
    detector = RetinaNet(num_classes=3, backbone="resnet_tiny", fpn_channels=8, head_channels=8,
                         head_convs=1)
    shapes = jax.eval_shape(lambda: detector.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                  train=False))
    resnet = build_resnet("resnet_tiny")
    alone = jax.eval_shape(lambda: resnet.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                               train=False))
    for collection, tree in alone.items():
        node = shapes[collection]
        for key in backbone.BACKBONE_PATH:
            node = node[key]
        chex.assert_trees_all_equal_shapes_and_dtypes(node, tree)


def test_docstring_examples_run():
    results = doctest.testmod(backbone, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0 and results.failed == 0
