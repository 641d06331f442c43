"""`python -m train.predict`: a trained workdir and a folder of images -> COCO results JSON and
annotated PNGs."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import focaljax
from focaljax import data as data_lib
from train import predict
from train import workdir as workdir_lib
from train.distributed import AXIS_NAME
from train.state import TrainState, replicate
from train.train import eval_step


def test_preprocess_image_equals_the_evaluation_pipeline(tmp_path):
    settings = {"image_size": (48, 64), "num_train": 1, "num_validation": 2, "seed": 5}
    builder = data_lib.Shapes(config=data_lib.shapes_config(**settings), data_dir=str(tmp_path))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    # 48x64 images into 96x96 inputs: scaled by 1.5 to 72x96, then padded.
    batch = next(data_lib.create_eval_iterator(
        builder, split="validation", image_size=(96, 96), max_boxes=4, per_device_batch_size=1
    ))
    for index in range(2):
        image = data_lib.generate_example(builder.builder_config, "validation", index)["image"]
        expected, scale = data_lib.preprocess_image(image, (96, 96))
        np.testing.assert_allclose(expected.numpy(), batch["image"][index, 0], atol=1e-5)
        assert scale == batch["scale"][index, 0] == 1.5


def test_the_predictor_of_a_workdir_gives_the_detections_of_the_evaluation(
    workdir_scoring_everything
):
    predictor = focaljax.Predictor.from_workdir(workdir_scoring_everything)
    config, info = workdir_lib.read_run_info(workdir_scoring_everything)
    assert predictor.class_names == info.class_names and predictor.step == 4
    # The trainer's evaluation: its pmapped `eval_step` on an evaluation batch, boxes mapped back
    # by the batch's scale.
    run = workdir_lib.load_trained(workdir_scoring_everything)
    params = run.variables["params"]
    state = TrainState(step=4, params=params, opt_state=None, loss_state={},
                       model_state={k: v for k, v in run.variables.items() if k != "params"})
    dataset = data_lib.build(config.dataset)
    batch = next(dataset.eval_iterator(config.eval_batch_size // jax.device_count()))
    evaluate = jax.pmap(functools.partial(eval_step, detector=run.detector), axis_name=AXIS_NAME)
    expected = jax.device_get(evaluate(replicate(state), batch))
    expected = {k: v.reshape((-1,) + v.shape[2:]) for k, v in expected.items()}
    images = [data_lib.generate_example(dataset.builder.builder_config, "validation", i)["image"]
              for i in range(len(expected["scores"]))]
    boxes = data_lib.to_original_pixels(
        expected["boxes"], batch["scale"].reshape(-1), np.array([i.shape[:2] for i in images])
    )

    detections = predictor.predict(images)

    for i, found in enumerate(detections):
        count = expected["num_valid"][i]
        assert len(found) == count == 20
        np.testing.assert_allclose(found.boxes, boxes[i, :count], atol=1e-3)
        np.testing.assert_allclose(found.scores, expected["scores"][i, :count], rtol=1e-5)
        np.testing.assert_array_equal(found.classes, expected["classes"][i, :count])
        assert found.class_names == tuple(info.class_names[c] for c in found.classes)
    # An image no larger than a tile is predicted whole (alone: a batch of one).
    tiled, whole = predictor.predict_tiles(images[0]), predictor.predict(images[0])
    np.testing.assert_array_equal(tiled.boxes, whole.boxes)
    np.testing.assert_array_equal(tiled.scores, whole.scores)
    np.testing.assert_allclose(whole.boxes, detections[0].boxes, atol=1e-3)


def test_predict_writes_coco_results_in_original_pixels_and_annotated_pngs(
    workdir_scoring_everything, tiny_data_dir, tmp_path
):
    dataset = data_lib.build(workdir_lib.read_run_info(workdir_scoring_everything)[0].dataset)
    small = data_lib.generate_example(dataset.builder.builder_config, "validation", 0)["image"]
    assert small.shape == (64, 64, 3)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(small).save(images / "a_small.png")
    # Twice the size, pixel-doubled: resizing it by 1/2 gives back the small image exactly, so
    # its detections must be the small image's, at twice the coordinates.
    Image.fromarray(small.repeat(2, axis=0).repeat(2, axis=1)).save(images / "sub" / "b_big.png")
    Image.fromarray(small[:40]).save(images / "c_wide.jpg", quality=95)
    output = tmp_path / "output"

    returned = predict.predict(
        workdir_scoring_everything, str(images), str(output), batch_size=2, draw_threshold=0.0
    )

    with open(output / "images.json") as f:
        listing = json.load(f)
    assert listing["images"] == [
        {"id": 1, "file_name": "a_small.png", "width": 64, "height": 64},
        {"id": 2, "file_name": "c_wide.jpg", "width": 64, "height": 40},
        {"id": 3, "file_name": "sub/b_big.png", "width": 128, "height": 128},
    ]
    assert [c["name"] for c in listing["categories"]] == list(dataset.info.class_names)
    with open(output / "results.json") as f:
        results = json.load(f)
    assert results == returned["results"]
    by_image = {i: [r for r in results if r["image_id"] == i] for i in (1, 2, 3)}
    assert all(len(rows) == 20 for rows in by_image.values())  # max_detections of the config.
    for image in listing["images"]:
        for row in by_image[image["id"]]:
            x, y, w, h = row["bbox"]
            assert 0 <= x <= x + w <= image["width"] + 1e-3
            assert 0 <= y <= y + h <= image["height"] + 1e-3
            assert row["category_id"] in dataset.info.category_ids
    small_rows, big_rows = by_image[1], by_image[3]
    np.testing.assert_allclose([r["score"] for r in big_rows], [r["score"] for r in small_rows],
                               rtol=1e-5)
    np.testing.assert_allclose([r["bbox"] for r in big_rows],
                               [np.multiply(r["bbox"], 2) for r in small_rows], atol=1e-3)

    for name, size in (("a_small.png", (64, 64)), ("c_wide.png", (64, 40)),
                       ("sub/b_big.png", (128, 128))):
        with Image.open(output / name) as drawing:
            assert drawing.size == size


def test_predict_refuses_to_write_into_the_image_folder(trained_run, tmp_path):
    with pytest.raises(ValueError, match="would overwrite"):
        predict.predict(trained_run[0], str(tmp_path), str(tmp_path))


def test_predict_says_what_a_workdir_lacks(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks .*config.json.*expected the workdir of a"):
        predict.predict(str(tmp_path), str(tmp_path / "images"), str(tmp_path / "out"))
