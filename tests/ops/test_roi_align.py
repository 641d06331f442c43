"""RoIAlign against a float64 NumPy transcription of the sampling loop of detectron2/torchvision."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focaljax.ops import assign_boxes_to_levels, multilevel_roi_align, roi_align


def numpy_bilinear(feature, y, x):
    """torchvision's `bilinear_interpolate`: 0 beyond one cell outside, clamped near the border."""
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    return (
        (1 - ly) * (1 - lx) * feature[y_low, x_low]
        + (1 - ly) * lx * feature[y_low, x_high]
        + ly * (1 - lx) * feature[y_high, x_low]
        + ly * lx * feature[y_high, x_high]
    )


def numpy_roi_align(feature, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    feature = np.asarray(feature, np.float64)
    out_h, out_w = output_size
    result = np.zeros([len(boxes), out_h, out_w, feature.shape[2]])
    offset = 0.5 if aligned else 0.0
    for k, box in enumerate(np.asarray(boxes, np.float64)):
        x1, y1, x2, y2 = box * spatial_scale - offset
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_h / out_h), 0)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_w / out_w), 0)
        count = max(grid_h * grid_w, 1)
        for i in range(out_h):
            for j in range(out_w):
                total = np.zeros(feature.shape[2])
                for a in range(grid_h):
                    y = y1 + i * bin_h + (a + 0.5) * bin_h / grid_h
                    for b in range(grid_w):
                        x = x1 + j * bin_w + (b + 0.5) * bin_w / grid_w
                        total += numpy_bilinear(feature, y, x)
                result[k, i, j] = total / count
    return result


def random_boxes(rng, num, image_size, *, margin=0.0):
    """Boxes of varied size and position, some reaching `margin` pixels beyond the image."""
    height, width = image_size
    x1 = rng.uniform(-margin, width, num)
    y1 = rng.uniform(-margin, height, num)
    w = rng.uniform(0.5, width / 1.5, num)
    h = rng.uniform(0.5, height / 1.5, num)
    return np.stack(
        [x1, y1, np.minimum(x1 + w, width + margin), np.minimum(y1 + h, height + margin)], axis=-1
    ).astype(np.float32)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
def test_roi_align_matches_numpy_reference(aligned, sampling_ratio):
    rng = np.random.default_rng(sampling_ratio + 10 * aligned)
    feature = rng.normal(size=(13, 17, 3)).astype(np.float32)
    boxes = random_boxes(rng, 20, (13 * 4, 17 * 4), margin=6.0)
    boxes[0] = [10.0, 10.0, 10.0, 10.0]  # zero size: 0 with an adaptive aligned grid
    boxes[1] = [0.0, 0.0, 17 * 4, 13 * 4]  # the whole map
    kwargs = {
        "output_size": (5, 4),
        "spatial_scale": 0.25,
        "sampling_ratio": sampling_ratio,
        "aligned": aligned,
    }
    got = roi_align(feature, boxes, **kwargs)
    assert got.shape == (20, 5, 4, 3) and got.dtype == jnp.float32
    want = numpy_roi_align(feature, boxes, (5, 4), 0.25, sampling_ratio, aligned)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_roi_align_of_a_linear_map_samples_bin_centres():
    # Bilinear interpolation is exact on f(y, x) = y + 10 x, so an aligned bin's mean is the value
    # at its centre (in feature pixels: image pixels * scale - 0.5).
    ys, xs = np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij")
    feature = (ys + 10 * xs)[..., None].astype(np.float32)
    box = np.array([[4.0, 2.0, 12.0, 10.0]], np.float32)  # 2x2 bins of 2x2 feature pixels
    got = roi_align(feature, box, output_size=(2, 2), spatial_scale=0.5, sampling_ratio=2)
    # Feature-pixel box: x from 4 * 0.5 - 0.5 = 1.5 to 5.5, y from 0.5 to 4.5; bin centres at
    # start + 1 and start + 3.
    centres_y = np.array([1.5, 3.5])
    centres_x = np.array([2.5, 4.5])
    want = centres_y[:, None] + 10 * centres_x[None, :]
    np.testing.assert_allclose(got[0, :, :, 0], want, rtol=1e-6)


