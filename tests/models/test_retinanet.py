"""Tests of focaljax.models.retinanet: the anchor axis, the paper's head initialization, shared
subnets, group-norm heads (with and without conv bias), dtypes, synchronized batch norm and
configuration errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.models import RetinaNet, Subnet
from focaljax.ops import num_anchors_per_level, num_anchors_per_location
from tests.models.variables import count, random_variables

NUM_CLASSES = 3
HEAD_CHANNELS = 64
# A small network, built with every keyword argument the detector passes; 64 head channels give
# 9,216 to 36,864 weights per head kernel, enough to estimate their standard deviation to ~1%.
TINY = {
    "num_classes": NUM_CLASSES,
    "backbone": "resnet_tiny",
    "min_level": 3,
    "max_level": 7,
    "fpn_channels": 16,
    "head_convs": 2,
    "head_channels": HEAD_CHANNELS,
    "head_norm": None,
    "num_anchors": 9,
    "prior_prob": 0.01,
    "norm": "frozen_bn",
    "axis_name": None,
    "dtype": jnp.float32,
}


def struct(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def capture(module, variables, images):
    """(outputs, intermediates): every submodule's output, per call, of an eval-mode apply."""
    outputs, state = module.apply(
        variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    return outputs, state["intermediates"]


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).normal(size=(2, 50, 37, 3)), jnp.float32)


def real_init(module, images):
    """(variables, outputs, intermediates) of the module's own initializers, with the output of
    every submodule call as in :func:`capture`.

    An "rbg" key: XLA compiles its random bits generator in a third of the time it takes for
    the default threefry, and the initializers' distributions are the same.
    """
    outputs, variables = jax.jit(
        lambda key, x: module.init_with_output(key, x, train=False, capture_intermediates=True)
    )(jax.random.key(0, impl="rbg"), images)
    intermediates = variables.pop("intermediates")
    return variables, outputs, intermediates


@pytest.fixture(scope="module")
def initialized(images):
    """(variables, outputs, intermediates) of the real initializer of TINY on ``images``."""
    return real_init(RetinaNet(**TINY), images)


@pytest.mark.parametrize(
    "height, width, min_level, max_level, scales, ratios",
    [
        (64, 64, 3, 7, (1.0, 1.26, 1.59), (0.5, 1.0, 2.0)),
        (50, 37, 3, 7, (1.0, 1.26, 1.59), (0.5, 1.0, 2.0)),
        (100, 75, 2, 6, (1.0,), (0.5, 1.0, 2.0)),
        (33, 1, 4, 5, (1.0, 2.0), (1.0,)),
    ],
)
def test_anchor_axis_has_one_row_per_anchor_of_the_pyramid(
    height, width, min_level, max_level, scales, ratios
):
    num_anchors = num_anchors_per_location(scales=scales, aspect_ratios=ratios)
    module = RetinaNet(
        **{**TINY, "min_level": min_level, "max_level": max_level, "num_anchors": num_anchors}
    )
    outputs = jax.eval_shape(
        lambda x: module.init_with_output(jax.random.key(0), x, train=False)[0],
        struct(2, height, width, 3),
    )
    anchors = sum(
        num_anchors_per_level(
            (height, width), min_level=min_level, max_level=max_level, scales=scales,
            aspect_ratios=ratios,
        )
    )
    chex.assert_shape(outputs["cls_logits"], (2, anchors, NUM_CLASSES))
    chex.assert_shape(outputs["box_deltas"], (2, anchors, 4))


