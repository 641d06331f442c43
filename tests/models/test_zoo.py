"""Model-zoo detectors loaded into focaljax give the reference implementation's outputs.

The references are torchvision 0.14.1's own models (tests/fixtures/zoo, made by
``make_fixtures.py`` with torch; see its docstring to remake them): random weights drawn from a
seed in each model's key layout, their raw head outputs and final detections on two 128 x 160
images. Here the same weights are drawn again, written as the zoo files users have (torchvision's
``.pth`` and ``.safetensors``; detectron2's ``.pkl``, renamed into detectron2's layout by
``tests/models/zoo_files.py``, since detectron2 cannot run here), loaded through
``Detector.load_pretrained`` and run. Measured on CPU: raw outputs within 3e-6 of their largest
magnitude (RetinaNet logits 2.9e-5 of 9.3, Faster R-CNN RoI logits 2.4e-5 of 5.9), detections the
same, in the same order, scores within 4e-6 and boxes within 7e-5 pixels. The v2 models (XLA's
default optimisation): RetinaNet logits within 2.8e-5 of 9.9, box deltas 2.5e-6 of 0.72; Faster
R-CNN objectness 1.8e-5 of 10.9, the 839 and 830 proposals the same (1.2e-4 pixels; 4 in a
neighbour's place), RoI logits 4.0e-5 of 7.4; all detections the same, in the same
order, scores within 7e-6 and boxes within 2.9e-4 pixels.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.detectors import build, faster_rcnn, retinanet, zoo
from focaljax.errors import ConfigError
from focaljax.models import zoo as zoo_models
from tests.models import zoo_files

IMAGE_SIZE = (128, 160)


def _detector(name, preset, path, *, num_classes, classes="file", **fields):
    config = {"retinanet": retinanet, "faster_rcnn": faster_rcnn}[name].default_config()
    zoo.apply_preset(config, preset)
    config.zoo_weights = str(path)
    config.zoo_classes = classes
    for field, value in fields.items():
        *parents, leaf = field.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return build(config, num_classes=num_classes, image_size=IMAGE_SIZE)


def _initial(detector, fill=0.0):
    shapes = jax.eval_shape(lambda: detector.module.init(
        jax.random.key(0), jnp.zeros((1, *IMAGE_SIZE, 3)), train=False))
    return jax.tree.map(lambda s: np.full(s.shape, fill, s.dtype), shapes)


def _runner(detector):
    @jax.jit
    def run(variables, images):
        outputs = detector.module.apply(variables, images, train=False)
        return outputs, detector.postprocess(outputs, None)

    return run


def _assert_close(actual, expected, what):
    """Equal to float32 rounding: within 1e-5 of the largest magnitude."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale, err_msg=what)


def _same_rows_nearly_in_order(actual, expected):
    """The index of the row of `actual` equal to each row of `expected` to float32 rounding (as
    `_assert_close`), one to one; rows may trade places only with near neighbours, as proposals
    whose scores tie to rounding do (seen: two adjacent proposals swapped when XLA compiled at
    another optimisation level)."""
    scale = max(1.0, float(np.abs(expected).max()))
    free = np.ones(len(actual), bool)
    order = []
    for k, row in enumerate(expected):
        close = free & (np.abs(actual - row).max(axis=1) <= 1e-5 * scale)
        assert close.any(), f"row {k} {row} has no equal in focaljax's"
        order.append(int(np.argmax(close)))
        free[order[-1]] = False
    order = np.asarray(order)
    assert np.abs(order - np.arange(len(order))).max() <= 2, order
    return order


