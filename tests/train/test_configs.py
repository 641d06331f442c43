"""Every `configs/*.py`: it loads, the trainer accepts it, its data set and detector build, its
docstring says how to run it, and it declares exactly the fields of `configs/default.py`, whose
data set and models are the library's defaults (`focaljax.data.default_config`, each detector's
`default_config`). The COCO config follows the paper's 1x recipe, and the default config is that
recipe from scratch."""

from __future__ import annotations

import doctest
import functools
import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from focaljax import data as data_lib
from focaljax import detectors
from focaljax.detectors import backbone, faster_rcnn, retinanet
from focaljax.ops import anchors as anchor_ops
from train import checks, optim

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")


def load(name: str):
    return importlib.import_module(f"configs.{name}")


def test_the_configs_include_the_default_run_and_the_coco_recipe():
    assert {"shapes_retinanet", "coco_retinanet_r50"} <= set(CONFIGS)
    assert {"shapes_faster_rcnn", "coco_faster_rcnn_r50", "voc_faster_rcnn_r50"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_data_set_and_a_detector_with_one_output_per_anchor(name):
    config = load(name).get_config()
    checks.check_config(config, num_devices=1)
    # Lazy: nothing is read or prepared, so this runs without the data set on disk.
    assert isinstance(data_lib.build(config.dataset), data_lib.DetectionDataset)
    image_size = tuple(config.dataset.image_size)
    detector = detectors.build(config.model, num_classes=80, image_size=image_size)
    batch = {"image": jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)}
    variables = jax.eval_shape(detector.init, jax.random.PRNGKey(0), batch)
    outputs, _ = jax.eval_shape(functools.partial(detector.apply, train=False), variables, batch)
    model = config.model
    if model.name == "faster_rcnn":  # One anchor size per level P2-P6.
        num_anchors = sum(anchor_ops.num_anchors_per_level(
            image_size, min_level=2, max_level=1 + len(model.anchor_sizes), scales=(1.0,),
            aspect_ratios=model.aspect_ratios,
        ))
        objectness = 2 if model.rpn.loss == "focal_softmax" else 1
        assert outputs["rpn_objectness"].shape == (1, num_anchors, objectness)
        assert outputs["roi_cls_logits"].shape[-1] == 81
        return
    num_anchors = sum(anchor_ops.num_anchors_per_level(
        image_size, min_level=model.min_level, max_level=model.max_level,
        scales=model.anchor_scales, aspect_ratios=model.aspect_ratios,
    ))
    assert outputs["cls_logits"].shape == (1, num_anchors, 80)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_docstring_says_what_it_trains_how_to_run_it_and_on_what(name):
    doc = load(name).__doc__
    assert f"python -m train --config configs/{name}.py --workdir" in doc
    assert "Hardware, time and result:" in doc