def test_anchor_axis_is_ordered_level_y_x_anchor(initialized):
    _, outputs, intermediates = initialized
    for key, subnet, values in [
        ("cls_logits", "cls_subnet", NUM_CLASSES), ("box_deltas", "box_subnet", 4)
    ]:
        per_level = intermediates[subnet]["__call__"]
        assert len(per_level) == 5
        start = 0
        for level, head in zip(range(3, 8), per_level, strict=True):
            _, h, w, _ = head.shape
            assert (h, w) == (math.ceil(50 / 2**level), math.ceil(37 / 2**level))
            # Row (y, x, a) of the level holds channels a * values .. (a + 1) * values of (y, x).
            for y, x, a in [(0, 0, 0), (h - 1, w - 1, 8), (h // 2, w - 1, 4)]:
                row = start + (y * w + x) * 9 + a
                np.testing.assert_array_equal(
                    outputs[key][:, row], head[:, y, x, a * values : (a + 1) * values]
                )
            start += h * w * 9
        assert start == outputs[key].shape[1]


def test_classification_bias_starts_at_the_prior(initialized):
    variables, _, _ = initialized
    # -log((1 - pi) / pi) for pi = 0.01 is -log(99).
    np.testing.assert_allclose(
        variables["params"]["cls_subnet"]["output"]["bias"], -math.log(99.0), rtol=1e-6
    )
    np.testing.assert_array_equal(variables["params"]["box_subnet"]["output"]["bias"], 0.0)


def test_classification_bias_follows_prior_prob():
    module = RetinaNet(**{**TINY, "prior_prob": 0.2, "max_level": 5, "head_convs": 0})
    variables, _, _ = real_init(module, jnp.zeros((1, 32, 32, 3)))
    cls_bias = variables["params"]["cls_subnet"]["output"]["bias"]
    chex.assert_shape(cls_bias, (9 * NUM_CLASSES,))
    np.testing.assert_allclose(cls_bias, -math.log(0.8 / 0.2), rtol=1e-6)


def test_initial_foreground_probability_is_the_prior_everywhere(initialized):
    _, outputs, _ = initialized
    # Gaussian weights of std 0.01 make every output close to its bias, so that sigmoid(logit) is
    # close to prior_prob (section 4.1).
    np.testing.assert_allclose(jax.nn.sigmoid(outputs["cls_logits"]), 0.01, rtol=0.05)
    np.testing.assert_allclose(outputs["box_deltas"], 0.0, atol=0.05)


def test_head_convolutions_start_gaussian_with_std_0_01_and_zero_bias(initialized):
    variables, _, _ = initialized
    for subnet in ("cls_subnet", "box_subnet"):
        params = variables["params"][subnet]
        assert sorted(params) == ["conv0", "conv1", "output"]
        for name, conv in params.items():
            kernel = np.asarray(conv["kernel"])
            assert kernel.shape[:2] == (3, 3), (subnet, name)
            assert abs(kernel.std() - 0.01) < 0.001, (subnet, name, kernel.std())
            assert abs(kernel.mean()) < 0.001, (subnet, name)
            if name != "output":  # The output biases are checked with the prior.
                np.testing.assert_array_equal(conv["bias"], 0.0)


def subnet_parameters(in_channels, convs, channels, outputs):
    """Parameters of ``convs`` 3x3 conv layers and an output 3x3 conv layer, with biases."""
    hidden = sum(9 * c * channels + channels for c in [in_channels] + [channels] * (convs - 1))
    return hidden + 9 * channels * outputs + outputs


@pytest.mark.parametrize("max_level", [4, 7])
def test_one_subnet_of_each_kind_serves_every_level(max_level):
    module = RetinaNet(**{**TINY, "max_level": max_level})
    params = jax.eval_shape(
        module.init, jax.random.key(0), struct(1, 64, 64, 3), train=False
    )["params"]
    assert sorted(params) == ["backbone", "box_subnet", "cls_subnet"]
    assert count(params["cls_subnet"]) == subnet_parameters(16, 2, HEAD_CHANNELS, 9 * NUM_CLASSES)
    assert count(params["box_subnet"]) == subnet_parameters(16, 2, HEAD_CHANNELS, 9 * 4)


def test_gn_heads_normalize_each_group_of_each_example_at_every_level(images):
    module = RetinaNet(**{**TINY, "head_norm": "gn"})
    variables = random_variables(module, images, train=False)
    params = variables["params"]["cls_subnet"]
    assert sorted(params) == ["conv0", "conv1", "norm0", "norm1", "output"]
    chex.assert_shape(params["norm0"]["scale"], (HEAD_CHANNELS,))
    outputs, intermediates = jax.jit(lambda v, x: capture(module, v, x))(variables, images)
    assert np.all(np.isfinite(outputs["cls_logits"]))
    norm = params["norm0"]
    calls = zip(
        intermediates["cls_subnet"]["conv0"]["__call__"],
        intermediates["cls_subnet"]["norm0"]["__call__"],
        strict=True,
    )
    for conv, normalized in calls:
        batch, h, w, _ = conv.shape
        # 64 channels in 32 groups of 2 adjacent channels; each (example, group) is normalized
        # over its h * w * 2 values.
        groups = np.asarray(conv, np.float64).reshape(batch, h * w, 32, 2)
        mean = groups.mean(axis=(1, 3), keepdims=True)
        var = groups.var(axis=(1, 3), keepdims=True)
        expected = ((groups - mean) / np.sqrt(var + 1e-5)).reshape(conv.shape)
        expected = expected * norm["scale"] + norm["bias"]
        # Flax takes the variance as E[x^2] - E[x]^2 in float32, which loses a few digits on the
        # 1x1 levels, where a group is two values.
        np.testing.assert_allclose(normalized, expected, rtol=1e-4, atol=1e-3)


def _np_conv3x3(x, params):
    """A stride-1 3x3 convolution padded by 1, plus its bias if it has one, in float64 NumPy."""
    kernel = np.asarray(params["kernel"], np.float64)
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    y = sum(np.einsum("bhwc,co->bhwo", padded[:, i:i + height, j:j + width], kernel[i, j])
            for i in range(3) for j in range(3))
    return y + np.asarray(params["bias"]) if "bias" in params else y


def _np_group_norm(x, params, groups):
    b, h, w, c = x.shape
    grouped = x.reshape(b, h * w, groups, c // groups)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    var = grouped.var(axis=(1, 3), keepdims=True)
    normalized = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    return normalized * np.asarray(params["scale"]) + np.asarray(params["bias"])


def test_gn_subnet_without_conv_bias_is_conv_group_norm_relu_and_a_biased_output_conv():
    """torchvision's v2 heads: GroupNorm(32) after hidden convs that have no bias."""
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 5, 64)), jnp.float32)
    subnet = Subnet(outputs=18, num_convs=2, channels=64, norm="gn", conv_bias=False)
    variables = random_variables(subnet, x)
    params = variables["params"]
    assert sorted(params["conv0"]) == sorted(params["conv1"]) == ["kernel"]
    assert sorted(params["output"]) == ["bias", "kernel"]
    expected = np.asarray(x, np.float64)
    for i in range(2):
        expected = _np_conv3x3(expected, params[f"conv{i}"])
        expected = np.maximum(_np_group_norm(expected, params[f"norm{i}"], 32), 0.0)
    expected = _np_conv3x3(expected, params["output"])
    np.testing.assert_allclose(jax.jit(subnet.apply)(variables, x), expected, rtol=1e-4,
                               atol=1e-4)


