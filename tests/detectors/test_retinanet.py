"""RetinaNet detector: registry, config errors, shapes through the detector, and the loss against an
independent NumPy computation on a hand-made anchor set."""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax import detectors, losses
from focaljax.detectors import retinanet

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_CLASSES = 3


def load_config(name="shapes_retinanet"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_model_config():
    """The shapes config's model, shrunk, with the paper's anchors (9 per position) and L1 box loss,
    which the hand-computed expectations below assume."""
    model = load_config().model
    model.aspect_ratios = (0.5, 1.0, 2.0)
    model.loss.box = "l1"
    model.loss.box_weight = 1.0
    model.backbone = "resnet_tiny"
    model.min_level, model.max_level = 3, 4
    model.fpn_channels = model.head_channels = 16
    model.head_convs = 1
    return model


# ----------------------------------------------------------------------------------------------
# Registry and config errors.


def test_build_unknown_model_lists_known_names():
    model = tiny_model_config()
    model.name = "yolo"
    with pytest.raises(
        ValueError, match=r"unknown model 'yolo', expected one of \['faster_rcnn', 'retinanet'\]"
    ):
        detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))


@pytest.mark.parametrize("image_size", [(64,), (0, 64)])
def test_build_rejects_an_image_size_that_is_not_two_positive_ints(image_size):
    model = tiny_model_config()
    with pytest.raises(ValueError, match=r"is not \(height, width\) in pixels, both positive"):
        detectors.build(model, num_classes=NUM_CLASSES, image_size=image_size)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cls", "hinge", r"model.loss.cls is 'hinge', expected one of"),
        ("box", "l3", r"model.loss.box is 'l3', expected one of"),
    ],
)
def test_build_rejects_unknown_losses(field, value, message):
    model = tiny_model_config()
    model.loss[field] = value
    with pytest.raises(ValueError, match=message):
        detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))


@pytest.mark.parametrize(
    ("cls", "field", "value", "message"),
    [
        ("focal", "gamma", -1.0, r"model.loss.gamma is -1.0, expected a number in \[0, inf\)"),
        ("focal", "alpha", 1.5, r"model.loss.alpha is 1.5, expected a number in \[0, 1\]"),
        ("alpha_ce", "alpha", -0.1, r"model.loss.alpha is -0.1, expected a number in \[0, 1\]"),
        ("focal", "label_smoothing", 1.0, r"model.loss.label_smoothing is 1.0, .* \[0, 1\)"),
        ("focal", "label_smoothing", -0.1, r"model.loss.label_smoothing is -0.1"),
        ("focal", "soft_target_mode", "qfl", r"model.loss.soft_target_mode is 'qfl', expected one "
         r"of \('pt', 'quality'\)"),
        ("focal", "gamma", float("nan"), r"model.loss.gamma is nan"),
        ("fl_star", "gamma", 0.0, r"model.loss.gamma is 0.0, expected a number in \(0, inf\)"),
        ("fl_star", "fl_star_beta", float("inf"), r"model.loss.fl_star_beta is inf"),
        ("ohem", "ohem_num_samples", 0, r"model.loss.ohem_num_samples is 0, expected a positive "
         r"int"),
        ("ohem", "ohem_positive_fraction", 1.5, r"model.loss.ohem_positive_fraction is 1.5"),
        ("ohem", "ohem_negative_ratio", -1.0, r"model.loss.ohem_negative_ratio is -1.0, expected "
         r"a number in \[0, inf\)"),
        ("ohem", "ohem_nms_iou_threshold", 1.5, r"model.loss.ohem_nms_iou_threshold is 1.5, "
         r"expected a number in \[0, 1\]"),
        ("ohem", "ohem_pre_nms_topk", -1, r"model.loss.ohem_pre_nms_topk is -1, expected an int "
         r">= 0 \(0: all anchors\)"),
        ("ohem", "ohem_nms_boxes", "predicted", r"model.loss.ohem_nms_boxes is 'predicted', "
         r"expected one of \('anchors', 'decoded'\)"),
        ("focal", "box_weight", -2.0, r"model.loss.box_weight is -2.0"),
        ("focal", "ema_momentum", 1.5, r"model.loss.ema_momentum is 1.5, .* \[0, 1\]"),
    ],
    ids=lambda value: str(value)[:24],
)
def test_build_rejects_every_bad_loss_hyper_parameter_by_name(cls, field, value, message):
    # Refused when the detector is built, before any tracing; the loss functions themselves
    # refuse the same values (the config check only says which config field it was).
    model = tiny_model_config()
    model.loss.cls = cls
    model.loss[field] = value
    with pytest.raises(ValueError, match=message):
        detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [("focal", "gamma", 0.0), ("focal", "alpha", 1.0), ("alpha_ce", "alpha", 0.0),
     ("focal", "label_smoothing", 0.99), ("focal", "soft_target_mode", "quality"),
     ("fl_star", "fl_star_beta", -1.0), ("ohem", "ohem_positive_fraction", 0.0),
     ("ohem", "ohem_nms_iou_threshold", 1.0), ("ohem", "ohem_pre_nms_topk", 0),
     ("ohem", "ohem_nms_boxes", "decoded"),
     # A field the chosen loss does not read is not checked.
     ("ce", "gamma", -1.0), ("focal", "ohem_num_samples", 0), ("focal", "ohem_nms_boxes", "x")],
)
def test_build_accepts_the_edges_of_every_range(cls, field, value):
    model = tiny_model_config()
    model.loss.cls = cls
    model.loss[field] = value
    detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))


