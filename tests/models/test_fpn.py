"""Tests of focaljax.models.fpn: level geometry, the top-down and extra-block wiring, the frozen
batch norm of torchvision's v2 FPN, dtypes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.models.fpn import FPN, ResNetFPN, upsample_to
from tests.models.variables import random_variables

# Channels of C2..C5 in the wiring tests: all different, so a map wired to the wrong level fails.
C_CHANNELS = {2: 3, 3: 5, 4: 6, 5: 7}
CHANNELS = 4


def struct(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def level_shape(batch, height, width, level, channels):
    return (batch, math.ceil(height / 2**level), math.ceil(width / 2**level), channels)


def backbone_features(height, width, seed=0):
    """Random C2..C5 of an ``height x width`` image, at the sizes a ResNet gives them."""
    rng = np.random.default_rng(seed)
    return {
        f"C{level}": jnp.asarray(
            rng.normal(size=level_shape(2, height, width, level, channels)), jnp.float32
        )
        for level, channels in C_CHANNELS.items()
    }


def conv(x, params, stride=1):
    """A 'SAME'-size convolution (padding ``k // 2``) with its bias if it has one, written with
    lax directly."""
    pad = params["kernel"].shape[0] // 2
    y = jax.lax.conv_general_dilated(
        x, params["kernel"], (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest",
    )
    return y + params["bias"] if "bias" in params else y


def batch_norm_at_test(x, stats):
    """Batch norm in evaluation mode: ``(x - mean) / sqrt(var + 1e-5) * scale + bias``."""
    return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * stats["scale"] + stats["bias"]


def reference_fpn(params, features, min_level, max_level, extra_block, stats=None):
    """The paper's FPN from its description: 1x1 laterals, nearest 2x upsampling (cropped to odd
    sizes) added top-down from C5, a 3x3 conv per output; above P5 the extra block. With
    ``stats``, each lateral and output conv is followed by a batch norm at test time, as in
    torchvision's v2 FPN."""
    def conv_norm(x, name):
        y = conv(x, params[name])
        return y if stats is None else batch_norm_at_test(y, stats[f"{name}_norm"])

    inner = {5: conv_norm(features["C5"], "lateral5")}
    for level in range(4, min_level - 1, -1):
        lateral = conv_norm(features[f"C{level}"], f"lateral{level}")
        up = np.repeat(np.repeat(inner[level + 1], 2, axis=1), 2, axis=2)
        inner[level] = lateral + up[:, : lateral.shape[1], : lateral.shape[2]]
    outputs = {
        level: conv_norm(inner[level], f"output{level}")
        for level in range(min_level, min(max_level, 5) + 1)
    }
    for level in range(6, max_level + 1):
        if extra_block == "max_pool":
            outputs[level] = outputs[level - 1][:, ::2, ::2]
        elif level == 6:
            source = features["C5"] if extra_block == "conv_c5" else outputs[5]
            outputs[level] = conv(source, params["extra6"], stride=2)
        else:
            outputs[level] = conv(jax.nn.relu(outputs[level - 1]), params[f"extra{level}"], 2)
    return {f"P{level}": outputs[level] for level in range(min_level, max_level + 1)}


@pytest.mark.parametrize("height, width", [(64, 64), (100, 75), (33, 1)])
def test_resnet_fpn_defaults_give_p3_to_p7_with_256_channels_at_stride_2_to_the_level(
    height, width
):
    outputs = jax.eval_shape(
        lambda x: ResNetFPN().init_with_output(jax.random.key(0), x, train=False)[0],
        struct(2, height, width, 3),
    )
    assert sorted(outputs) == ["P3", "P4", "P5", "P6", "P7"]
    for level in range(3, 8):
        chex.assert_shape(outputs[f"P{level}"], level_shape(2, height, width, level, 256))


@pytest.mark.parametrize("min_level, max_level", [(2, 6), (3, 5), (4, 8), (5, 5)])
@pytest.mark.parametrize("extra_block", ["conv_c5", "conv_p5", "max_pool"])
def test_levels_min_to_max_have_ceil_sizes(min_level, max_level, extra_block):
    features = {name: struct(*c.shape) for name, c in backbone_features(75, 50).items()}
    module = FPN(CHANNELS, min_level, max_level, extra_block)
    outputs = jax.eval_shape(
        lambda f: module.init_with_output(jax.random.key(0), f)[0], features
    )
    assert sorted(outputs) == [f"P{level}" for level in range(min_level, max_level + 1)]
    for level in range(min_level, max_level + 1):
        chex.assert_shape(outputs[f"P{level}"], level_shape(2, 75, 50, level, CHANNELS))


