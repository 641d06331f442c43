"""`python -m train.export`: the SavedModel, run by TensorFlow alone in a process without JAX or
focaljax, and the `jax.export` form give the `Predictor`'s detections."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import focaljax
from focaljax import data as data_lib
from focaljax.errors import ConfigError
from train import export
from train import workdir as workdir_lib

# Serves the SavedModel's signature on the requests of `requests.npz` (each a uint8 batch of one
# size) with TensorFlow only, and saves what it returns. JAX, Flax and focaljax are unimportable
# there, as on a server without them (TensorFlow itself imports JAX when it can: tf.lite).
SERVE_WITH_TENSORFLOW_ALONE = """
import sys


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax", "focaljax"):
            raise ModuleNotFoundError(f"No module named {name!r} on this server")


sys.meta_path.insert(0, NotInstalled())

import numpy as np
import tensorflow as tf

saved_model, requests, answers = sys.argv[1:]
model = tf.saved_model.load(saved_model)
serve = model.signatures["serving_default"]
out = {"class_names": np.array([n.decode() for n in model.class_names.numpy()])}
with np.load(requests) as files:
    for name in files.files:
        for key, value in serve(images=tf.constant(files[name])).items():
            out[f"{name}/{key}"] = value.numpy()
loaded = [m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "focaljax")]
assert not loaded, loaded
np.savez(answers, **out)
"""


def test_the_saved_model_run_by_tensorflow_alone_and_the_jax_export_give_the_predictions(
    workdir_scoring_everything, tmp_path
):
    workdir, output = workdir_scoring_everything, str(tmp_path / "exported")
    paths = export.export(workdir, output, platforms=("cpu",))

    predictor = focaljax.Predictor.from_workdir(workdir)
    dataset = data_lib.build(workdir_lib.read_run_info(workdir)[0].dataset)
    small = [data_lib.generate_example(dataset.builder.builder_config, "validation", i)["image"]
             for i in range(2)]
    # Two requests: two 64x64 images (the input size), one 96x128 image (resized to 48x64).
    requests = {"small": np.stack(small),
                "large": small[0].repeat(2, axis=1).repeat(3, axis=0)[None, :96]}
    np.savez(tmp_path / "requests.npz", **requests)
    script = tmp_path / "serve.py"
    script.write_text(SERVE_WITH_TENSORFLOW_ALONE)
    served = subprocess.run(
        [sys.executable, str(script), paths["saved_model"], str(tmp_path / "requests.npz"),
         str(tmp_path / "answers.npz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": "", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert served.returncode == 0, served.stderr[-3000:]
    answers = dict(np.load(tmp_path / "answers.npz"))

    assert tuple(answers["class_names"]) == predictor.class_names
    for name, images in requests.items():
        for i, expected in enumerate(predictor.predict(list(images))):
            count = answers[f"{name}/num_detections"][i]
            assert count == len(expected) == 20
            np.testing.assert_allclose(answers[f"{name}/boxes"][i, :count], expected.boxes,
                                       atol=1e-3)
            np.testing.assert_allclose(answers[f"{name}/scores"][i, :count], expected.scores,
                                       rtol=1e-5)
            np.testing.assert_array_equal(answers[f"{name}/classes"][i, :count],
                                          expected.classes)

    with open(paths["jax_exported"], "rb") as f:
        exported = jax.export.deserialize(f.read())
    image = requests["large"][0]
    inputs, scale = data_lib.preprocess_image(image, predictor.image_size)
    detections = jax.device_get(exported.call(inputs.numpy()[None]))
    boxes = data_lib.to_original_pixels(detections["boxes"], np.array([scale], np.float32),
                                        np.array([image.shape[:2]]))
    (expected,) = predictor.predict(list(requests["large"]))
    assert detections["num_valid"][0] == len(expected)
    np.testing.assert_allclose(boxes[0, : len(expected)], expected.boxes, atol=1e-3)
    np.testing.assert_allclose(detections["scores"][0, : len(expected)], expected.scores,
                               rtol=1e-5)

    with open(paths["export_info"]) as f:
        info = json.load(f)
    assert info["input_size"] == [64, 64] and info["step"] == 4
    assert info["class_names"] == list(predictor.class_names)
    with pytest.raises(ConfigError, match="saved_model/1 exists"):
        export.export(workdir, output)
    with pytest.raises(ConfigError, match=r"platforms \['gpu'\]: expected some of"):
        export.export(workdir, str(tmp_path / "other"), platforms=("gpu",))
