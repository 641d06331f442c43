"""Tests of focaljax.models.pretrained (the layouts and their exact conversion, files that do not
fit the network), and of the ResNet's stride_in_1x1 and freezing. The readers, format detection and
the restricted unpicklers are tested in test_weight_readers.py; the merge into a detector in
tests/detectors/test_backbone.py.

The references are independent of focaljax: Keras applications' ResNet50, and a float64 NumPy
ResNet written from torchvision's definition (``tests/models/weight_files.py``), run on the raw
arrays of the files in their own layout and with their own input convention. Relative errors are
``max |focaljax - reference| / max |reference|`` per feature map.
"""

import doctest
import functools
import pickle
import re

import chex
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from focaljax.models import FasterRCNN, RetinaNet, build_resnet, freeze_mask
from focaljax.models import pretrained as pretrained_lib
from focaljax.models import resnet as resnet_lib
from focaljax.models.pretrained import WeightFileError, load_resnet_weights
from tests.models import weight_files
from tests.models.variables import random_variables

# torchvision's documented input normalization (RGB, of pixels / 255), and the two caffe ones:
# detectron2's MSRA PIXEL_MEAN (BGR, std 1) and Keras' preprocess_input(mode="caffe").
RGB_MEAN = np.array([0.485, 0.456, 0.406])
RGB_STD = np.array([0.229, 0.224, 0.225])
MSRA_BGR_MEAN = np.array([103.53, 116.28, 123.675])
KERAS_BGR_MEAN = np.array([103.939, 116.779, 123.68])
RESNET50_STAGES = (3, 4, 6, 3)
# Float32 rounding through a ResNet is ~1e-6 relative; a wrong padding, stride, channel order or
# a dropped bias is 1e-2 or more.
TOLERANCE = 1e-4


def rel_error(actual, reference):
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


def pixels(size, seed=0):
    """An RGB image, float64 values in 0..255, batch of one."""
    return np.random.default_rng(seed).uniform(0, 255, (1, size, size, 3))


def normalized(image):
    """focaljax's input: RGB, (pixels / 255 - mean) / std."""
    return ((image / 255.0 - RGB_MEAN) / RGB_STD).astype(np.float32)


@functools.cache
def features_fn(resnet):
    """One compiled forward pass per network, shared by the tests that use it."""
    return jax.jit(lambda variables, x: resnet.apply(variables, x, train=False))


RESNET50_MSRA = build_resnet(50, stride_in_1x1=True)


# -- torchvision / timm layout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "block, stages", [("basic", (2, 2, 2, 2)), ("bottleneck", (1, 1, 1, 1))],
    ids=["resnet18", "bottleneck"],
)
def test_torchvision_weights_give_the_features_of_a_numpy_torchvision_resnet(
    tmp_path, block, stages
):
    net = weight_files.random_resnet(np.random.default_rng(1), block, stages)
    path = tmp_path / "weights.safetensors"
    save_file(weight_files.torchvision_state(net), str(path))
    resnet = resnet_lib.ResNet(stage_sizes=stages, block=block)
    loaded = load_resnet_weights(path, resnet)
    image = pixels(32)
    reference = weight_files.reference_features(net, (image / 255.0 - RGB_MEAN) / RGB_STD)
    features = features_fn(resnet)(loaded.variables, normalized(image))
    for level in ("C2", "C3", "C4", "C5"):
        chex.assert_shape(features[level], reference[level].shape)
        # Measured: 3e-7 to 9e-7 for both networks; the stride in the wrong conv gives 0.4-0.9.
        assert rel_error(features[level], reference[level]) < TOLERANCE, level
    assert loaded.unused == ("fc.bias", "fc.weight")
    assert loaded.format == "safetensors"


@pytest.fixture(scope="module")
def resnet18_state():
    net = weight_files.random_resnet(np.random.default_rng(2), "basic", (2, 2, 2, 2))
    return weight_files.torchvision_state(net)