@pytest.mark.parametrize(
    "extra_block, p6_input_channels",
    [("conv_c5", C_CHANNELS[5]), ("conv_p5", CHANNELS), ("max_pool", None)],
)
def test_p6_comes_from_c5_by_default_and_from_p5_or_pooling_on_request(
    extra_block, p6_input_channels
):
    features = {name: struct(*c.shape) for name, c in backbone_features(64, 64).items()}
    kwargs = {} if extra_block == "conv_c5" else {"extra_block": extra_block}
    variables = jax.eval_shape(FPN(CHANNELS, **kwargs).init, jax.random.key(0), features)
    params = variables["params"]
    if p6_input_channels is None:
        assert not any(name.startswith("extra") for name in params)
    else:
        assert params["extra6"]["kernel"].shape == (3, 3, p6_input_channels, CHANNELS)
        assert params["extra7"]["kernel"].shape == (3, 3, CHANNELS, CHANNELS)


@pytest.mark.parametrize(
    "min_level, max_level, extra_block",
    [(3, 7, "conv_c5"), (3, 7, "conv_p5"), (2, 6, "max_pool"), (4, 4, "conv_c5")],
)
def test_outputs_equal_the_papers_top_down_and_extra_levels(min_level, max_level, extra_block):
    # 75 x 50 makes odd sizes at every level, where upsampling must crop to stay aligned.
    features = backbone_features(75, 50)
    module = FPN(CHANNELS, min_level, max_level, extra_block)
    variables = random_variables(module, features)
    outputs = jax.jit(module.apply)(variables, features)
    expected = reference_fpn(variables["params"], features, min_level, max_level, extra_block)
    assert sorted(outputs) == sorted(expected)
    for name, output in outputs.items():
        np.testing.assert_allclose(output, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "min_level, max_level, extra_block", [(2, 6, "max_pool"), (3, 7, "conv_c5")]
)
def test_frozen_bn_norm_follows_each_lateral_and_output_conv_which_lose_their_bias(
    min_level, max_level, extra_block
):
    features = backbone_features(75, 50)
    module = FPN(CHANNELS, min_level, max_level, extra_block, norm="frozen_bn")
    variables = random_variables(module, features)
    params, stats = variables["params"], variables["batch_stats"]
    for level in range(min_level, 6):
        for name in (f"lateral{level}", f"output{level}"):
            assert sorted(params[name]) == ["kernel"], name
            assert sorted(stats[f"{name}_norm"]) == ["bias", "mean", "scale", "var"], name
    for level in range(6, max_level + 1):
        if extra_block != "max_pool":  # The extra convs keep their bias and have no norm.
            assert sorted(params[f"extra{level}"]) == ["bias", "kernel"]
    assert len(stats) == 2 * (6 - min_level)
    outputs = jax.jit(module.apply)(variables, features)
    expected = reference_fpn(params, features, min_level, max_level, extra_block, stats)
    assert sorted(outputs) == sorted(expected)
    for name, output in outputs.items():
        np.testing.assert_allclose(output, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_upsampling_repeats_each_pixel_2x2_and_crops_odd_sizes():
    x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    up = upsample_to(x, (1, 3, 4, 1))
    expected = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]]
    np.testing.assert_array_equal(up[0, :, :, 0], expected)


def test_bfloat16_computes_in_bfloat16_with_float32_params():
    module = ResNetFPN("resnet_tiny", channels=8, dtype=jnp.bfloat16)
    variables, outputs = jax.eval_shape(
        lambda x: module.init_with_output(jax.random.key(0), x, train=False)[::-1],
        struct(1, 64, 64, 3),
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert {p.dtype for p in outputs.values()} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: FPN(min_level=1), r"min_level is 1, expected 2\.\.5"),
        (lambda: FPN(min_level=6, max_level=7), r"min_level is 6, expected 2\.\.5"),
        (lambda: FPN(min_level=4, max_level=3), r"max_level is 3, expected >= min_level \(4\)"),
        (lambda: FPN(extra_block="conv"), r"extra_block is 'conv', expected one of .*conv_c5"),
        (lambda: FPN(channels=0), r"channels is 0, expected a positive"),
        (lambda: FPN(norm="gn"), r"norm is 'gn', expected one of \(None, 'frozen_bn'\)"),
        (lambda: ResNetFPN("resnet152"), r"unknown ResNet 'resnet152', expected one of"),
        (lambda: ResNetFPN(min_level=1), r"min_level is 1, expected 2\.\.5"),
        (lambda: ResNetFPN(norm="sync_bn"), r"sync_bn.*needs axis_name"),
    ],
)
def test_invalid_configurations_raise_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()
