"""RPN proposals against a float64 NumPy transcription of detectron2's `find_top_rpn_proposals`.

Compiling the proposal function costs seconds on CPU, so the tests share one jitted function with
the thresholds traced and only the top-k sizes static.
"""

import doctest
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import focaljax.ops.proposals
from focaljax.ops import BoxCoder, generate_anchors, num_anchors_per_level, rpn_proposals
from tests.ops import reference

IMAGE_SIZE = (64, 96)
# One anchor size per level and three aspect ratios: 1152, 288 and 72 anchors.
LEVELS = {"min_level": 2, "max_level": 4, "scales": (1.0,)}
ANCHORS = generate_anchors(IMAGE_SIZE, anchor_sizes=(16, 32, 64), **LEVELS)
PER_LEVEL = num_anchors_per_level(IMAGE_SIZE, **LEVELS)


def numpy_proposals(
    logits,
    deltas,
    *,
    pre_nms_topk,
    post_nms_topk,
    nms_iou_threshold,
    min_size,
    image_size=IMAGE_SIZE,
    weights=(1.0, 1.0, 1.0, 1.0),
):
    """Per level the `pre_nms_topk` best anchors (NaN first, as torch.topk and lax.top_k rank it;
    ties by index), decoded and clipped; those finite and larger than `min_size` go through greedy
    NMS with the level as the class, ranked over all levels; the `post_nms_topk` best."""
    logits = np.asarray(logits, np.float64)
    scores, boxes, levels, valid = [], [], [], []
    start = 0
    for level, count in enumerate(PER_LEVEL):
        level_logits = logits[start : start + count]
        order = sorted(
            range(count),
            key=lambda i: (0, 0.0, i) if math.isnan(level_logits[i]) else (1, -level_logits[i], i),
        )
        for i in order[:pre_nms_topk]:
            a = start + i
            box = reference.decode(np.asarray(deltas[a], np.float64), ANCHORS[a], weights)
            finite = math.isfinite(logits[a]) and all(math.isfinite(v) for v in box)
            box = reference.clip(box, image_size) if finite else [0.0] * 4
            scores.append(logits[a])
            boxes.append(box)
            levels.append(level)
            valid.append(finite and box[2] - box[0] > min_size and box[3] - box[1] > min_size)
        start += count
    kept = reference.nms(
        boxes, scores, nms_iou_threshold, post_nms_topk, classes=levels, valid=valid
    )
    kept = kept[kept >= 0]
    out = {
        "boxes": np.zeros([post_nms_topk, 4]),
        "scores": np.full(post_nms_topk, -np.inf),
        "valid": np.zeros(post_nms_topk, bool),
    }
    for row, i in enumerate(kept):
        out["boxes"][row] = boxes[i]
        out["scores"][row] = scores[i]
        out["valid"][row] = True
    return out


@functools.partial(jax.jit, static_argnames=("pre_nms_topk", "post_nms_topk", "weights"))
def jit_proposals(
    logits,
    deltas,
    *,
    pre_nms_topk,
    post_nms_topk,
    nms_iou_threshold,
    min_size,
    image_size=IMAGE_SIZE,
    weights=(1.0, 1.0, 1.0, 1.0),
):
    return rpn_proposals(
        logits,
        deltas,
        anchors=ANCHORS,
        anchors_per_level=PER_LEVEL,
        image_size=image_size,
        pre_nms_topk=pre_nms_topk,
        post_nms_topk=post_nms_topk,
        nms_iou_threshold=nms_iou_threshold,
        min_size=min_size,
        box_coder=BoxCoder(weights=weights),
    )


def random_outputs(seed, *, num_images=None):
    """Random objectness logits and deltas for `ANCHORS`."""
    rng = np.random.default_rng(seed)
    shape = () if num_images is None else (num_images,)
    logits = rng.normal(0.0, 2.0, size=(*shape, len(ANCHORS))).astype(np.float32)
    deltas = rng.normal(0.0, 0.4, size=(*shape, len(ANCHORS), 4)).astype(np.float32)
    return logits, deltas