def test_safetensors_and_pth_files_of_the_same_arrays_load_identically(tmp_path, resnet18_state):
    resnet = build_resnet(18)
    save_file(resnet18_state, str(tmp_path / "r18.safetensors"))
    weight_files.write_torch_zip(tmp_path / "r18.pth", resnet18_state)
    # torch names the archive's folder after the file; views of one storage at offsets and
    # with transposed strides are how slices and transposes are saved.
    weight_files.write_torch_zip(
        tmp_path / "resnet18-f37072fd.pth", resnet18_state, archive="resnet18-f37072fd",
        one_storage=True,
    )
    reference = load_resnet_weights(tmp_path / "r18.safetensors", resnet).variables
    for name in ("r18.pth", "resnet18-f37072fd.pth"):
        loaded = load_resnet_weights(tmp_path / name, resnet)
        assert loaded.format == "pth"
        chex.assert_trees_all_equal(loaded.variables, reference)
    kernel = reference["params"]["stage2_block0"]["conv1"]["kernel"]
    np.testing.assert_array_equal(
        kernel, resnet18_state["layer1.0.conv1.weight"].transpose(2, 3, 1, 0)
    )


# -- MSRA / detectron2 R-50.pkl --------------------------------------------------------------------


@pytest.fixture(scope="module")
def msra_resnet50(tmp_path_factory):
    """(net, path) of a random R-50.pkl with MSRA's blob names and caffe affine BN."""
    net = weight_files.random_resnet(
        np.random.default_rng(3), "bottleneck", RESNET50_STAGES, affine_bn=True, num_classes=1000
    )
    path = tmp_path_factory.mktemp("msra") / "R-50.pkl"
    with open(path, "wb") as f:
        # Protocol 2, as Detectron's Python 2 files; NumPy's bytes then go through _codecs.encode.
        pickle.dump(weight_files.msra_blobs(net), f, protocol=2)
    return net, path


def test_msra_weights_with_the_bgr_input_folded_match_the_unfolded_network_on_bgr(msra_resnet50):
    net, path = msra_resnet50
    loaded = load_resnet_weights(path, RESNET50_MSRA)
    image = pixels(64, seed=4)
    bgr_input = image[..., ::-1] - MSRA_BGR_MEAN  # detectron2: BGR, PIXEL_MEAN, PIXEL_STD 1
    reference = weight_files.reference_features(net, bgr_input, stride_in_1x1=True)
    features = features_fn(RESNET50_MSRA)(loaded.variables, normalized(image))
    for level in ("C3", "C4", "C5"):
        # Measured: 9e-7 to 1.3e-6; RGB and BGR swapped gives 0.1-0.3.
        assert rel_error(features[level], reference[level]) < TOLERANCE, level
    assert loaded.unused == ("fc1000_b", "fc1000_w")