def _assert_same_detections(detections, fixture, label_offset):
    """Each image's detections are the reference's: the same count and, for each reference
    detection, one of focaljax's with its label, score and box (the order may differ only
    between scores equal to rounding)."""
    for i in range(len(fixture["det_num"])):
        num = int(detections["num_valid"][i])
        assert num == fixture["det_num"][i]
        boxes = np.asarray(detections["boxes"][i][:num])
        scores = np.asarray(detections["scores"][i][:num])
        labels = np.asarray(detections["classes"][i][:num]) + label_offset
        free = np.ones(num, bool)
        for box, score, label in zip(fixture["det_boxes"][i][:num], fixture["det_scores"][i][:num],
                                     fixture["det_labels"][i][:num], strict=True):
            match = (free & (labels == label) & (np.abs(scores - score) < 1e-4)
                     & (np.abs(boxes - box).max(axis=1) < 1e-2))
            assert match.any(), f"image {i}: no detection {label} {score} {box}"
            free[np.argmax(match)] = False


def _ratio_major(values, num_images):
    """focaljax's RetinaNet outputs (scale-major anchors) in torchvision's anchor order."""
    values = np.asarray(values)
    grouped = values.reshape(num_images, -1, 3, 3, values.shape[-1]).swapaxes(2, 3)
    return grouped.reshape(values.shape)


def _case(tmp_path_factory, model, name, preset, write, suffix, **fields):
    """A torchvision fixture's model: its weights drawn again, written as a zoo file and loaded
    into the detector of `preset`, with a jitted runner."""
    fixture = zoo_files.load_fixture(model)
    state = zoo_files.fixture_state(fixture)
    folder = tmp_path_factory.mktemp(f"zoo_{model}")
    path = write(folder / f"{model}{suffix}", state)
    num_classes = 91 if name == "retinanet" else 90
    detector = _detector(name, preset, path, num_classes=num_classes, **fields)
    variables, record = detector.load_pretrained(_initial(detector))
    return {"fixture": fixture, "state": state, "folder": folder, "detector": detector,
            "variables": variables, "record": record, "run": _runner(detector),
            "images": zoo_files.normalized(fixture["images"])}


@pytest.fixture(scope="module")
def retinanet_case(tmp_path_factory):
    return _case(tmp_path_factory, "retinanet_resnet50_fpn", "retinanet", "torchvision_retinanet",
                 zoo_files.write_safetensors, ".safetensors", postprocess__max_detections=300)


@pytest.fixture(scope="module")
def faster_rcnn_case(tmp_path_factory):
    return _case(tmp_path_factory, "fasterrcnn_resnet50_fpn", "faster_rcnn",
                 "torchvision_faster_rcnn", zoo_files.write_pth, ".pth")


@pytest.fixture(scope="module")
def retinanet_v2_case(tmp_path_factory):
    return _case(tmp_path_factory, "retinanet_resnet50_fpn_v2", "retinanet",
                 "torchvision_retinanet_v2", zoo_files.write_pth, ".pth",
                 postprocess__max_detections=300)


@pytest.fixture(scope="module")
def faster_rcnn_v2_case(tmp_path_factory):
    return _case(tmp_path_factory, "fasterrcnn_resnet50_fpn_v2", "faster_rcnn",
                 "torchvision_faster_rcnn_v2", zoo_files.write_safetensors, ".safetensors")


def _check_retinanet(case, variables):
    fixture = case["fixture"]
    outputs, detections = case["run"](variables, case["images"])
    logits = _ratio_major(outputs["cls_logits"], 2)[..., fixture["class_columns"]]
    _assert_close(logits, fixture["cls_logits"], "cls_logits")
    _assert_close(_ratio_major(outputs["box_deltas"], 2), fixture["box_deltas"], "box_deltas")
    _assert_same_detections(detections, fixture, label_offset=0)