def test_build_rejects_ssds_rule_together_with_a_positive_fraction_naming_both_fields():
    model = tiny_model_config()
    model.loss.cls = "ohem"
    model.loss.ohem_negative_ratio, model.loss.ohem_positive_fraction = 3.0, 0.25
    with pytest.raises(ValueError, match=r"model.loss.ohem_negative_ratio is 3.0 and "
                       r"model.loss.ohem_positive_fraction is 0.25, expected at most one of them "
                       r"nonzero"):
        detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))
    model.loss.ohem_positive_fraction = 0.0
    detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))


def test_build_rejects_unknown_norm():
    model = tiny_model_config()
    model.norm = "layer_norm"
    with pytest.raises(ValueError, match=r"norm is 'layer_norm', expected one of"):
        detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))


# ----------------------------------------------------------------------------------------------
# Shapes through the detector.


def _contract_batch(image_size=(64, 64)):
    return {
        "image": jnp.zeros((2, *image_size, 3), jnp.float32),
        "boxes": jnp.array([[[4, 4, 30, 20], [0, 0, 0, 0]], [[10, 10, 50, 60], [1, 1, 9, 9]]],
                           jnp.float32),
        "labels": jnp.array([[1, -1], [0, 2]], jnp.int32),
        "is_crowd": jnp.zeros((2, 2), bool),
    }


def test_outputs_loss_and_detections_have_the_contract_shapes():
    model = tiny_model_config()
    model.postprocess.max_detections = 7
    detector = detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))
    batch = _contract_batch()
    variables = jax.jit(detector.init)(jax.random.PRNGKey(0), batch)
    outputs, updates = jax.jit(functools.partial(detector.apply, train=False))(variables, batch)
    num_anchors = (8 * 8 + 4 * 4) * 9
    assert outputs["cls_logits"].shape == (2, num_anchors, NUM_CLASSES)
    assert outputs["box_deltas"].shape == (2, num_anchors, 4)
    assert outputs["cls_logits"].dtype == outputs["box_deltas"].dtype == jnp.float32
    assert updates == {}
    terms, metrics, state = jax.jit(functools.partial(detector.loss_fn, state={}))(outputs, batch)
    assert set(terms) == {"cls", "box"} and state == {}
    assert all(t.shape == () and np.isfinite(t) for t in terms.values())
    assert set(metrics) >= {"num_positives", "normalizer"}
    detections = jax.jit(detector.postprocess)(outputs, batch)
    assert detections["boxes"].shape == (2, 7, 4)
    assert detections["scores"].shape == (2, 7)
    assert detections["classes"].shape == (2, 7) and detections["classes"].dtype == jnp.int32
    assert detections["num_valid"].shape == (2,) and detections["num_valid"].dtype == jnp.int32


def _abstract_outputs(detector, batch):
    """The network's output shapes and dtypes, traced but not compiled or run."""
    variables = jax.eval_shape(detector.init, jax.random.PRNGKey(0), batch)
    return jax.eval_shape(functools.partial(detector.apply, train=False), variables, batch)[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_detectors_still_return_float32_outputs(dtype):
    model = tiny_model_config()
    model.dtype = dtype
    detector = detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))
    outputs = _abstract_outputs(detector, _contract_batch())
    assert outputs["cls_logits"].dtype == outputs["box_deltas"].dtype == jnp.float32


def test_image_sizes_that_the_coarsest_stride_does_not_divide_have_one_output_per_anchor():
    model = tiny_model_config()
    detector = detectors.build(model, num_classes=NUM_CLASSES, image_size=(50, 70))
    outputs = _abstract_outputs(detector, _contract_batch((50, 70)))
    num_anchors = (7 * 9 + 4 * 5) * 9  # ceil(50 / 8) x ceil(70 / 8), ceil(50 / 16) x ceil(70 / 16)
    assert outputs["cls_logits"].shape == (2, num_anchors, NUM_CLASSES)
    assert outputs["box_deltas"].shape == (2, num_anchors, 4)