def test_msra_statistics_form_and_wrappers_load_like_the_affine_form(tmp_path, msra_resnet50):
    """BN as gamma/beta/running_mean/running_var (eps 1e-5) equal to the affine map (s, b), and
    a dict under "blobs" (Detectron's detection files) or "model" (detectron2's) reads the same."""
    net, path = msra_resnet50
    blobs = weight_files.msra_blobs(net)
    stats = {}
    for key, value in blobs.items():
        if key.endswith("_bn_s"):
            prefix = key[: -len("s")]
            var = np.random.default_rng(len(key)).uniform(0.5, 1.5, value.shape)
            gamma = value * np.sqrt(var + 1e-5)
            stats |= {prefix + "gamma": gamma, prefix + "running_var": var,
                      prefix + "running_mean": np.full_like(var, 0.3),
                      prefix + "beta": blobs[prefix + "b"] + 0.3 * value}
        elif not key.endswith("_bn_b"):
            stats[key] = value
    for name, obj in (("stats.pkl", stats), ("blobs.pkl", {"blobs": blobs}),
                      ("model.pkl", {"model": blobs, "__author__": "Caffe2"})):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    reference = load_resnet_weights(path, RESNET50_MSRA).variables
    for name in ("blobs.pkl", "model.pkl"):
        chex.assert_trees_all_equal(load_resnet_weights(tmp_path / name, RESNET50_MSRA).variables,
                                    reference)
    from_stats = load_resnet_weights(tmp_path / "stats.pkl", RESNET50_MSRA).variables

    def affine(norm):  # the map x -> x * multiplier + offset of a FrozenBatchNorm
        multiplier = norm["scale"] / np.sqrt(norm["var"].astype(np.float64) + 1e-5)
        return multiplier, norm["bias"] - norm["mean"] * multiplier

    for path_, norm in jax.tree_util.tree_flatten_with_path(
        reference["batch_stats"], is_leaf=lambda n: isinstance(n, dict) and "scale" in n
    )[0]:
        other = functools.reduce(lambda tree, key: tree[key.key], path_, from_stats["batch_stats"])
        for a, b in zip(affine(other), affine(norm), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# -- Keras applications ResNet50 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
    """Files and features of a Keras ResNet50 with random BN statistics, BN affine and conv
    biases (its initialization leaves BN an identity and biases 0, which would hide mistakes)."""
    keras = pytest.importorskip("keras")
    folder = tmp_path_factory.mktemp("keras")
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape)])
        elif isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape),
                               rng.normal(0, 0.2, shape), rng.uniform(0.5, 1.5, shape)])
    model.save(folder / "resnet50_model.h5")  # the legacy whole-model file: "model_weights"
    # The layout of the file keras.applications downloads (Keras 2's save_weights): layer groups
    # at the root, weight names with ":0".
    with h5py.File(folder / "resnet50_model.h5") as src, h5py.File(
        folder / "resnet50_notop.h5", "w"
    ) as dst:
        weights = src["model_weights"]
        dst.attrs["layer_names"] = weights.attrs["layer_names"]
        for layer in weights.attrs["layer_names"]:
            group = dst.create_group(layer)
            names = [n.decode() if isinstance(n, bytes) else n
                     for n in weights[layer].attrs["weight_names"]]
            group.attrs["weight_names"] = [n + ":0" for n in names]
            for n in names:
                group[n + ":0"] = weights[layer][n][()]
    names = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")
    image = pixels(64, seed=6)
    preprocess = keras.applications.resnet50.preprocess_input  # caffe: BGR, minus the mean
    full = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    # The network after its conv1_pad layer, fed an image padded with the pixel value that
    # focaljax's zero padding stands for (255 x torchvision's mean), so both see the same border.
    trunk = keras.Model(model.get_layer("conv1_conv").input, full.outputs)
    padded = np.pad(image, ((0, 0), (3, 3), (3, 3), (0, 0)))
    padded[:, :3], padded[:, -3:], padded[:, :, :3], padded[:, :, -3:] = (255.0 * RGB_MEAN,) * 4
    return {
        "image": image,
        # preprocess_input works in place on NumPy input: give it copies.
        "trunk": dict(zip(("C3", "C4", "C5"), map(np.asarray, trunk(preprocess(padded.copy()))),
                          strict=True)),
        "full": dict(zip(("C3", "C4", "C5"), map(np.asarray, full([preprocess(image.copy())])),
                         strict=True)),
        "notop": folder / "resnet50_notop.h5",
        "model": folder / "resnet50_model.h5",
    }


def test_keras_weights_give_keras_features_on_its_caffe_input(keras_resnet50):
    loaded = load_resnet_weights(keras_resnet50["notop"], RESNET50_MSRA)
    features = features_fn(RESNET50_MSRA)(loaded.variables, normalized(keras_resnet50["image"]))
    for level, reference in keras_resnet50["trunk"].items():
        # Measured: 7e-7 to 1.1e-6; dropping the conv biases instead of folding them gives 2e-2.
        assert rel_error(features[level], reference) < TOLERANCE, level
    # The whole Keras model pads the caffe-normalized image with zeros, i.e. with Keras' mean
    # pixel, 0.005-0.5 gray levels off the value focaljax's padding stands for: measured 1.0e-3
    # (C3) to 6e-4 (C5) on this 64 x 64 image, all of it from the 3-pixel border (the trunk
    # above differs from this model only in the padding value).
    for level, reference in keras_resnet50["full"].items():
        assert rel_error(features[level], reference) < 5e-3, level
    assert loaded.unused == ()
    assert any("var + 1e-08" in note for note in loaded.notes)


def test_keras_whole_model_h5_loads_like_the_weights_file(keras_resnet50):
    chex.assert_trees_all_equal(
        load_resnet_weights(keras_resnet50["model"], RESNET50_MSRA).variables,
        load_resnet_weights(keras_resnet50["notop"], RESNET50_MSRA).variables,
    )