def _check_faster_rcnn(case, variables):
    fixture = case["fixture"]
    outputs, detections = case["run"](variables, case["images"])
    _assert_close(outputs["rpn_objectness"][..., 0], fixture["rpn_objectness"], "objectness")
    _assert_close(outputs["rpn_deltas"], fixture["rpn_deltas"], "rpn_deltas")
    # torchvision's class c is focaljax's c - 1; its background (0) is focaljax's last.
    columns = fixture["class_columns"]
    logit_columns = [90 if c == 0 else c - 1 for c in columns]
    for i, count in enumerate(fixture["num_proposals"]):
        assert int(outputs["proposals"]["valid"][i].sum()) == count
        order = _same_rows_nearly_in_order(np.asarray(outputs["proposals"]["boxes"][i][:count]),
                                           fixture["proposals"][i][:count])
        _assert_close(np.asarray(outputs["roi_cls_logits"][i])[order][:, logit_columns],
                      fixture["roi_cls_logits"][i][:count], "roi_cls_logits")
        _assert_close(np.asarray(outputs["roi_box_deltas"][i])[order][:, columns[1:] - 1],
                      fixture["roi_box_deltas"][i][:count, 1:], "roi_box_deltas")
    _assert_same_detections(detections, fixture, label_offset=1)


def test_torchvision_retinanet_safetensors_gives_torchvisions_outputs(retinanet_case):
    assert "a torchvision retinanet" in retinanet_case["record"]["summary"]
    _check_retinanet(retinanet_case, retinanet_case["variables"])


def test_torchvision_faster_rcnn_pth_gives_torchvisions_outputs(faster_rcnn_case):
    assert "a torchvision faster_rcnn" in faster_rcnn_case["record"]["summary"]
    _check_faster_rcnn(faster_rcnn_case, faster_rcnn_case["variables"])


def test_torchvision_retinanet_v2_pth_gives_torchvisions_outputs(retinanet_v2_case):
    """GroupNorm heads over convs without bias, P6 from C5, a BatchNorm2d ResNet."""
    summary = retinanet_v2_case["record"]["summary"]
    assert "a torchvision retinanet (retinanet_resnet50_fpn_v2)" in summary
    _check_retinanet(retinanet_v2_case, retinanet_v2_case["variables"])


def test_torchvision_faster_rcnn_v2_safetensors_gives_torchvisions_outputs(faster_rcnn_v2_case):
    """Batch norm in the FPN and the 4conv1fc box head, a 2-conv RPN head."""
    summary = faster_rcnn_v2_case["record"]["summary"]
    assert "a torchvision faster_rcnn (fasterrcnn_resnet50_fpn_v2)" in summary
    stats = faster_rcnn_v2_case["variables"]["batch_stats"]
    assert sorted(stats["box_head"]) == ["norm0", "norm1", "norm2", "norm3"]
    assert "lateral2_norm" in stats["backbone"]["fpn"]
    _check_faster_rcnn(faster_rcnn_v2_case, faster_rcnn_v2_case["variables"])