def test_head_conv_bias_reaches_both_subnets_and_defaults_to_a_bias():
    for conv_bias, leaves in ((True, ["bias", "kernel"]), (False, ["kernel"])):
        kwargs = {} if conv_bias else {"head_conv_bias": False}
        module = RetinaNet(**{**TINY, "head_norm": "gn", **kwargs})
        params = jax.eval_shape(module.init, jax.random.key(0), struct(1, 32, 32, 3),
                                train=False)["params"]
        for subnet in ("cls_subnet", "box_subnet"):
            assert sorted(params[subnet]["conv1"]) == leaves, (subnet, conv_bias)
            assert sorted(params[subnet]["output"]) == ["bias", "kernel"]


def test_no_head_norm_means_no_norm_parameters_in_the_subnets(initialized):
    variables, _, _ = initialized
    for subnet in ("cls_subnet", "box_subnet"):
        assert not any(name.startswith("norm") for name in variables["params"][subnet])


def test_bfloat16_computes_in_bfloat16_with_float32_params_and_float32_outputs():
    module = RetinaNet(**{**TINY, "dtype": jnp.bfloat16})
    x = struct(2, 64, 64, 3)
    variables = jax.eval_shape(module.init, jax.random.key(0), x, train=False)
    outputs, intermediates = jax.eval_shape(lambda v, x: capture(module, v, x), variables, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    for subnet in ("cls_subnet", "box_subnet"):
        for head in intermediates[subnet]["__call__"]:
            assert head.dtype == jnp.bfloat16, subnet
    for level in intermediates["backbone"]["fpn"]["__call__"][0].values():
        assert level.dtype == jnp.bfloat16
    # The documented contract: the loss receives float32 logits and deltas.
    assert outputs["cls_logits"].dtype == outputs["box_deltas"].dtype == jnp.float32


def test_sync_bn_under_pmap_equals_bn_over_the_global_batch():
    devices = jax.local_device_count()
    assert devices == 4, "tests/conftest.py should force 4 CPU devices"
    images = jnp.asarray(np.random.default_rng(2).normal(size=(8, 32, 32, 3)), jnp.float32)
    config = {**TINY, "max_level": 5, "head_convs": 0}
    global_bn = RetinaNet(**{**config, "norm": "bn"})
    variables = random_variables(global_bn, images, train=False)

    def train_apply(module):
        return lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])

    outputs, updates = jax.jit(train_apply(global_bn))(variables, images)
    synced = RetinaNet(**{**config, "norm": "sync_bn", "axis_name": "batch"})
    sharded = images.reshape(devices, -1, *images.shape[1:])
    synced_outputs, synced_updates = jax.pmap(
        train_apply(synced), axis_name="batch", in_axes=(None, 0)
    )(variables, sharded)
    for key, output in outputs.items():
        np.testing.assert_allclose(
            synced_outputs[key].reshape(output.shape), output, rtol=1e-4, atol=1e-4, err_msg=key
        )
    for device in range(devices):
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, d=device: a[d], synced_updates["batch_stats"]),
            updates["batch_stats"], rtol=1e-4, atol=1e-5,
        )
    # The control: per-device statistics ("bn" under pmap) give different outputs.
    per_device, _ = jax.pmap(train_apply(global_bn), in_axes=(None, 0))(variables, sharded)
    assert not np.allclose(
        per_device["cls_logits"].reshape(outputs["cls_logits"].shape), outputs["cls_logits"],
        rtol=1e-4, atol=1e-4,
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"backbone": "resnet152"}, r"unknown ResNet 'resnet152', expected one of .*resnet50"),
        ({"min_level": 1}, r"min_level is 1, expected 2\.\.5"),
        ({"min_level": 6}, r"min_level is 6, expected 2\.\.5"),
        ({"min_level": 5, "max_level": 4}, r"max_level is 4, expected >= min_level \(5\)"),
        ({"num_classes": 0}, r"num_classes is 0, expected >= 1"),
        ({"num_anchors": 0}, r"num_anchors is 0, expected >= 1"),
        ({"prior_prob": 1.0}, r"prior_prob is 1.0, expected a probability in \(0, 1\)"),
        ({"prior_prob": 0.0}, r"prior_prob is 0.0, expected a probability in \(0, 1\)"),
        ({"head_convs": -1}, r"head_convs is -1, expected >= 0"),
        ({"head_channels": 0}, r"head_channels is 0, expected >= 1"),
        ({"head_norm": "bn"}, r"head_norm is 'bn', expected one of \(None, 'gn'\)"),
        ({"norm": "ln"}, r"norm is 'ln', expected one of .*frozen_bn"),
        ({"norm": "sync_bn"}, r"sync_bn.*needs axis_name"),
    ],
)
def test_invalid_configurations_raise_at_construction(overrides, match):
    with pytest.raises(ValueError, match=match):
        RetinaNet(**{**TINY, **overrides})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"outputs": 0}, r"outputs is 0, expected >= 1"),
        ({"outputs": 9, "num_convs": -1}, r"num_convs is -1, expected >= 0"),
        ({"outputs": 9, "channels": 0}, r"channels is 0, expected >= 1"),
        ({"outputs": 9, "norm": "bn"}, r"norm is 'bn', expected one of \(None, 'gn'\)"),
    ],
)
def test_invalid_subnets_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Subnet(**kwargs)


def test_images_without_three_channels_are_rejected_with_their_shape():
    match = r"images has shape \(2, 32, 32\), expected \[B, H, W, 3\]"
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(
            lambda x: RetinaNet(**TINY).init(jax.random.key(0), x, train=False),
            struct(2, 32, 32),
        )