def test_keras_file_of_the_test_helper_gives_the_numpy_features_on_keras_input(tmp_path):
    """The .h5 that ``weight_files.write_keras_h5`` writes (the benchmark's Keras file) holds
    the network it was given, in Keras' layout: loaded for Keras' own input convention (BGR
    minus its mean pixel; then the zero padding means the same to both and the fold is exact),
    it gives the NumPy network's features on that input."""
    stages = (1, 1, 1, 1)
    net = weight_files.random_resnet(np.random.default_rng(9), "bottleneck", stages)
    path = tmp_path / "keras.h5"
    weight_files.write_keras_h5(path, net)
    resnet = resnet_lib.ResNet(stage_sizes=stages, stride_in_1x1=True)
    loaded = load_resnet_weights(path, resnet, input_mean=KERAS_BGR_MEAN[::-1] / 255.0,
                                 input_std=(1 / 255.0,) * 3)
    image = pixels(32, seed=10)
    reference = weight_files.reference_features(net, image[..., ::-1] - KERAS_BGR_MEAN,
                                                stride_in_1x1=True)
    features = features_fn(resnet)(loaded.variables, (image - KERAS_BGR_MEAN[::-1]).astype(
        np.float32))
    for level in ("C2", "C3", "C4", "C5"):
        assert rel_error(features[level], reference[level]) < TOLERANCE, level
    assert loaded.format == "keras_h5"


# -- Files that do not fit the network ----------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory, resnet18_state):
    folder = tmp_path_factory.mktemp("r18")
    weight_files.write_torch_zip(folder / "r18.pth", resnet18_state)
    return {"pth": folder / "r18.pth"}


def test_a_file_without_resnet_weights_is_refused(tmp_path):
    path = tmp_path / "bert.safetensors"
    save_file({"encoder.weight": np.zeros((4, 4), np.float32)}, str(path))
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(path))}: holds no "
                                              r"torchvision-layout ResNet.*conv1\.weight.*"
                                              r"encoder\.weight"):
        load_resnet_weights(path, build_resnet(50))


def test_a_resnet18_file_for_a_resnet50_lists_every_difference(resnet18_files):
    path = resnet18_files["pth"]
    with pytest.raises(WeightFileError) as error:
        load_resnet_weights(path, build_resnet(50))
    lines = str(error.value).splitlines()
    assert lines[0] == (
        f"{path}: the file holds a resnet18 (basic blocks, stages (2, 2, 2, 2)), the network is "
        "a resnet50 (bottleneck blocks, stages (3, 4, 6, 3))"
    )
    # Every ResNet-18 name is also a ResNet-50 name, so nothing is unexpected. ResNet-50 has
    # 53 convs and 53 BNs of 4 arrays, 265 arrays; ResNet-18 has 100 of those names.
    missing, misshaped = lines[1:]
    assert missing.startswith("missing (165): layer1.0.conv3.weight, layer1.0.bn3.weight")
    assert "layer1.0.conv1.weight (64, 64, 3, 3), expected (64, 64, 1, 1)" in misshaped


def test_a_network_that_cannot_take_the_weights_is_refused(resnet18_files, msra_resnet50):
    with pytest.raises(ValueError, match=r"norm='gn', which has no place for the batch norm"):
        load_resnet_weights(resnet18_files["pth"], build_resnet(18, norm="gn"))
    with pytest.raises(ValueError, match=r"msra weights .* 1x1 .* stride_in_1x1=True"):
        load_resnet_weights(msra_resnet50[1], build_resnet(50))
    with pytest.raises(ValueError, match=r"format is 'onnx', expected one of"):
        load_resnet_weights(resnet18_files["pth"], build_resnet(18), format="onnx")


def test_weights_for_trainable_bn_put_scale_and_bias_in_params(resnet18_files):
    frozen = load_resnet_weights(resnet18_files["pth"], build_resnet(18)).variables
    trainable = load_resnet_weights(resnet18_files["pth"], build_resnet(18, norm="bn")).variables
    stem = frozen["batch_stats"]["stem_norm"]
    chex.assert_trees_all_equal(trainable["params"]["stem_norm"],
                                {"scale": stem["scale"], "bias": stem["bias"]})
    chex.assert_trees_all_equal(trainable["batch_stats"]["stem_norm"],
                                {"mean": stem["mean"], "var": stem["var"]})


