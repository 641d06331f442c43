"""Tests of focaljax.models.faster_rcnn's heads against float64 NumPy formulas: the RPN head with
one or several convs (torchvision's v2 has 2) and the box head's convs with frozen batch norm
(torchvision's v2 ``FastRCNNConvFCHead`` at test time). The whole network is tested through its
detector (tests/detectors/test_faster_rcnn.py) and against torchvision (tests/models/test_zoo.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.models.faster_rcnn import RoIBoxHead, RPNHead
from tests.models.test_retinanet import _np_conv3x3
from tests.models.variables import random_variables


def _np_dense(x, params):
    return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"])


def _np_batch_norm_at_test(x, stats):
    return ((x - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
            * np.asarray(stats["scale"]) + np.asarray(stats["bias"]))


@pytest.mark.parametrize("num_convs, names", [(1, ["conv"]), (2, ["conv0", "conv1"])])
def test_rpn_head_applies_each_conv_and_relu_then_the_sibling_1x1_outputs(num_convs, names):
    rng = np.random.default_rng(4)
    levels = [jnp.asarray(rng.normal(size=(2, size, size + 1, 8)), jnp.float32) for size in (6, 3)]
    head = RPNHead(num_anchors=3, num_convs=num_convs)
    variables = random_variables(head, levels)
    params = variables["params"]
    assert sorted(params) == sorted([*names, "deltas", "objectness"])
    objectness, deltas = jax.jit(head.apply)(variables, levels)
    expected_objectness, expected_deltas = [], []
    for x in levels:
        x = np.asarray(x, np.float64)
        for name in names:
            x = np.maximum(_np_conv3x3(x, params[name]), 0.0)
        batch = x.shape[0]
        expected_objectness.append(_np_dense(x, {
            "kernel": params["objectness"]["kernel"][0, 0],
            "bias": params["objectness"]["bias"]}).reshape(batch, -1, 1))
        expected_deltas.append(_np_dense(x, {
            "kernel": params["deltas"]["kernel"][0, 0],
            "bias": params["deltas"]["bias"]}).reshape(batch, -1, 4))
    np.testing.assert_allclose(objectness, np.concatenate(expected_objectness, axis=1),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(deltas, np.concatenate(expected_deltas, axis=1), rtol=1e-4,
                               atol=1e-4)


def test_box_head_frozen_bn_follows_each_conv_without_bias_then_relu_then_the_fcs():
    pooled = jnp.asarray(np.random.default_rng(5).normal(size=(3, 7, 7, 8)), jnp.float32)
    head = RoIBoxHead(num_classes=2, num_convs=2, conv_dim=6, num_fcs=1, fc_dim=10,
                      norm="frozen_bn")
    variables = random_variables(head, pooled)
    params, stats = variables["params"], variables["batch_stats"]
    assert sorted(params["conv0"]) == ["kernel"]
    assert sorted(stats) == ["norm0", "norm1"]
    assert "norm0" not in params
    cls_logits, box_deltas = jax.jit(head.apply)(variables, pooled)
    x = np.asarray(pooled, np.float64)
    for i in range(2):
        x = np.maximum(_np_batch_norm_at_test(_np_conv3x3(x, params[f"conv{i}"]),
                                              stats[f"norm{i}"]), 0.0)
    # Flattened in focaljax's (y, x, channel) order, as the zoo conversion expects.
    x = np.maximum(_np_dense(x.reshape(3, -1), params["fc0"]), 0.0)
    np.testing.assert_allclose(cls_logits, _np_dense(x, params["cls_score"]), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(box_deltas, _np_dense(x, params["bbox_pred"]).reshape(3, 2, 4),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: RPNHead(num_anchors=3, num_convs=0), r"num_convs is 0, expected >= 1"),
        (lambda: RoIBoxHead(num_classes=2, norm="bn"),
         r"norm is 'bn', expected one of \(None, 'gn', 'frozen_bn'\)"),
    ],
)
def test_invalid_heads_raise_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()