def test_roi_align_adaptive_grid_cap_limits_samples():
    rng = np.random.default_rng(3)
    feature = rng.normal(size=(40, 40, 2)).astype(np.float32)
    boxes = np.array([[0.0, 0.0, 40.0, 40.0], [3.0, 5.0, 9.0, 8.0]], np.float32)
    capped = roi_align(
        feature,
        boxes,
        output_size=(2, 2),
        spatial_scale=1.0,
        sampling_ratio=0,
        max_sampling_ratio=3,
    )
    # The big box needs a 20x20 grid and gets 3x3; the small one needs 3x2, under the cap.
    np.testing.assert_allclose(
        capped[0],
        numpy_roi_align(feature, boxes[:1], (2, 2), 1.0, 3, True)[0],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        capped[1],
        numpy_roi_align(feature, boxes[1:], (2, 2), 1.0, 0, True)[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_roi_align_under_jit_and_vmap_equals_per_image_reference():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(3, 9, 11, 2)).astype(np.float32)
    boxes = np.stack([random_boxes(rng, 6, (36, 44), margin=3.0) for _ in range(3)])

    @jax.jit
    @jax.vmap
    def pool(f, b):
        return roi_align(f, b, output_size=(3, 3), spatial_scale=0.25, sampling_ratio=0)

    got = pool(features, boxes)
    for image in range(3):
        want = numpy_roi_align(features[image], boxes[image], (3, 3), 0.25, 0, True)
        np.testing.assert_allclose(got[image], want, rtol=1e-5, atol=1e-5)


def test_roi_align_adaptive_grids_of_other_shapes_under_nested_vmap_equal_reference():
    # A tall, a wide and a small box in one call: each walks its own grid (5x1, 1x6, 1x1 samples
    # a bin), not the 5x6 of the tallest and the widest; two vmaps (devices x images) take the
    # trip count over everything batched.
    rng = np.random.default_rng(9)
    features = rng.normal(size=(2, 3, 10, 12, 2)).astype(np.float32)
    boxes = np.array([[2.0, 1.0, 9.0, 38.0], [1.0, 3.0, 44.0, 8.0], [5.0, 5.0, 9.0, 9.0]],
                     np.float32)
    boxes = np.broadcast_to(boxes, (2, 3, 3, 4)) + rng.uniform(0, 2, (2, 3, 1, 1)).astype(
        np.float32)

    def pool(f, b):
        return roi_align(f, b, output_size=(2, 2), spatial_scale=0.25, sampling_ratio=0)

    got = jax.jit(jax.vmap(jax.vmap(pool)))(features, boxes)
    for device in range(2):
        for image in range(3):
            want = numpy_roi_align(features[device, image], boxes[device, image], (2, 2), 0.25,
                                   0, True)
            np.testing.assert_allclose(got[device, image], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_gradient_wrt_features_matches_reference_impulse_responses(sampling_ratio):
    rng = np.random.default_rng(5)
    feature = rng.normal(size=(6, 7, 2))
    boxes = random_boxes(rng, 4, (24, 28), margin=4.0)
    weights = rng.normal(size=(4, 3, 3, 2))

    def objective(f):
        pooled = roi_align(
            f, boxes, output_size=(3, 3), spatial_scale=0.25, sampling_ratio=sampling_ratio
        )
        return jnp.sum(pooled * weights)

    grad = jax.jit(jax.grad(objective))(jnp.asarray(feature, jnp.float32))
    # RoIAlign is linear in the features, so the gradient is d/df of the reference objective,
    # read off exactly by probing each feature with a unit impulse.
    want = np.zeros_like(feature)
    for index in np.ndindex(feature.shape):
        impulse = np.zeros_like(feature)
        impulse[index] = 1.0
        pooled = numpy_roi_align(impulse, boxes, (3, 3), 0.25, sampling_ratio, True)
        want[index] = np.sum(pooled * weights)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5)
    assert np.abs(want).sum() > 0


def test_roi_align_keeps_dtype_and_handles_no_boxes():
    feature = jnp.ones((4, 4, 3), jnp.bfloat16)
    got = roi_align(feature, jnp.array([[0.0, 0.0, 4.0, 4.0]]), spatial_scale=1.0)
    assert got.dtype == jnp.bfloat16 and got.shape == (1, 7, 7, 3)
    np.testing.assert_allclose(np.asarray(got, np.float32), 1.0)
    empty = roi_align(feature, jnp.zeros((0, 4)), output_size=(2, 3), spatial_scale=1.0)
    assert empty.shape == (0, 2, 3, 3)


def test_roi_align_rejects_bad_input():
    with pytest.raises(
        ValueError, match=r"features has shape \(2, 4, 4, 3\), expected \[H, W, C\]"
    ):
        roi_align(jnp.zeros((2, 4, 4, 3)), jnp.zeros((1, 4)), spatial_scale=1.0)
    with pytest.raises(ValueError, match=r"boxes has shape \(1, 5\), expected \(..., 4\)"):
        roi_align(jnp.zeros((4, 4, 3)), jnp.zeros((1, 5)), spatial_scale=1.0)
    with pytest.raises(ValueError, match=r"output_size is \(0, 7\), expected two positive ints"):
        roi_align(jnp.zeros((4, 4, 3)), jnp.zeros((1, 4)), output_size=(0, 7), spatial_scale=1.0)
    with pytest.raises(ValueError, match=r"sampling_ratio is -1, expected a positive int or 0"):
        roi_align(jnp.zeros((4, 4, 3)), jnp.zeros((1, 4)), spatial_scale=1.0, sampling_ratio=-1)


def numpy_level(box, min_level, max_level):
    size = math.sqrt(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))
    level = min_level if size == 0 else math.floor(4 + math.log2(size / 224))
    return min(max(level, min_level), max_level)