# -- stride_in_1x1 and freezing -------------------------------------------------------------------

TINY = {"stage_sizes": (1, 1, 1, 1), "width": 8}


def test_freeze_mask_marks_the_stem_and_the_first_stages_wherever_the_resnet_is():
    detector = RetinaNet(num_classes=3, backbone="resnet_tiny", fpn_channels=8, head_channels=8,
                         head_convs=1)
    shapes = jax.eval_shape(lambda: detector.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                  train=False))
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    paths = ["/".join(k.key for k in path) for path, _ in leaves]
    frozen_parts = [("stem_conv", "stem_norm"), ("stage2_",), ("stage3_",), ("stage4_",),
                    ("stage5_",)]
    for freeze_at in range(6):
        prefixes = [f"backbone/resnet/{p}" for parts in frozen_parts[:freeze_at] for p in parts]
        mask = jax.tree.leaves(freeze_mask(shapes, freeze_at=freeze_at))
        expected = [any(p.split("/", 1)[1].startswith(q) for q in prefixes) for p in paths]
        assert mask == expected, freeze_at
    assert sum(jax.tree.leaves(freeze_mask(shapes, freeze_at=5))) == sum(
        "/resnet/" in p for p in paths
    )


def test_freeze_at_stops_gradients_at_the_outputs_of_the_frozen_parts():
    images = jnp.asarray(np.random.default_rng(7).normal(size=(2, 32, 32, 3)), jnp.float32)
    free = build_resnet("resnet_tiny", **TINY)
    frozen = build_resnet("resnet_tiny", freeze_at=3, **TINY)
    variables = random_variables(free, images, train=False)

    def grads(module):
        loss = lambda p: sum(
            jnp.sum(f**2) for f in module.apply({**variables, "params": p}, images,
                                                train=True).values()
        )
        return jax.jit(jax.grad(loss))(variables["params"])

    free_grads, frozen_grads = grads(free), grads(frozen)
    mask = freeze_mask(variables["params"], freeze_at=3)
    for (path, is_frozen), g, g_free in zip(
        jax.tree_util.tree_leaves_with_path(mask), jax.tree.leaves(frozen_grads),
        jax.tree.leaves(free_grads), strict=True,
    ):
        if is_frozen:
            assert not np.any(g) and np.any(g_free), path
        else:
            np.testing.assert_allclose(g, g_free, rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_freeze_at_runs_frozen_batch_norms_in_evaluation_mode():
    images = jnp.asarray(np.random.default_rng(8).normal(size=(4, 32, 32, 3)), jnp.float32)
    module = build_resnet("resnet_tiny", norm="bn", freeze_at=2, **TINY)
    variables = random_variables(module, images, train=False)
    _, updates = jax.jit(
        lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, images)
    mask = freeze_mask(variables["batch_stats"], freeze_at=2)
    for is_frozen, new, old in zip(jax.tree.leaves(mask), jax.tree.leaves(updates["batch_stats"]),
                                   jax.tree.leaves(variables["batch_stats"]), strict=True):
        assert np.array_equal(new, old) == is_frozen


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: build_resnet(50, freeze_at=6), r"freeze_at is 6, expected 0 \(nothing frozen\)"),
        (lambda: build_resnet(50, freeze_at=-1), r"freeze_at is -1"),
        (lambda: build_resnet(18, stride_in_1x1=True), r"stride_in_1x1 is True with block 'basic'"),
        (lambda: freeze_mask({}, freeze_at=7), r"freeze_at is 7"),
        (lambda: RetinaNet(num_classes=3, backbone="resnet_tiny", stride_in_1x1=True),
         r"stride_in_1x1 is True with block 'basic'"),
        (lambda: FasterRCNN(num_classes=3, backbone="resnet_tiny", freeze_at=9), r"freeze_at is 9"),
    ],
)
def test_invalid_freezing_and_stride_settings_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("module", [pretrained_lib, resnet_lib])
def test_docstring_examples_run(module):
    results = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0 and results.failed == 0
