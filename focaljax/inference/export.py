"""A `Predictor`'s detector for serving without focaljax: a TensorFlow SavedModel (through
`jax2tf`, native serialization) and the `jax.export` serialized form.

`export(predictor, output_dir)` writes

  saved_model/1/           the SavedModel, version 1 of a TF Serving model base path
  detector.jax_exported    `jax.export.Exported.serialize()` bytes, for JAX servers
  export_info.json         input size, class names, COCO category ids, checkpoint step, platforms,
                           and the signatures below in words

The SavedModel's `serving_default` signature:

  in   images          uint8 [N, height, width, 3]: RGB images of any one size (a request's
                       images share it; send differently sized images in separate requests)
  out  boxes           float32 [N, K, 4]: xyxy in the pixels of the images as sent
       scores          float32 [N, K]
       classes         int32 [N, K]: class ids, named by export_info.json's class_names (and the
                       SavedModel's `class_names` attribute)
       num_detections  int32 [N]: the first num_detections of the K rows of each image are
                       detections, the rest padding

It does the preprocessing itself, with the ops of `focaljax.data.preprocess_image`: each image is
resized to fit the input size keeping its aspect ratio (bilinear), normalized and padded, exactly
as the evaluation data and the `Predictor`, and its boxes are mapped back (divided by the scale,
clipped to the image), so a client sends the raw pixels. The images of a request go through the
detector one at a time (`tf.map_fn`; the jax2tf-converted detector has a batch of one: the
StableHLO of a symbolic batch size holds dynamic shapes that TensorFlow's XlaCallModule does not
run). The variables are SavedModel variables, not constants.

`detector.jax_exported` takes what `preprocess_image` gives, float32 [b, height, width, 3] at the
input size (b any), and returns the detector's `{"boxes" (in input pixels: divide by the scale),
"scores", "classes", "num_valid"}`; the variables are inside:

    exported = jax.export.deserialize(open("detector.jax_exported", "rb").read())
    inputs, scale = focaljax.data.preprocess_image(image, input_size)
    detections = exported.call(inputs.numpy()[None])

Both are lowered for the platforms asked (default CPU and CUDA GPUs).

Serving with TF Serving (the CPU image; `tensorflow/serving:latest-gpu` with `--gpus all` for a
GPU), then a REST request:

    docker run --rm -p 8501:8501 \\
      -v "$PWD/exported/saved_model:/models/detector" -e MODEL_NAME=detector \\
      tensorflow/serving
    curl -d '{"instances": [[[[0, 0, 0], ...]]]}' \\
      http://localhost:8501/v1/models/detector:predict

(`instances` is a list of [height, width, 3] pixel arrays; the gRPC API at port 8500 takes a
uint8 tensor without the JSON overhead.)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import tensorflow as tf
from jax.experimental import jax2tf

from focaljax.data import preprocess_image
from focaljax.errors import ConfigError
from focaljax.inference.predictor import Predictor

SAVED_MODEL_DIR = os.path.join("saved_model", "1")
JAX_EXPORTED_FILE = "detector.jax_exported"
EXPORT_INFO_FILE = "export_info.json"
PLATFORMS = ("cpu", "cuda")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


@contextlib.contextmanager
def _stablehlo_that_tensorflow_reads() -> Iterator[None]:
    """While open, JAX serializes StableHLO in a version that the installed TensorFlow reads.

    JAX writes the StableHLO of 4 weeks before its own (1.15.0 for jaxlib 0.10.2), which
    TensorFlow's XlaCallModule reads only if its StableHLO is that new (TF 2.21: 1.13.7, and
    "failed to deserialize portable artifact" otherwise). JAX can write older versions (its
    window is 12 weeks, 1.13.7 here); jax2tf has no option for it, so JAX's serializer is
    wrapped for the conversion to target the older of the two.
    """
    from jax._src import xla_bridge
    from jax._src.export import _export
    from jax.extend import mlir
    from jaxlib.mlir.dialects import stablehlo
    from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo

    jax_target = stablehlo.get_version_from_compatibility_requirement(
        stablehlo.StablehloCompatibilityRequirement.WEEK_4
    )
    target = stablehlo.get_smaller_version(jax_target, tf_stablehlo.get_current_version())
    if target == jax_target:
        yield
        return
    original = _export._module_to_bytecode

    def to_bytecode(module: Any) -> bytes:
        return mlir.serialize_portable_artifact(
            module, target, xla_bridge.get_backend().serialize_with_sdy
        )

    _export._module_to_bytecode = to_bytecode
    try:
        yield
    finally:
        _export._module_to_bytecode = original


class _Serving(tf.Module):
    """The SavedModel's object: the detector's variables, its class names and `serve`."""

    def __init__(self, predictor: Predictor, platforms: Sequence[str]):
        super().__init__()
        image_size = predictor.image_size
        self.detector_variables = tf.nest.map_structure(
            tf.Variable, jax.device_get(predictor.variables)
        )
        # A variable, as the SavedModel keeps no constant attributes.
        self.class_names = tf.Variable(list(predictor.class_names), trainable=False)
        forward = jax2tf.convert(
            predictor.forward, with_gradient=False,
            native_serialization_platforms=tuple(platforms),
        )

        def detect_one(image: tf.Tensor) -> dict[str, tf.Tensor]:
            inputs, scale = preprocess_image(image, image_size)
            detections = forward(self.detector_variables, inputs[None])
            height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
            # As focaljax.data.to_original_pixels.
            boxes = tf.clip_by_value(
                detections["boxes"][0] / scale, 0.0, tf.stack([width, height, width, height])
            )
            return {"boxes": boxes, "scores": detections["scores"][0],
                    "classes": detections["classes"][0],
                    "num_detections": detections["num_valid"][0]}

        @tf.function(
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
            autograph=False,
        )
        def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
            return tf.map_fn(detect_one, images, fn_output_signature={
                "boxes": tf.float32, "scores": tf.float32, "classes": tf.int32,
                "num_detections": tf.int32,
            })

        self.serve = serve


def export_saved_model(
    predictor: Predictor, path: str | os.PathLike, *, platforms: Sequence[str] = PLATFORMS
) -> None:
    """Writes `predictor`'s detector as a SavedModel to `path`, with the `serving_default`
    signature of the module docstring (uint8 images in, boxes in their pixels out)."""
    module = _Serving(predictor, platforms)
    with _stablehlo_that_tensorflow_reads():
        # Tracing the signature converts the detector.
        signature = module.serve.get_concrete_function()
        tf.saved_model.save(module, os.fspath(path), signatures={"serving_default": signature})


def export_jax(
    predictor: Predictor, *, platforms: Sequence[str] = PLATFORMS
) -> jax.export.Exported:
    """`predictor`'s detector with its variables inside, for float32 inputs
    `[b, height, width, 3]` (any b) as `preprocess_image` gives them; see the module docstring.
    `.serialize()` gives the bytes of `detector.jax_exported`."""
    variables = predictor.variables
    height, width = predictor.image_size
    images = jax.ShapeDtypeStruct(
        jax.export.symbolic_shape(f"b, {height}, {width}, 3"), jnp.float32
    )
    return jax.export.export(
        jax.jit(lambda images: predictor.forward(variables, images)), platforms=tuple(platforms)
    )(images)


def export(
    predictor: Predictor, output_dir: str | os.PathLike, *, platforms: Sequence[str] = PLATFORMS
) -> dict[str, str]:
    """Writes the files of the module docstring to `output_dir`, lowered for `platforms` (of
    `jax.export`'s names: "cpu", "cuda", "rocm", "tpu"); returns their paths by name
    (`saved_model`, `jax_exported`, `export_info`).

    Raises:
      ConfigError: for an unknown platform.
    """
    unknown = sorted(set(platforms) - set(KNOWN_PLATFORMS))
    if unknown or not platforms:
        raise ConfigError(f"platforms {list(platforms)}: expected some of {list(KNOWN_PLATFORMS)}")
    paths = {
        "saved_model": os.path.join(output_dir, SAVED_MODEL_DIR),
        "jax_exported": os.path.join(output_dir, JAX_EXPORTED_FILE),
        "export_info": os.path.join(output_dir, EXPORT_INFO_FILE),
    }
    os.makedirs(output_dir, exist_ok=True)
    export_saved_model(predictor, paths["saved_model"], platforms=platforms)
    with open(paths["jax_exported"], "wb") as f:
        f.write(export_jax(predictor, platforms=platforms).serialize())
    info = {
        "input_size": list(predictor.image_size),
        "class_names": list(predictor.class_names),
        "category_ids": None if predictor.category_ids is None else list(predictor.category_ids),
        "step": predictor.step,
        "platforms": list(platforms),
        "saved_model": {
            "signature": "serving_default",
            "inputs": {"images": "uint8 [N, height, width, 3], any one size; resized inside"},
            "outputs": {"boxes": "float32 [N, K, 4] xyxy in the images' pixels",
                        "scores": "float32 [N, K]", "classes": "int32 [N, K]",
                        "num_detections": "int32 [N]: the valid leading rows of K"},
        },
        "jax_exported": {
            "inputs": "float32 [b, height, width, 3] at input_size, as "
                      "focaljax.data.preprocess_image gives them",
            "outputs": "{boxes [b, K, 4] in input pixels (divide by the scale), scores [b, K], "
                       "classes [b, K], num_valid [b]}",
        },
    }
    with open(paths["export_info"], "w") as f:
        json.dump(info, f, indent=2)
    return paths