def test_assign_boxes_to_levels_follows_fpn_equation_1():
    boxes = np.array(
        [
            [0, 0, 224, 224],  # canonical: 4
            [0, 0, 223, 223],  # just under: 3
            [0, 0, 448, 448],  # 5
            [0, 0, 112, 112],  # 3
            [0, 0, 10, 10],  # tiny: clamped to 2
            [0, 0, 2000, 2000],  # huge: clamped to 5
            [5, 5, 5, 9],  # empty: 2
            [0, 0, 56, 896],  # sqrt(area) 224: 4
        ],
        np.float32,
    )
    got = assign_boxes_to_levels(boxes, min_level=2, max_level=5)
    np.testing.assert_array_equal(got, [4, 3, 5, 3, 2, 5, 2, 4])
    rng = np.random.default_rng(6)
    boxes = random_boxes(rng, 200, (1000, 1000))
    got = assign_boxes_to_levels(boxes, min_level=2, max_level=5)
    want = [numpy_level(b, 2, 5) for b in boxes.astype(np.float64)]
    assert np.mean(np.asarray(got) == want) > 0.99  # float32 vs float64 only at level edges


@pytest.mark.parametrize("as_mapping", [True, False])
def test_multilevel_roi_align_pools_each_box_on_its_level(as_mapping):
    rng = np.random.default_rng(7)
    image = (128, 96)
    levels = range(2, 6)
    maps = {
        lvl: rng.normal(
            size=(math.ceil(image[0] / 2**lvl), math.ceil(image[1] / 2**lvl), 3)
        ).astype(np.float32)
        for lvl in levels
    }
    boxes = np.concatenate(
        [
            random_boxes(rng, 12, image, margin=5.0),
            # Small and large boxes scaled up so that every level gets some.
            random_boxes(rng, 12, image) * np.float32(8.0),
        ]
    )
    features = maps if as_mapping else [maps[lvl] for lvl in levels]
    kwargs = {"output_size": (2, 3), "sampling_ratio": 0, "max_sampling_ratio": 40}
    got = jax.jit(lambda f, b: multilevel_roi_align(f, b, min_level=2, max_level=5, **kwargs))(
        features, boxes
    )
    assigned = [numpy_level(b, 2, 5) for b in boxes.astype(np.float64)]
    assert len(set(assigned)) == 4
    for k, box in enumerate(boxes):
        lvl = assigned[k]
        want = numpy_roi_align(maps[lvl], box[None], (2, 3), 2.0**-lvl, 0, True)[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5, err_msg=f"box {k}")