def test_batch_norm_detector_declares_its_statistics_mutable():
    model = tiny_model_config()
    model.norm = "bn"
    assert detectors.build(
        model, num_classes=NUM_CLASSES, image_size=(64, 64)
    ).mutable_collections == ("batch_stats",)
    model.norm = "frozen_bn"
    assert detectors.build(
        model, num_classes=NUM_CLASSES, image_size=(64, 64)
    ).mutable_collections == ()


# ----------------------------------------------------------------------------------------------
# The loss against NumPy on a hand-made anchor set.

# One ground-truth box [0, 0, 10, 10] of class 1 and a padding row. IoUs of the anchors with it:
# 1.0 (fg), 0.833 (fg), 0.667 (fg), 0.538 (fg), 0.429 (ignored), 0.333 (bg), 0 (bg), 0 (bg).
ANCHORS = np.array(
    [[0, 0, 10, 10], [0, 0, 10, 12], [2, 0, 12, 10], [3, 0, 13, 10], [4, 0, 14, 10],
     [5, 0, 15, 10], [30, 30, 40, 40], [20, 0, 30, 10]],
    np.float32,
)
GT_BOXES = np.array([[[0, 0, 10, 10], [0, 0, 0, 0]]], np.float32)
GT_LABELS = np.array([[1, -1]], np.int32)
NP_LABELS = np.array([1, 1, 1, 1, -2, -1, -1, -1])  # -2 ignored, -1 background


def _np_iou(a, b):
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _np_cls_loss(name, x, t, *, alpha, gamma, beta):
    """Per-logit losses of the paper (eqs. 1-5, appendix A), from p_t."""
    p_t = np.exp(np.where(t == 1, _np_log_sigmoid(x), _np_log_sigmoid(-x)))
    ce = -np.log(p_t)
    alpha_t = np.where(t == 1, alpha, 1 - alpha)
    if name == "focal":
        return alpha_t * (1 - p_t) ** gamma * ce
    if name in ("ce", "ohem"):
        return ce
    if name == "alpha_ce":
        return alpha_t * ce
    if name == "fl_star":
        x_t = np.where(t == 1, x, -x)
        return -_np_log_sigmoid(gamma * x_t + beta) / gamma
    raise AssertionError(name)


def _np_box_deltas(box, anchors):
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + wa / 2, anchors[:, 1] + ha / 2
    w, h = box[2] - box[0], box[3] - box[1]
    x, y = box[0] + w / 2, box[1] + h / 2
    return np.stack([(x - xa) / wa, (y - ya) / ha, np.log(w / wa), np.log(h / ha)], -1)


def _loss_fn(**loss_overrides):
    model = tiny_model_config()
    for key, value in loss_overrides.items():
        model.loss[key] = value
    return retinanet.make_loss_fn(
        model, anchors=ANCHORS, num_classes=NUM_CLASSES, box_coder=retinanet.BoxCoder()
    )


def _hand_set_outputs(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (1, len(ANCHORS), NUM_CLASSES)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (1, len(ANCHORS), 4)).astype(np.float32)
    return {"cls_logits": jnp.asarray(logits), "box_deltas": jnp.asarray(deltas)}


def _batch():
    return {"boxes": jnp.asarray(GT_BOXES), "labels": jnp.asarray(GT_LABELS),
            "is_crowd": jnp.zeros((1, 2), bool)}


def test_hand_made_anchor_labels_are_what_the_numpy_reference_assumes():
    iou = _np_iou(GT_BOXES[0, 0], ANCHORS)
    expected = np.where(iou >= 0.5, 1, np.where(iou < 0.4, -1, -2))
    np.testing.assert_array_equal(expected, NP_LABELS)