def assert_proposals_equal(got, want):
    np.testing.assert_array_equal(got["valid"], want["valid"])
    np.testing.assert_array_equal(got["scores"], want["scores"].astype(np.float32))
    np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("pre_nms_topk", "post_nms_topk", "nms_iou_threshold", "min_size"),
    [
        # 100 + 100 + all 72 of the last level: post_nms_topk is all 272 candidates.
        (100, 272, 0.7, 0.0),
        (100, 272, 0.5, 0.0),
        (100, 272, 0.3, 6.0),
        (100, 272, 1.0, 0.0),  # nothing suppressed
    ],
)
def test_proposals_match_numpy_reference(pre_nms_topk, post_nms_topk, nms_iou_threshold, min_size):
    logits, deltas = random_outputs(0)
    kwargs = {
        "pre_nms_topk": pre_nms_topk,
        "post_nms_topk": post_nms_topk,
        "nms_iou_threshold": nms_iou_threshold,
        "min_size": min_size,
    }
    got = jit_proposals(logits, deltas, **kwargs)
    assert got["boxes"].shape == (post_nms_topk, 4) and got["boxes"].dtype == jnp.float32
    assert got["scores"].dtype == jnp.float32 and got["valid"].dtype == jnp.bool_
    want = numpy_proposals(logits, deltas, **kwargs)
    assert want["valid"].sum() > 50
    assert_proposals_equal(got, want)


def test_proposals_with_tied_logits_take_the_lower_index_first():
    _, deltas = random_outputs(1)
    # Four logit values only: the per-level top-k and the NMS order are decided by ties.
    logits = np.random.default_rng(1).integers(0, 4, size=len(ANCHORS)).astype(np.float32)
    kwargs = {"pre_nms_topk": 100, "post_nms_topk": 272, "nms_iou_threshold": 0.6, "min_size": 0.0}
    assert_proposals_equal(
        jit_proposals(logits, deltas, **kwargs), numpy_proposals(logits, deltas, **kwargs)
    )


def test_proposals_drop_boxes_not_larger_than_min_size():
    logits, deltas = random_outputs(2)
    # Widely spread sizes, so that many boxes are below the minimum.
    deltas[:, 2:] = np.random.default_rng(2).normal(-0.5, 1.0, size=(len(ANCHORS), 2))
    kwargs = {"pre_nms_topk": 100, "post_nms_topk": 272, "nms_iou_threshold": 0.7}
    unfiltered = jit_proposals(logits, deltas, min_size=0.0, **kwargs)
    got = jax.device_get(jit_proposals(logits, deltas, min_size=12.0, **kwargs))
    assert_proposals_equal(got, numpy_proposals(logits, deltas, min_size=12.0, **kwargs))
    boxes = got["boxes"][got["valid"]]
    assert np.all(boxes[:, 2] - boxes[:, 0] > 12.0) and np.all(boxes[:, 3] - boxes[:, 1] > 12.0)
    assert 0 < got["valid"].sum() < int(unfiltered["valid"].sum())


def test_proposals_leave_out_non_finite_candidates_and_pad():
    logits, deltas = random_outputs(3)
    rng = np.random.default_rng(3)
    live = rng.choice(len(ANCHORS), size=40, replace=False)
    logits[:] = -np.inf
    logits[live] = rng.normal(0.0, 1.0, size=40)
    # The four best of them diverged: a NaN or infinite logit, an infinite or NaN delta.
    logits[live[:2]] = [np.nan, np.inf]
    logits[live[2:4]] = 10.0
    deltas[live[2], 0] = np.inf
    deltas[live[3], 3] = np.nan
    kwargs = {"pre_nms_topk": 100, "post_nms_topk": 272, "nms_iou_threshold": 0.7, "min_size": 0.0}
    got = jax.device_get(jit_proposals(logits, deltas, **kwargs))
    assert_proposals_equal(got, numpy_proposals(logits, deltas, **kwargs))
    n = int(got["valid"].sum())
    assert 0 < n <= 36
    assert np.all(got["valid"][:n]) and not np.any(got["valid"][n:])
    assert np.all(np.diff(got["scores"][:n]) <= 0) and np.all(got["scores"][:n] < 10.0)
    np.testing.assert_array_equal(got["boxes"][n:], 0)
    np.testing.assert_array_equal(got["scores"][n:], -np.inf)


def test_proposals_suppress_within_a_level_only():
    box = [8.0, 8.0, 24.0, 24.0]
    anchors = np.array([box, box, box, [9.0, 8.0, 25.0, 24.0]], np.float32)
    fn = functools.partial(
        rpn_proposals,
        anchors=anchors,
        anchors_per_level=(2, 2),
        image_size=(32, 32),
        post_nms_topk=4,
    )
    got = jax.jit(fn)(np.array([3.0, 2.0, 1.0, 4.0], np.float32), np.zeros((4, 4), np.float32))
    # Level 0: anchor 1 duplicates anchor 0. Level 1: anchor 2 overlaps anchor 3 (IoU 15/17).
    # Anchor 0 duplicates anchor 2 too, but across levels nothing is suppressed.
    np.testing.assert_array_equal(got["valid"], [True, True, False, False])
    np.testing.assert_array_equal(got["scores"], [4.0, 3.0, -np.inf, -np.inf])
    np.testing.assert_array_equal(got["boxes"], [anchors[3], anchors[0], [0] * 4, [0] * 4])