def test_multilevel_roi_align_rejects_missing_levels():
    with pytest.raises(ValueError, match=r"features has levels \[2, 3\], expected 2..4"):
        multilevel_roi_align(
            {2: jnp.zeros((4, 4, 1)), 3: jnp.zeros((2, 2, 1))},
            jnp.zeros((1, 4)),
            min_level=2,
            max_level=4,
        )
    with pytest.raises(ValueError, match=r"expected the same at every level"):
        multilevel_roi_align(
            [jnp.zeros((4, 4, 1)), jnp.zeros((2, 2, 2))],
            jnp.zeros((1, 4)),
            min_level=2,
            max_level=3,
        )


def test_roi_align_gradient_under_vmap_equals_per_image_gradients():
    rng = np.random.default_rng(8)
    features = jnp.asarray(rng.normal(size=(2, 6, 6, 2)), jnp.float32)
    # Different grid sizes per image, so the batched sample loop runs past one image's grid.
    boxes = jnp.asarray([[[0.0, 0.0, 24.0, 24.0]], [[4.0, 4.0, 9.0, 10.0]]], jnp.float32)

    def objective(f, b):
        pooled = roi_align(f, b, output_size=(2, 2), spatial_scale=0.25, sampling_ratio=0)
        return jnp.sum(pooled * jnp.arange(8.0).reshape(2, 2, 2))

    grad = jax.jit(jax.grad(objective))
    batched = jax.jit(jax.vmap(jax.grad(objective)))(features, boxes)
    for image in range(2):
        np.testing.assert_allclose(batched[image], grad(features[image], boxes[image]), rtol=1e-6)
    summed = jax.jit(jax.grad(lambda f: jax.vmap(objective)(f, boxes).sum()))(features)
    np.testing.assert_allclose(summed, batched, rtol=1e-6)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
def test_multilevel_roi_align_gradient_matches_reference_impulse_responses(
    sampling_ratio, aligned
):
    # The Faster R-CNN path: boxes on two levels, some partly outside the image, and padding rows
    # of zeros as `sample_rois` pads, all with a nonzero cotangent.
    rng = np.random.default_rng(9 + sampling_ratio + 10 * aligned)
    maps = [rng.normal(size=(8, 8, 2)), rng.normal(size=(4, 4, 2))]  # strides 4 and 8
    boxes = np.concatenate(
        [
            random_boxes(rng, 4, (32, 32), margin=6.0),  # small: level 2
            [[-4.0, 2.0, 36.0, 30.0], [8.0, -6.0, 40.0, 38.0]],  # over 32 px: level 3
            np.zeros((2, 4)),
        ]
    ).astype(np.float32)
    weights = rng.normal(size=(8, 2, 3, 2))
    kwargs = {
        "min_level": 2,
        "max_level": 3,
        "canonical_size": 16.0,
        "canonical_level": 2,
        "output_size": (2, 3),
        "sampling_ratio": sampling_ratio,
        "aligned": aligned,
    }

    def objective(features):
        return jnp.sum(multilevel_roi_align(features, boxes, **kwargs) * weights)

    grad = jax.jit(jax.grad(objective))([jnp.asarray(m, jnp.float32) for m in maps])
    level = np.asarray(
        assign_boxes_to_levels(
            boxes, min_level=2, max_level=3, canonical_size=16.0, canonical_level=2
        )
    )
    np.testing.assert_array_equal(level[4:], [3, 3, 2, 2])
    for index, feature in enumerate(maps):
        on_level = level == 2 + index
        want = np.zeros_like(feature)
        for cell in np.ndindex(feature.shape):
            impulse = np.zeros_like(feature)
            impulse[cell] = 1.0
            pooled = numpy_roi_align(
                impulse, boxes[on_level], (2, 3), 2.0 ** -(2 + index), sampling_ratio, aligned
            )
            want[cell] = np.sum(pooled * weights[on_level])
        np.testing.assert_allclose(grad[index], want, rtol=1e-4, atol=1e-5)
        assert np.abs(want).sum() > 0
