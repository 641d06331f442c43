"""Tests of focaljax.models.resnet: feature-map geometry, parameter counts and the four norms."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.models import resnet as resnet_lib
from focaljax.models.resnet import FrozenBatchNorm, ResNet, resnet
from tests.models.variables import count, random_variables

# Independent of the presets table: (stem width, channel expansion of a block).
PRESET_CHANNELS = {
    "resnet18": (64, 1),
    "resnet34": (64, 1),
    "resnet50": (64, 4),
    "resnet101": (64, 4),
    "resnet_tiny": (16, 1),
}
# torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in the 1000-way fc layer.
RESNET50_WITHOUT_FC = 25_557_032 - 2_049_000
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
    _, features = init_shapes(resnet(name), struct(2, height, width, 3))
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
    assert resnet(50) == resnet("resnet50")
    assert resnet(18, width=8).width == 8


def test_resnet50_has_the_papers_parameter_count():
    variables, _ = init_shapes(
        resnet("resnet50", norm="bn"), struct(1, 64, 64, 3)
    )
    assert count(variables["params"]) == RESNET50_WITHOUT_FC


def test_frozen_bn_keeps_its_affine_parameters_out_of_params():
    x = struct(1, 64, 64, 3)
    frozen, _ = init_shapes(resnet("resnet50"), x)
    trainable, _ = init_shapes(resnet("resnet50", norm="bn"), x)
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
        resnet("resnet_tiny", dtype=jnp.bfloat16), struct(2, 64, 64, 3)
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
    module = resnet("resnet_tiny", **TINY)
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
    module = resnet("resnet_tiny", norm="bn", **TINY)
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
    module = resnet("resnet_tiny", norm="sync_bn", axis_name="batch", **TINY)
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
    module = resnet("resnet_tiny", norm="gn", **TINY)
    variables = random_variables(module, images, train=False)
    assert set(variables) == {"params"}
    assert variables["params"]["stem_norm"]["scale"].shape == (8,)

    @jax.jit
    def run(variables, x):
        return module.apply(variables, x, train=True), module.apply(variables, x[:1], train=False)

    batch, single = run(variables, images)
    for level, feature in batch.items():
        assert np.all(np.isfinite(feature)), level
        # Group norm uses no batch statistics: an example's features do not depend on the others.
        np.testing.assert_allclose(single[level][0], feature[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels, groups", [(8, 8), (16, 16), (24, 8), (64, 32), (2048, 32)])
def test_group_norm_uses_32_groups_or_the_largest_divisor_below(channels, groups):
    assert resnet_lib.group_norm_groups(channels) == groups


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: resnet("resnet19"), r"unknown ResNet 'resnet19', expected one of .*resnet50"),
        (lambda: resnet(152), r"unknown ResNet 152, .*depth in \(18, 34, 50, 101\)"),
        (lambda: resnet(50, norm="ln"), r"norm is 'ln', expected one of .*frozen_bn"),
        (lambda: resnet(50, norm="sync_bn"), r"sync_bn.*needs axis_name"),
        (lambda: ResNet(stage_sizes=(2, 2, 2)), r"stage_sizes is \(2, 2, 2\), expected four"),
        (lambda: ResNet(stage_sizes=(1, 1, 1, 1), block="dense"), r"block is 'dense'"),
        (lambda: resnet(18, width=0), r"width is 0"),
    ],
)
def test_invalid_configurations_raise_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()
