"""Tests of focaljax.models.resnet: feature-map geometry, parameter counts and the four norms."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.models import resnet as resnet_lib
from focaljax.models.resnet import FrozenBatchNorm, ResNet, build_resnet
from tests.models.variables import count, random_variables

# Independent of the presets table: (stem width, channel expansion of a block).
PRESET_CHANNELS = {
    "resnet18": (64, 1),
    "resnet34": (64, 1),
    "resnet50": (64, 4),
    "resnet101": (64, 4),
    "resnet_tiny": (16, 1),
}
# torchvision's published parameter counts (torchvision.models docs) less the 1000-way fc layer:
# 512 * 1000 + 1000 for the basic-block nets, 2048 * 1000 + 1000 for the bottleneck nets.
PUBLISHED_WITHOUT_FC = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
}
RESNET50_WITHOUT_FC = PUBLISHED_WITHOUT_FC["resnet50"]  # 23,508,032, the usual "23.5M".
TINY = {"stage_sizes": (1, 1, 1, 1), "width": 8}


def struct(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def leaf_names(tree):
    return [path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def init_shapes(module, images, **kwargs):
    """(variables, outputs) of ``module.init_with_output`` as shape structs, without computing."""
    return jax.eval_shape(
        lambda x: module.init_with_output(jax.random.key(0), x, train=False, **kwargs), images
    )[::-1]


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)


@pytest.mark.parametrize("name", sorted(PRESET_CHANNELS))
@pytest.mark.parametrize("height, width", [(64, 64), (100, 75), (33, 1)])
def test_feature_maps_have_stride_2_to_the_level_and_preset_channels(name, height, width):
    width_channels, expansion = PRESET_CHANNELS[name]
    _, features = init_shapes(build_resnet(name), struct(2, height, width, 3))
    assert sorted(features) == ["C2", "C3", "C4", "C5"]
    for level in range(2, 6):
        expected = (
            2,
            math.ceil(height / 2**level),
            math.ceil(width / 2**level),
            width_channels * 2 ** (level - 2) * expansion,
        )
        chex.assert_shape(features[f"C{level}"], expected)


def test_depth_and_name_give_the_same_network():
    assert build_resnet(50) == build_resnet("resnet50")
    assert build_resnet(18, width=8).width == 8


@pytest.mark.parametrize("name", sorted(PUBLISHED_WITHOUT_FC))
def test_parameter_count_matches_torchvision_without_the_classifier(name):
    variables, _ = init_shapes(build_resnet(name, norm="bn"), struct(1, 64, 64, 3))
    assert count(variables["params"]) == PUBLISHED_WITHOUT_FC[name]


def test_frozen_bn_keeps_its_affine_parameters_out_of_params():
    x = struct(1, 64, 64, 3)
    frozen, _ = init_shapes(build_resnet("resnet50"), x)
    trainable, _ = init_shapes(build_resnet("resnet50", norm="bn"), x)
    frozen_affine = [
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(frozen["batch_stats"])
        if path[-1].key in ("scale", "bias")
    ]
    assert count(frozen["params"]) + count(frozen_affine) == RESNET50_WITHOUT_FC
    assert count(frozen["params"]) < count(trainable["params"])
    assert set(leaf_names(frozen["params"])) == {"kernel"}
    stem = frozen["batch_stats"]["stem_norm"]
    assert sorted(stem) == ["bias", "mean", "scale", "var"]


def test_bfloat16_computes_in_bfloat16_with_float32_params():
    variables, features = init_shapes(
        build_resnet("resnet_tiny", dtype=jnp.bfloat16), struct(2, 64, 64, 3)
    )
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32
    for feature in features.values():
        assert feature.dtype == jnp.bfloat16


def test_frozen_batch_norm_is_the_affine_map_of_its_statistics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    stats = {
        "scale": rng.uniform(0.5, 2, 4), "bias": rng.normal(size=4),
        "mean": rng.normal(size=4), "var": rng.uniform(0.5, 2, 4),
    }
    y = FrozenBatchNorm().apply({"batch_stats": stats}, x)
    expected = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * stats["scale"] + stats["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_frozen_bn_output_is_the_same_in_train_and_eval_and_its_stats_never_change(images):
    module = build_resnet("resnet_tiny", **TINY)
    variables = random_variables(module, images, train=False)

    @jax.jit
    def both_modes(variables, x):
        trained, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return trained, updates, module.apply(variables, x, train=False)

    trained, updates, evaluated = both_modes(variables, images)
    chex.assert_trees_all_equal(trained, evaluated)
    chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])


@pytest.fixture(scope="module")
def bn_train(images):
    """(variables, features, batch_stats) of a train-mode "bn" ResNet on the 8 ``images``."""
    module = build_resnet("resnet_tiny", norm="bn", **TINY)
    variables = random_variables(module, images, train=False)
    features, updates = jax.jit(
        lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, images)
    return variables, features, updates["batch_stats"]


def test_bn_in_train_mode_moves_running_averages_toward_batch_statistics(images, bn_train):
    variables, _, batch_stats = bn_train
    stem = jax.lax.conv_general_dilated(
        images, variables["params"]["stem_conv"]["kernel"], (2, 2), ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    old = variables["batch_stats"]["stem_norm"]
    new = batch_stats["stem_norm"]
    np.testing.assert_allclose(
        new["mean"], 0.9 * old["mean"] + 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        new["var"], 0.9 * old["var"] + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5
    )
    for new_leaf, old_leaf in zip(
        jax.tree.leaves(batch_stats), jax.tree.leaves(variables["batch_stats"]), strict=True
    ):
        assert not np.allclose(new_leaf, old_leaf)


def test_sync_bn_under_pmap_equals_bn_over_the_global_batch(images, bn_train):
    variables, features, batch_stats = bn_train
    devices = jax.local_device_count()
    assert devices == 4, "tests/conftest.py should force 4 CPU devices"
    module = build_resnet("resnet_tiny", norm="sync_bn", axis_name="batch", **TINY)
    sharded = images.reshape(devices, -1, *images.shape[1:])
    synced, updates = jax.pmap(
        lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]),
        axis_name="batch",
        in_axes=(None, 0),
    )(variables, sharded)
    for level, feature in features.items():
        np.testing.assert_allclose(
            synced[level].reshape(feature.shape), feature, rtol=1e-4, atol=1e-4, err_msg=level
        )
    for device in range(devices):
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, d=device: a[d], updates["batch_stats"]), batch_stats,
            rtol=1e-4, atol=1e-5,
        )


def test_gn_normalizes_per_example_with_no_batch_stats(images):
    module = build_resnet("resnet_tiny", norm="gn", **TINY)
    variables = random_variables(module, images, train=False)
    assert set(variables) == {"params"}
    assert variables["params"]["stem_norm"]["scale"].shape == (8,)
    # The same batch with every example but the first replaced: same shapes, so the same compiled
    # convolutions and summation order, and only a dependence on the other examples could move the
    # first example's features. (Comparing with a batch of one instead differs by ~1e-4 from
    # float32 reassociation, because XLA tiles the convolutions by batch size.)
    others = images.at[1:].set(images[1:][::-1] * 3.0 + 1.0)

    @jax.jit
    def run(variables, x, y):
        return (
            module.apply(variables, x, train=True),
            module.apply(variables, y, train=True),
            module.apply(variables, x, train=False),
        )

    batch, altered, evaluated = run(variables, images, others)
    for level, feature in batch.items():
        assert np.all(np.isfinite(feature)), level
        np.testing.assert_allclose(altered[level][0], feature[0], rtol=1e-6, atol=1e-6)
        assert not np.allclose(altered[level][1:], feature[1:]), level
    chex.assert_trees_all_equal(evaluated, batch)


def test_bn_in_train_mode_mixes_examples_unlike_gn(images, bn_train):
    """The control for the test above: with batch norm the first example's features do move."""
    variables, features, _ = bn_train
    module = build_resnet("resnet_tiny", norm="bn", **TINY)
    others = images.at[1:].set(images[1:][::-1] * 3.0 + 1.0)
    altered, _ = jax.jit(
        lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, others)
    assert not np.allclose(altered["C5"][0], features["C5"][0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("channels, groups", [(8, 8), (16, 16), (24, 8), (64, 32), (2048, 32)])
def test_group_norm_uses_32_groups_or_the_largest_divisor_below(channels, groups):
    assert resnet_lib.group_norm_groups(channels) == groups


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: build_resnet("resnet19"),
            r"unknown ResNet 'resnet19', expected one of .*resnet50",
        ),
        (lambda: build_resnet(152), r"unknown ResNet 152, .*depth in \(18, 34, 50, 101\)"),
        (lambda: build_resnet(50, norm="ln"), r"norm is 'ln', expected one of .*frozen_bn"),
        (lambda: build_resnet(50, norm="sync_bn"), r"sync_bn.*needs axis_name"),
        (lambda: ResNet(stage_sizes=(2, 2, 2)), r"stage_sizes is \(2, 2, 2\), expected four"),
        (lambda: ResNet(stage_sizes=(1, 1, 1, 1), block="dense"), r"block is 'dense'"),
        (lambda: build_resnet(18, width=0), r"width is 0"),
    ],
)
def test_invalid_configurations_raise_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()