@pytest.mark.parametrize("cls", ["focal", "ce", "alpha_ce", "fl_star"])
def test_loss_equals_numpy_sum_over_non_ignored_anchors_divided_by_positives(cls):
    alpha, gamma, beta = 0.25, 2.0, 1.0
    outputs = _hand_set_outputs()
    terms, metrics, _ = _loss_fn(cls=cls, alpha=alpha, gamma=gamma, fl_star_beta=beta, box="l1")(
        outputs, _batch(), state={}
    )

    logits = np.asarray(outputs["cls_logits"][0], np.float64)
    targets = (NP_LABELS[:, None] == np.arange(NUM_CLASSES)).astype(np.float64)
    per_logit = _np_cls_loss(cls, logits, targets, alpha=alpha, gamma=gamma, beta=beta)
    not_ignored = NP_LABELS != -2
    positive = NP_LABELS >= 0
    num_pos = positive.sum()
    cls_loss = per_logit[not_ignored].sum() / num_pos
    target_deltas = _np_box_deltas(GT_BOXES[0, 0], ANCHORS)
    deltas = np.asarray(outputs["box_deltas"][0], np.float64)
    box_loss = np.abs(deltas - target_deltas)[positive].sum() / num_pos

    np.testing.assert_allclose(terms["cls"], cls_loss, rtol=1e-5)
    np.testing.assert_allclose(terms["box"], box_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["num_positives"], num_pos)


def test_smooth_l1_and_giou_box_losses_equal_numpy():
    outputs = _hand_set_outputs(seed=1)
    deltas = np.asarray(outputs["box_deltas"][0], np.float64)
    positive = NP_LABELS >= 0
    target_deltas = _np_box_deltas(GT_BOXES[0, 0], ANCHORS)

    terms = _loss_fn(box="smooth_l1", box_beta=0.1, box_weight=2.0)(outputs, _batch(), state={})[0]
    d = np.abs(deltas - target_deltas)
    smooth = np.where(d < 0.1, 0.5 * d**2 / 0.1, d - 0.05)
    np.testing.assert_allclose(terms["box"], 2.0 * smooth[positive].sum() / 4, rtol=1e-5)

    terms = _loss_fn(box="giou")(outputs, _batch(), state={}).terms
    wa, ha = ANCHORS[:, 2] - ANCHORS[:, 0], ANCHORS[:, 3] - ANCHORS[:, 1]
    cx, cy = ANCHORS[:, 0] + wa / 2 + deltas[:, 0] * wa, ANCHORS[:, 1] + ha / 2 + deltas[:, 1] * ha
    w, h = wa * np.exp(deltas[:, 2]), ha * np.exp(deltas[:, 3])
    pred = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    gt = GT_BOXES[0, 0].astype(np.float64)
    inter = np.clip(np.minimum(pred[:, 2], gt[2]) - np.maximum(pred[:, 0], gt[0]), 0, None) * (
        np.clip(np.minimum(pred[:, 3], gt[3]) - np.maximum(pred[:, 1], gt[1]), 0, None)
    )
    union = w * h + 100 - inter
    hull = (np.maximum(pred[:, 2], gt[2]) - np.minimum(pred[:, 0], gt[0])) * (
        np.maximum(pred[:, 3], gt[3]) - np.minimum(pred[:, 1], gt[1])
    )
    iou = inter / union
    giou = iou - (hull - union) / hull
    np.testing.assert_allclose(terms["box"], (1 - giou)[positive].sum() / 4, rtol=1e-4)


def test_ohem_keeps_the_highest_loss_anchors_with_at_most_a_quarter_positives():
    outputs = _hand_set_outputs(seed=2)
    terms = _loss_fn(cls="ohem", ohem_num_samples=4, ohem_positive_fraction=0.25)(
        outputs, _batch(), state={}
    ).terms
    logits = np.asarray(outputs["cls_logits"][0], np.float64)
    targets = (NP_LABELS[:, None] == np.arange(NUM_CLASSES)).astype(np.float64)
    per_anchor = _np_cls_loss("ce", logits, targets, alpha=0, gamma=0, beta=0).sum(-1)
    positives = np.flatnonzero(NP_LABELS >= 0)
    negatives = np.flatnonzero(NP_LABELS == -1)
    # One positive (4 * 0.25), the three negatives (all of them), divided by the 4 positives.
    expected = (per_anchor[positives].max() + per_anchor[negatives].sum()) / 4
    np.testing.assert_allclose(terms["cls"], expected, rtol=1e-5)


def _np_decoded_boxes(deltas):
    wa, ha = ANCHORS[:, 2] - ANCHORS[:, 0], ANCHORS[:, 3] - ANCHORS[:, 1]
    cx, cy = ANCHORS[:, 0] + wa / 2 + deltas[:, 0] * wa, ANCHORS[:, 1] + ha / 2 + deltas[:, 1] * ha
    w, h = wa * np.exp(deltas[:, 2]), ha * np.exp(deltas[:, 3])
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