def test_proposals_under_jit_and_vmap_equal_reference_per_image():
    logits, deltas = random_outputs(4, num_images=3)
    image_sizes = np.array([IMAGE_SIZE, (50, 70), (64, 40)], np.float32)
    # The first level is cut at 1000 of its 1152 anchors, the others are taken whole.
    kwargs = {"pre_nms_topk": 1000, "post_nms_topk": 300, "nms_iou_threshold": 0.6, "min_size": 2.0}
    weights = (2.0, 2.0, 1.0, 1.0)
    batched = jax.vmap(lambda l, d, s: jit_proposals(l, d, image_size=s, weights=weights, **kwargs))
    got = jax.jit(batched)(logits, deltas, image_sizes)
    assert got["boxes"].shape == (3, 300, 4)
    for i in range(3):
        want = numpy_proposals(
            logits[i], deltas[i], image_size=tuple(image_sizes[i]), weights=weights, **kwargs
        )
        assert_proposals_equal(jax.tree.map(lambda x, i=i: x[i], got), want)


def test_proposals_carry_no_gradient():
    logits, deltas = random_outputs(5)
    kwargs = {"pre_nms_topk": 100, "post_nms_topk": 272, "nms_iou_threshold": 0.7, "min_size": 0.0}

    def total(out):
        scores = jnp.where(out["valid"], out["scores"], 0.0)
        return jnp.sum(out["boxes"] ** 2) + jnp.sum(jnp.exp(scores))

    def total_of_inputs(logits, deltas, anchors):
        return total(
            rpn_proposals(
                logits,
                deltas,
                anchors=anchors,
                anchors_per_level=PER_LEVEL,
                image_size=IMAGE_SIZE,
                pre_nms_topk=kwargs["pre_nms_topk"],
                post_nms_topk=kwargs["post_nms_topk"],
                nms_iou_threshold=kwargs["nms_iou_threshold"],
                min_size=kwargs["min_size"],
            )
        )

    # Without the stop-gradient every one of these gradients is far from zero.
    assert float(total(jit_proposals(logits, deltas, **kwargs))) > 0
    grads = jax.jit(jax.grad(total_of_inputs, argnums=(0, 1, 2)))(logits, deltas, ANCHORS)
    for grad in grads:
        np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda a: {"objectness": np.stack([a["objectness"]] * 2)},
            r"objectness has shape \(2, 1512\), expected \[A\]",
        ),
        (
            lambda a: {"box_deltas": a["box_deltas"][:10]},
            r"box_deltas has shape \(10, 4\), expected \(1512, 4\)",
        ),
        (
            lambda a: {"anchors": a["anchors"][:10]},
            r"anchors has shape \(10, 4\), expected \(1512, 4\)",
        ),
        (
            lambda a: {"anchors_per_level": (1000, 512, 1)},
            r"anchors_per_level \(1000, 512, 1\) must be positive and sum to the 1512 anchors",
        ),
        (lambda a: {"image_size": (64,)}, r"image_size is \(64,\), expected \(height, width\)"),
        (lambda a: {"pre_nms_topk": 0}, r"pre_nms_topk is 0, expected a positive int"),
        (lambda a: {"post_nms_topk": 0}, r"post_nms_topk is 0, expected a positive int"),
        (lambda a: {"post_nms_topk": 2.5}, r"post_nms_topk is 2.5, expected a positive int"),
        (
            lambda a: {"pre_nms_topk": 100, "post_nms_topk": 273},
            r"post_nms_topk is 273, expected at most the 272 candidates",
        ),
        (lambda a: {"min_size": -1.0}, r"min_size is -1.0, expected a number >= 0"),
    ],
    ids=[
        "batched_objectness",
        "box_deltas_shape",
        "anchors_shape",
        "anchors_per_level_sum",
        "image_size",
        "pre_nms_topk_zero",
        "post_nms_topk_zero",
        "post_nms_topk_float",
        "post_nms_topk_above_candidates",
        "min_size_negative",
    ],
)
def test_proposals_reject_bad_input(change, message):
    logits, deltas = random_outputs(6)
    args = {
        "objectness": logits,
        "box_deltas": deltas,
        "anchors": ANCHORS,
        "anchors_per_level": PER_LEVEL,
        "image_size": IMAGE_SIZE,
    }
    args.update(change(args))
    objectness, box_deltas = args.pop("objectness"), args.pop("box_deltas")
    with pytest.raises(ValueError, match=message):
        rpn_proposals(objectness, box_deltas, **args)


def test_proposals_docstring_example_runs():
    result = doctest.testmod(focaljax.ops.proposals)
    assert result.attempted > 0 and result.failed == 0
