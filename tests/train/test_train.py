"""The trainer's parts: config checks, XLA compiler options, learning rate, weight decay and
gradient clipping."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from configs import shapes_retinanet
from focaljax import detectors
from focaljax.detectors import backbone
from tests.train.conftest import tiny_config
from train import checks, compilation, optim, train

IMAGE_SIZE = (64, 64)


# ----------------------------------------------------------------------------------------------
# Config checks.


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 6, r"config.batch_size is 6, expected a positive multiple of the 4 local "
                          r"devices"),
        ("eval_batch_size", 0, r"config.eval_batch_size is 0, expected a positive multiple"),
        ("optimizer.name", "rmsprop", r"config.optimizer.name is 'rmsprop', expected one of "
                                      r"\('sgd', 'adamw'\)"),
        ("schedule.name", "linear", r"config.schedule.name is 'linear', expected one of"),
        ("schedule.warmup_factor", 0.0, r"warmup_factor is 0.0, expected a value in \(0, 1\]"),
        ("checkpoint_every_steps", -1, r"config.checkpoint_every_steps is -1, expected >= 0"),
        ("checkpoint_every_minutes", -1.0, r"config.checkpoint_every_minutes is -1.0, expected "
                                           r">= 0 \(0 turns it off\)"),
        ("dataset.image_size", (64,), r"config.dataset.image_size is \(64,\), expected \(height"),
        ("voc_metric", "voc12", r"config.voc_metric is 'voc12', expected '' \(off\) or one of "
                                r"\('voc07', 'voc'\)"),
        ("evaluators", ("coco", "map"), r"config.evaluators names \['map'\], expected names "
                                        r"from \('coco', 'voc07', 'voc'\)"),
        ("evaluators", ("coco", "coco"), r"config.evaluators names \['coco'\] more than once"),
        ("compiler_options.xla_cpu_max_isa", (1, 2), r"config.compiler_options is \{.*\}, "
                                                     r"expected a mapping from XLA option names"),
        ("model.freeze_at", 6, r"config.model.freeze_at is 6, expected 0 \(nothing frozen\), 1 "
                               r"\(the stem\) ... 5"),
        ("model.backbone_weights_format", "onnx", r"config.model.backbone_weights_format is "
                                                  r"'onnx', expected '' \(detected from the "
                                                  r"file\) or one of \('safetensors', 'pth'"),
        # The detector's own check, before the data set is prepared or anything built.
        ("model.loss.gamma", -1.0, r"model.loss.gamma is -1.0, expected a number in \[0, inf\)"),
        ("model.loss.cls", "hinge", r"model.loss.cls is 'hinge', expected one of"),
    ],
)
def test_check_config_names_the_bad_field_and_what_was_expected(field, value, message):
    config = tiny_config("")
    *parents, name = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[name] = value
    with pytest.raises(ValueError, match=message):
        checks.check_config(config, num_devices=4)


def test_check_config_rejects_decay_points_in_both_steps_and_epochs():
    config = tiny_config("")
    config.schedule.decay_steps = (10,)
    config.schedule.decay_epochs = (1.0,)
    with pytest.raises(ValueError, match="decay_steps and decay_epochs are both set"):
        checks.check_config(config, num_devices=4)


def test_check_config_names_every_field_of_the_default_config_that_is_missing():
    config = tiny_config("")
    del config["voc_metric"]
    del config.optimizer["b1"]
    del config.dataset["shuffle_buffer_size"]
    with pytest.raises(ValueError, match=r"the config lacks \['dataset.shuffle_buffer_size', "
                                         r"'optimizer.b1', 'voc_metric'\]; configs/default.py"):
        checks.check_config(config, num_devices=4)


def test_unknown_model_is_rejected_before_anything_is_compiled(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir)
    config.model.name = "yolo"
    with pytest.raises(
        ValueError, match=r"unknown model 'yolo', expected one of \['faster_rcnn', 'retinanet'\]"
    ):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# XLA compiler options.


def _conv_kernel_gradient(images, kernel):
    """A pmapped step's kind of work: the gradient of a convolution's output sum in its kernel."""
    def total(kernel):
        return jax.lax.conv_general_dilated(
            images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ).sum()

    return jax.grad(total)(kernel)


def _conv_inputs():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(jax.local_device_count(), 2, 8, 8, 4)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    # The same gradient in float64 NumPy: each kernel tap sums the inputs it meets, zero padded.
    padded = np.pad(images.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    taps = np.stack([
        np.stack([padded[:, :, dy:dy + 8, dx:dx + 8].sum(axis=(1, 2, 3)) for dx in range(3)], 1)
        for dy in range(3)
    ], 1)  # [devices, 3, 3, in]
    expected = np.broadcast_to(taps[..., None], taps.shape + (5,))
    return images, kernel, expected


def test_no_compiler_options_leave_the_function_as_it_is():
    pmapped = jax.pmap(_conv_kernel_gradient, in_axes=(0, None))
    assert compilation.with_compiler_options(pmapped, {}) is pmapped


def test_compiler_options_compile_the_step_once_and_leave_its_results_unchanged():
    images, kernel, expected = _conv_inputs()
    pmapped = jax.pmap(_conv_kernel_gradient, in_axes=(0, None))
    step = compilation.with_compiler_options(pmapped, {"xla_cpu_experimental_ynn_fusion_type": ""})
    for _ in range(2):
        np.testing.assert_allclose(np.asarray(step(images, kernel)), expected, rtol=1e-5, atol=1e-4)
    # Compiled once, for the first call's shapes: a second shape is not the same program.
    with pytest.raises((TypeError, ValueError)):
        step(images[:, :1], kernel)


def test_this_xla_accepts_the_compiler_options_of_the_default_config():
    # Otherwise `make train` would warn and run without them (slower on a CPU): update the config.
    options = compilation.compiler_options(shapes_retinanet.get_config())
    assert options
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=options)


def test_an_option_this_xla_does_not_know_is_reported_and_the_step_still_runs(capsys):
    images, kernel, expected = _conv_inputs()
    pmapped = jax.pmap(_conv_kernel_gradient, in_axes=(0, None))
    step = compilation.with_compiler_options(pmapped, {"xla_no_such_option": "1"})
    np.testing.assert_allclose(np.asarray(step(images, kernel)), expected, rtol=1e-5, atol=1e-4)
    output = capsys.readouterr().out
    assert "rejects config.compiler_options {'xla_no_such_option': '1'}" in output
    assert "compiling without them" in output


# ----------------------------------------------------------------------------------------------
# Learning rate and optimizer.


def test_learning_rate_warms_up_linearly_then_steps_down():
    config = tiny_config("")
    config.schedule.name = "step"
    config.optimizer.learning_rate = 0.01
    config.optimizer.reference_batch_size = 16
    config.batch_size = 32  # Linear scaling: base 0.02.
    config.schedule.warmup_steps = 100
    config.schedule.warmup_factor = 0.001
    learning_rate = optim.create_learning_rate_fn(config, 1000, (600, 800))
    expected = {0: 0.02 * 0.001, 50: 0.02 * (0.001 * 0.5 + 0.5), 100: 0.02, 599: 0.02,
                600: 0.002, 799: 0.002, 800: 0.0002, 999: 0.0002}
    for step, value in expected.items():
        np.testing.assert_allclose(learning_rate(step), value, rtol=1e-5, err_msg=f"step {step}")


def test_cosine_schedule_falls_to_zero_at_the_last_step():
    config = tiny_config("")
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 0
    config.optimizer.reference_batch_size = config.batch_size
    learning_rate = optim.create_learning_rate_fn(config, 1000, ())
    base = config.optimizer.learning_rate
    np.testing.assert_allclose([learning_rate(0), learning_rate(500), learning_rate(1000)],
                               [base, base / 2, 0.0], atol=1e-9)


def test_steps_and_decay_points_can_be_given_in_epochs():
    config = tiny_config("")
    config.num_train_steps = 0
    config.num_epochs = 12.0
    config.schedule.decay_epochs = (8, 11)
    config.batch_size = 16
    assert optim.resolve_steps(config, num_train_examples=160) == (120, (80, 110))
    config.schedule.decay_epochs = (13,)
    with pytest.raises(ValueError, match=r"decay steps \(130,\) must increase and lie in"):
        optim.resolve_steps(config, num_train_examples=160)


def test_decay_mask_selects_the_kernels_of_the_detector_and_no_bias_or_norm_parameter():
    config = tiny_config("")
    detector = detectors.build(config.model, num_classes=4, image_size=IMAGE_SIZE,
                               axis_name=train.AXIS_NAME)
    batch = {"image": jax.ShapeDtypeStruct((1, *IMAGE_SIZE, 3), np.float32)}
    params = jax.eval_shape(detector.init, jax.random.PRNGKey(0), batch)["params"]
    mask = jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]
    names = {jax.tree_util.keystr(path)[2:-2].split("']['")[-1] for path, _ in mask}
    assert names == {"kernel", "bias", "scale"}
    for path, decayed in mask:
        assert decayed == path[-1].key.endswith("kernel"), jax.tree_util.keystr(path)


def _toy_params():
    return {"conv": {"kernel": np.ones((3, 3, 2, 2), np.float32), "bias": np.ones(2, np.float32)},
            "norm": {"scale": np.ones(2, np.float32), "bias": np.ones(2, np.float32)}}


def test_sgd_weight_decay_moves_kernels_only():
    config = tiny_config("")
    config.optimizer.weight_decay = 0.1
    config.optimizer.learning_rate = 1.0
    config.optimizer.reference_batch_size = config.batch_size
    config.schedule.warmup_steps = 0
    tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 100, ()),
                                frozen=backbone.frozen_parts(config.model.freeze_at))
    params = _toy_params()
    zero_grads = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.1)  # -lr * wd * w.
    for bias_or_scale in (updates["conv"]["bias"], updates["norm"]["scale"],
                          updates["norm"]["bias"]):
        np.testing.assert_array_equal(bias_or_scale, 0.0)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_gradient_clipping_bounds_the_global_gradient_norm(optimizer):
    config = tiny_config("")
    config.optimizer.name = optimizer
    config.optimizer.grad_clip_norm = 1.0
    config.optimizer.weight_decay = 0.0
    config.optimizer.momentum = 0.0
    config.optimizer.learning_rate = 1.0
    config.optimizer.reference_batch_size = config.batch_size
    config.schedule.warmup_steps = 0
    tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 100, ()),
                                frozen=backbone.frozen_parts(config.model.freeze_at))
    params = _toy_params()
    grads = jax.tree.map(lambda p: np.full_like(p, 100.0), params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    if optimizer == "sgd":  # The update is -lr * the clipped gradient.
        np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-5)
    else:  # Adam's first moment after one step is (1 - b1) * the clipped gradient.
        mu = optax.tree_utils.tree_get(state, "mu")
        np.testing.assert_allclose(optax.tree.norm(mu), 1 - config.optimizer.b1, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_parameters_get_no_update_not_even_weight_decay(optimizer):
    config = tiny_config("")
    config.model.freeze_at = 2  # The stem and C2.
    config.optimizer.name = optimizer
    config.optimizer.weight_decay = 0.1
    config.optimizer.learning_rate = 1.0
    config.optimizer.reference_batch_size = config.batch_size
    config.schedule.warmup_steps = 0
    tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 100, ()),
                                frozen=backbone.frozen_parts(config.model.freeze_at))
    kernel = np.ones((3, 3, 2, 2), np.float32)
    resnet = {name: {"conv1": {"kernel": kernel}, "norm1": {"scale": np.ones(2, np.float32)}}
              for name in ("stage2_block0", "stage3_block0")}
    resnet["stem_conv"] = {"kernel": kernel}
    params = {"backbone": {"resnet": resnet, "fpn": {"kernel": kernel}}}
    # A zero gradient, as the frozen parts get: only weight decay could move anything.
    zero_grads = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
    resnet_updates = updates["backbone"]["resnet"]
    for leaf in jax.tree.leaves((resnet_updates["stem_conv"], resnet_updates["stage2_block0"])):
        np.testing.assert_array_equal(leaf, 0.0)
    # SGD's coupled and AdamW's decoupled decay both give -lr * wd * w from a zero gradient.
    np.testing.assert_allclose(resnet_updates["stage3_block0"]["conv1"]["kernel"], -0.1,
                               rtol=1e-6)
    np.testing.assert_allclose(updates["backbone"]["fpn"]["kernel"], -0.1, rtol=1e-6)
    np.testing.assert_array_equal(resnet_updates["stage3_block0"]["norm1"]["scale"], 0.0)