@pytest.mark.parametrize("nms_boxes", ["anchors", "decoded"])
def test_ohem_with_nms_and_ssds_rule_weights_the_anchors_ohem_mask_picks(nms_boxes):
    outputs = _hand_set_outputs(seed=5)
    # Decoded, the positives 1-3 move apart (by 5, 10, 15 heights) and the negative 7 lands on
    # the negative 6; the negative 5 is the easiest.
    deltas = np.zeros((1, len(ANCHORS), 4), np.float32)
    deltas[0, 1:4, 1] = [5, 10, 15]
    deltas[0, 7, :2] = [1, 3]
    outputs["box_deltas"] = jnp.asarray(deltas)
    outputs["cls_logits"] = outputs["cls_logits"].at[0, 5].set(-8.0)
    terms = _loss_fn(cls="ohem", ohem_num_samples=6, ohem_positive_fraction=0.0,
                     ohem_negative_ratio=1.0, ohem_nms_iou_threshold=0.5,
                     ohem_nms_boxes=nms_boxes)(outputs, _batch(), state={}).terms
    logits = np.asarray(outputs["cls_logits"][0], np.float64)
    targets = (NP_LABELS[:, None] == np.arange(NUM_CLASSES)).astype(np.float64)
    per_anchor = _np_cls_loss("ce", logits, targets, alpha=0, gamma=0, beta=0).sum(-1)
    deltas = np.asarray(outputs["box_deltas"][0], np.float64)
    boxes = {"anchors": ANCHORS, "decoded": _np_decoded_boxes(deltas)}

    def mask(boxes):
        nms = {} if boxes is None else {"boxes": boxes.astype(np.float32), "nms_iou_threshold": 0.5}
        return np.asarray(losses.ohem_mask(
            per_anchor.astype(np.float32), num_samples=6, valid=NP_LABELS != -2,
            positive_mask=NP_LABELS >= 0, negative_ratio=1.0, **nms,
        ))

    expected = mask(boxes[nms_boxes])
    # The other boxes, and no NMS, pick differently, so the term tells the three apart.
    other = "decoded" if nms_boxes == "anchors" else "anchors"
    assert (expected != mask(boxes[other])).any() and (expected != mask(None)).any()
    np.testing.assert_allclose(terms["cls"], (per_anchor * expected).sum() / 4, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"cls": "focal"}, {"cls": "ce"}, {"cls": "alpha_ce"},
        {"cls": "fl_star", "fl_star_beta": 1.0}, {"cls": "ohem", "ohem_num_samples": 4},
        {"cls": "ohem", "ohem_num_samples": 4, "ohem_positive_fraction": 0.0,
         "ohem_negative_ratio": 3.0, "ohem_nms_iou_threshold": 0.5, "ohem_nms_boxes": "decoded"},
        {"box": "giou"}, {"box": "smooth_l1", "box_beta": 0.1},
    ],
    ids=lambda overrides: "-".join(str(v) for v in overrides.values()),
)
def test_every_loss_variant_has_a_finite_gradient_that_reaches_both_heads(overrides):
    outputs = _hand_set_outputs(seed=3)
    def total(o):
        return sum(_loss_fn(**overrides)(o, _batch(), state={}).terms.values())

    grads = jax.jit(jax.grad(total))(outputs)
    for name in ("cls_logits", "box_deltas"):
        assert np.all(np.isfinite(grads[name])), name
        assert np.any(grads[name] != 0), name


def test_ema_normalizer_divides_by_detectron2s_moving_average_of_the_positives():
    outputs = _hand_set_outputs(seed=4)
    num_pos = (NP_LABELS >= 0).sum()
    plain = _loss_fn()(outputs, _batch(), state={})
    loss_fn = _loss_fn(normalizer="ema", ema_momentum=0.9)
    state = {"normalizer": jnp.float32(100.0)}
    expected_state = 100.0
    for _ in range(3):
        terms, metrics, state = loss_fn(outputs, _batch(), state=state)
        expected_state = 0.9 * expected_state + 0.1 * num_pos
        np.testing.assert_allclose(state["normalizer"], expected_state, rtol=1e-6)
        # The same sums, divided by the running average instead of this batch's count.
        for name in ("cls", "box"):
            np.testing.assert_allclose(
                terms[name], plain.terms[name] * num_pos / expected_state, rtol=1e-5
            )
    np.testing.assert_allclose(metrics["normalizer"], expected_state, rtol=1e-6)


def test_ema_normalizer_starts_at_detectron2s_initial_value_in_the_detector():
    model = tiny_model_config()
    model.loss.normalizer = "ema"
    detector = detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))
    assert float(detector.initial_loss_state["normalizer"]) == 100.0
    model.loss.normalizer = "mean"
    with pytest.raises(ValueError, match=r"model.loss.normalizer is 'mean', expected one of"):
        detectors.build(model, num_classes=NUM_CLASSES, image_size=(64, 64))