def test_coco_config_is_the_papers_1x_recipe():
    config = load("coco_retinanet_r50").get_config()
    assert config.dataset.name == "coco"
    assert config.model.backbone == "resnet50"
    assert (config.model.min_level, config.model.max_level) == (3, 7)
    assert (config.model.loss.cls, config.model.loss.alpha, config.model.loss.gamma) == (
        "focal", 0.25, 2.0
    )
    assert (config.model.fg_iou_threshold, config.model.bg_iou_threshold) == (0.5, 0.4)
    # 9 anchors per location, sizes 32 (P3) to 512 (P7), and an L1 box loss of weight 1.
    assert config.model.anchor_base_scale == 4.0
    np.testing.assert_allclose(config.model.anchor_scales, [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    assert tuple(config.model.aspect_ratios) == (0.5, 1.0, 2.0)
    assert (config.model.loss.box, config.model.loss.box_beta, config.model.loss.box_weight) == (
        "l1", 0.0, 1.0
    )
    assert min(config.dataset.image_size) == 800
    assert config.batch_size == 16 and config.optimizer.momentum == 0.9
    num_steps, decay_steps = optim.resolve_steps(config, num_train_examples=117_266)
    assert (num_steps, decay_steps) == (90_000, (60_000, 80_000))
    learning_rate = optim.create_learning_rate_fn(config, num_steps, decay_steps)
    np.testing.assert_allclose(
        [learning_rate(s) for s in (0, 1000, 59_999, 60_000, 80_000)],
        [1e-5, 0.01, 0.01, 0.001, 0.0001], rtol=1e-5,
    )


def test_coco_faster_rcnn_config_is_detectron2s_1x_recipe_with_the_fl_rpn_of_the_seed():
    config = load("coco_faster_rcnn_r50").get_config()
    model = config.model
    assert (model.name, model.backbone, model.fpn_channels) == ("faster_rcnn", "resnet50", 256)
    assert tuple(model.anchor_sizes) == (32, 64, 128, 256, 512)
    assert tuple(model.aspect_ratios) == (0.5, 1.0, 2.0)
    rpn, roi = model.rpn, model.roi
    assert (rpn.loss, rpn.focal_lambda, rpn.alpha, rpn.gamma) == ("focal_softmax", 0.1, 0.25, 2.0)
    assert (rpn.fg_iou_threshold, rpn.bg_iou_threshold) == (0.7, 0.3)
    assert (rpn.batch_size_per_image, rpn.positive_fraction) == (256, 0.5)
    assert (rpn.train_pre_nms_topk, rpn.train_post_nms_topk) == (2000, 1000)
    assert (rpn.test_pre_nms_topk, rpn.test_post_nms_topk, rpn.nms_iou_threshold) == (
        1000, 1000, 0.7
    )
    assert (roi.num_samples, roi.positive_fraction, roi.fg_iou_threshold) == (512, 0.25, 0.5)
    assert tuple(roi.box_coder_weights) == (10, 10, 5, 5)
    assert (roi.output_size, roi.head_num_fcs, roi.head_fc_dim) == (7, 2, 1024)
    assert config.optimizer.learning_rate == 0.02 and config.batch_size == 16


# The configs whose argument is an ImageNet weight file: `--config configs/NAME.py:PATH`.
WEIGHT_FILE_RECIPES = ("coco_retinanet_r50", "coco_faster_rcnn_r50", "voc_retinanet_r50",
                       "voc_faster_rcnn_r50", "coco_folder_retinanet")


def field_names(config, prefix=""):
    names = set()
    for key, value in config.items():
        names.add(prefix + key)
        if hasattr(value, "items"):
            names |= field_names(value, f"{prefix}{key}.")
    return names


@pytest.mark.parametrize("name", WEIGHT_FILE_RECIPES)
def test_a_weight_file_argument_gives_the_papers_backbone_and_none_the_scratch_one(name):
    scratch = load(name).get_config()
    pretrained = load(name).get_config("/data/R-50.pkl")
    # The same fields either way, so that every command-line override applies to both.
    assert field_names(pretrained) == field_names(scratch)
    model, scratch_model = pretrained.model, scratch.model
    assert (model.backbone, model.backbone_weights, model.backbone_weights_format) == (
        "resnet50", "/data/R-50.pkl", ""
    )
    # detectron2's ImageNet recipe: frozen BN, FREEZE_AT 2, the MSRA layout of R-50.pkl.
    assert (model.norm, model.freeze_at, model.stride_in_1x1) == ("frozen_bn", 2, True)
    assert (scratch_model.backbone_weights, scratch_model.norm, scratch_model.freeze_at,
            scratch_model.stride_in_1x1) == ("", "gn", 0, False)
    if model.name == "retinanet":  # The paper's heads have no norm; from scratch they have GN.
        assert (model.head_norm, scratch_model.head_norm) == ("none", "gn")
    # Nothing else changes: SGD at 0.01 (RetinaNet) or 0.02 (Faster R-CNN) per 16 images.
    for section in ("optimizer", "schedule", "dataset"):
        assert pretrained[section].to_dict() == scratch[section].to_dict(), section
    assert pretrained.optimizer.name == "sgd" and pretrained.optimizer.reference_batch_size == 16
    checks.check_config(pretrained, num_devices=1)
    detectors.build(pretrained.model, num_classes=80,
                    image_size=tuple(pretrained.dataset.image_size))
    assert f"python -m train --config configs/{name}.py:/data/R-50.pkl" in load(name).__doc__


# Fields whose keys are the data set's builder arguments or XLA's option names, not config fields:
# they differ from config to config.
OPEN_FIELDS = ("dataset.builder_kwargs", "compiler_options")
# Each detector's fields, declared in the library next to the builder that reads them.
MODELS = {"retinanet": retinanet.default_config, "faster_rcnn": faster_rcnn.default_config}


def declared_fields(config, prefix=""):
    names = set()
    for key, value in config.items():
        name = prefix + key
        names.add(name)
        if hasattr(value, "items") and name not in OPEN_FIELDS:
            names |= declared_fields(value, f"{name}.")
    return names


@pytest.mark.parametrize("name", CONFIGS)
def test_config_declares_exactly_the_fields_of_the_default_config(name):
    expected = {f for f in declared_fields(default.get_config()) if not f.startswith("model.")}
    configs = [load(name).get_config()]
    if name in WEIGHT_FILE_RECIPES:
        configs.append(load(name).get_config("/data/R-50.pkl"))
    for config in configs:
        fields = {f for f in declared_fields(config) if not f.startswith("model.")}
        assert fields == expected
        # The model's fields are those of its detector's `default_config()`.
        assert declared_fields(config.model) == declared_fields(MODELS[config.model.name]())


def test_the_library_declares_every_field_that_the_data_pipeline_reads():
    assert set(data_lib.default_config()) == set(data_lib.FIELDS)
    data_lib.build(data_lib.default_config())  # Complete: no field missing.


def test_the_default_config_is_the_librarys_defaults_from_scratch():
    # configs/default.py composes the library's declarations and changes none of their values:
    # the data set, and the models without a weight file.
    config = default.get_config()
    assert config.dataset.to_dict() == data_lib.default_config().to_dict()
    assert config.model.to_dict() == retinanet.default_config().to_dict()
    assert default.faster_rcnn_model().to_dict() == faster_rcnn.default_config().to_dict()
    # A weight file changes the backbone's fields only (and RetinaNet's heads' norm).
    changed = {"backbone_weights", "norm", "freeze_at", "stride_in_1x1"}
    for model, library in ((default.retinanet_model("/data/R-50.pkl"), retinanet.default_config()),
                           (default.faster_rcnn_model("/data/R-50.pkl"),
                            faster_rcnn.default_config())):
        differ = {k for k, v in model.to_dict().items() if library.to_dict()[k] != v}
        expected = changed | ({"head_norm"} if model.name == "retinanet" else set())
        assert differ == expected, model.name
        assert set(backbone.default_config()) <= set(model)


@pytest.mark.parametrize(
    "function", [data_lib.default_config, retinanet.default_config, faster_rcnn.default_config,
                 backbone.default_config],
    ids=lambda f: f.__module__,
)
def test_library_default_config_example_runs(function):
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    module = importlib.import_module(function.__module__)
    tests = doctest.DocTestFinder(recurse=False).find(
        function, function.__qualname__, module=module, globs=dict(vars(module))
    )
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0, "".join(report)


def test_the_default_config_is_the_coco_retinanet_recipe_from_scratch():
    coco = load("coco_retinanet_r50")
    assert coco.get_config().to_dict() == default.get_config().to_dict()
    faster_rcnn = load("coco_faster_rcnn_r50")
    for weights in ("", "/data/R-50.pkl"):
        model = default.retinanet_model(weights).to_dict()
        assert coco.get_config(weights).model.to_dict() == model
        model = default.faster_rcnn_model(weights).to_dict()
        assert faster_rcnn.get_config(weights).model.to_dict() == model