def _same_variables(actual, expected):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual),
                            jax.tree.leaves(expected), strict=True):
        _assert_close(np.asarray(a), np.asarray(b), jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", ["retinanet", "faster_rcnn"])
def test_detectron2_layout_gives_the_same_network(name, retinanet_case, faster_rcnn_case):
    """detectron2's names, BGR stem, background-last classifier and scale-major anchors: the
    torchvision weights renamed into them load into the same variables, and so give
    torchvision's outputs."""
    case = retinanet_case if name == "retinanet" else faster_rcnn_case
    path = zoo_files.write_detectron2_pkl(
        case["folder"] / "model_final.pkl", zoo_files.to_detectron2(case["state"], name))
    weights = zoo_models.load_zoo_weights(
        path, case["detector"].module, _initial(case["detector"]),
        anchor_shape=(3, 3) if name == "retinanet" else (1, 1))
    assert weights.family == "detectron2" and weights.architecture == name
    _same_variables(weights.variables, case["variables"])
    if name == "retinanet":
        _check_retinanet(case, weights.variables)
    else:
        _check_faster_rcnn(case, weights.variables)


def test_torchvision_files_of_before_0_13_load_the_same(faster_rcnn_case, retinanet_case):
    """Older torchvision files name the FPN's, the RPN's and the RetinaNet heads' convolutions
    without the Conv2dNormActivation level (the published COCO files do)."""
    for case in (faster_rcnn_case, retinanet_case):
        old = {}
        for key, value in case["state"].items():
            key = re.sub(r"(fpn\.(inner|layer)_blocks\.\d+)\.0\.", r"\1.", key)
            key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
            match = re.fullmatch(r"(head\.\w+_head\.conv)\.(\d+)\.0\.(\w+)", key)
            if match:
                key = f"{match[1]}.{2 * int(match[2])}.{match[3]}"
            old[key] = value
        assert old.keys() != case["state"].keys()
        path = zoo_files.write_pth(case["folder"] / "old_names.pth", old)
        module = case["detector"].module
        weights = zoo_models.load_zoo_weights(
            path, module, _initial(case["detector"]),
            anchor_shape=(3, 3) if "cls_subnet" in case["variables"]["params"] else (1, 1))
        _same_variables(weights.variables, case["variables"])


def test_coco_classes_take_the_files_rows_and_new_ones_keep_their_start(retinanet_case,
                                                                       faster_rcnn_case):
    """zoo_classes as COCO names: person (id 1), a new class, toothbrush (id 90)."""
    classes = "person,tree,toothbrush"
    cases = (("retinanet", "torchvision_retinanet", retinanet_case),
             ("faster_rcnn", "torchvision_faster_rcnn", faster_rcnn_case))
    for name, preset, case in cases:
        detector = _detector(name, preset, case["record"]["path"], num_classes=3,
                             classes=classes)
        variables, _ = detector.load_pretrained(_initial(detector, fill=7.0))
        params, full = variables["params"], case["variables"]["params"]
        if name == "retinanet":
            kernel = np.asarray(params["cls_subnet"]["output"]["kernel"]).reshape(3, 3, 256, 9, 3)
            file = np.asarray(full["cls_subnet"]["output"]["kernel"]).reshape(3, 3, 256, 9, 91)
            np.testing.assert_array_equal(kernel[..., [0, 2]], file[..., [1, 90]])
            assert (kernel[..., 1] == 7.0).all()
        else:
            kernel = np.asarray(params["box_head"]["cls_score"]["kernel"])
            file = np.asarray(full["box_head"]["cls_score"]["kernel"])
            np.testing.assert_array_equal(kernel[:, [0, 2, 3]], file[:, [0, 89, 90]])
            assert (kernel[:, 1] == 7.0).all()
            deltas = np.asarray(params["box_head"]["bbox_pred"]["kernel"]).reshape(1024, 3, 4)
            file = np.asarray(full["box_head"]["bbox_pred"]["kernel"]).reshape(1024, 90, 4)
            np.testing.assert_array_equal(deltas[:, [0, 2]], file[:, [0, 89]])
            assert (deltas[:, 1] == 7.0).all()
        np.testing.assert_array_equal(params["backbone"]["fpn"]["output5"]["kernel"],
                                      full["backbone"]["fpn"]["output5"]["kernel"])


def test_a_file_that_does_not_fit_the_config_is_refused_in_one_line(retinanet_case,
                                                                    faster_rcnn_case):
    retinanet_file = retinanet_case["record"]["path"]
    faster_rcnn_file = faster_rcnn_case["record"]["path"]
    # The other architecture.
    detector = _detector("retinanet", "torchvision_retinanet", faster_rcnn_file, num_classes=91)
    with pytest.raises(ConfigError, match=r"config.model.zoo_weights: .*fasterrcnn.*a torchvision "
                       r"faster_rcnn file, but the config builds a retinanet") as error:
        detector.load_pretrained(_initial(detector))
    assert "\n" not in str(error.value)
    # detectron2's P6 (from C5) for torchvision's (from P5), and heads with GroupNorm.
    detector = _detector("retinanet", "torchvision_retinanet", retinanet_file, num_classes=91,
                         p6_input="c5", head_norm="gn")
    with pytest.raises(ConfigError) as error:
        detector.load_pretrained(_initial(detector))
    message = str(error.value)
    assert "\n" not in message and retinanet_file in message
    assert "backbone.fpn.extra_blocks.p6.weight gives params/backbone/fpn/extra6/kernel " \
           "(3, 3, 256, 256), the detector's is (3, 3, 2048, 256)" in message
    assert "not in the file (16): params/box_subnet/norm0/bias" in message
    # Another number of classes than the file's own.
    detector = _detector("retinanet", "torchvision_retinanet", retinanet_file, num_classes=80)
    with pytest.raises(ConfigError, match="head.classification_head.cls_logits.bias gives "
                       r"params/cls_subnet/output/bias \(819,\), the detector's is \(720,\)"):
        detector.load_pretrained(_initial(detector))
    # The other stride layout is not detectable: a torchvision ResNet must be built as one.
    detector = _detector("faster_rcnn", "torchvision_faster_rcnn", faster_rcnn_file,
                         num_classes=90, stride_in_1x1=True)
    with pytest.raises(ConfigError, match="stride_in_1x1=False"):
        detector.load_pretrained(_initial(detector))


# (architecture, file's model, preset of the config, a part of what differs), each v2 file for
# its v1 config and each v1 file for its v2 config.
_V1_V2_MISMATCHES = [
    ("retinanet", "retinanet_resnet50_fpn_v2", "torchvision_retinanet",
     "missing (8): head.classification_head.conv.0.0.bias"),
    ("retinanet", "retinanet_resnet50_fpn", "torchvision_retinanet_v2",
     "unexpected (8): head.classification_head.conv.0.0.bias"),
    ("faster_rcnn", "fasterrcnn_resnet50_fpn_v2", "torchvision_faster_rcnn",
     "unexpected (56): backbone.fpn.inner_blocks.0.1.bias"),
    ("faster_rcnn", "fasterrcnn_resnet50_fpn", "torchvision_faster_rcnn_v2",
     "missing (56): rpn.head.conv.1.0.weight"),
]


@pytest.mark.parametrize("name, model, preset, difference", _V1_V2_MISMATCHES)
def test_a_v1_file_for_a_v2_config_and_back_is_refused_naming_the_files_model(
    name, model, preset, difference, request
):
    case = request.getfixturevalue(
        {"retinanet_resnet50_fpn": "retinanet_case", "fasterrcnn_resnet50_fpn": "faster_rcnn_case",
         "retinanet_resnet50_fpn_v2": "retinanet_v2_case",
         "fasterrcnn_resnet50_fpn_v2": "faster_rcnn_v2_case"}[model])
    path = case["record"]["path"]
    detector = _detector(name, preset, path, num_classes=91 if name == "retinanet" else 90)
    with pytest.raises(ConfigError) as error:
        detector.load_pretrained(_initial(detector))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"config.model.zoo_weights: {path}: a torchvision {name} "
                              f"({model}) file does not fit the configured {name}: ")
    assert difference in message


def test_zoo_classes_must_name_each_class_of_the_data_set():
    with pytest.raises(ConfigError, match="names 2 classes, the data set has 3"):
        zoo.class_sources("person,car", 3)
    with pytest.raises(ConfigError, match="has 3 classes, not COCO's 80"):
        zoo.class_sources("coco", 3)
    assert zoo.class_sources("coco", 80) == list(range(80))
    assert zoo.class_sources("file", 5) is None


def test_a_zoo_file_and_imagenet_weights_are_not_both_set():
    config = retinanet.default_config()
    config.zoo_weights, config.backbone_weights = "a.pth", "b.pkl"
    with pytest.raises(ConfigError, match="a zoo file holds the backbone too"):
        retinanet.check_config(config, IMAGE_SIZE)
