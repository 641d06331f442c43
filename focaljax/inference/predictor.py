"""The `Predictor`: a trained detector run on NumPy images from Python, whole or in tiles.

    predictor = focaljax.Predictor.from_workdir("runs/shapes_retinanet")
    detections = predictor(image)          # uint8 RGB [height, width, 3], any size
    detections.boxes, detections.scores, detections.classes, detections.class_names
    tiled = predictor.predict_tiles(orthomosaic, overlap=0.25, iou_threshold=0.5)

Each image is preprocessed as the evaluation data is (`focaljax.data.preprocess_image`: resized
to fit the config's `dataset.image_size` keeping its aspect ratio, normalized, padded bottom and
right), so every input has the one shape of that size; the images go through the detector in
batches padded to a few fixed sizes (1, 2, 4 ... up to `batch_size`), each compiled once. The
boxes come back in the image's own pixels.

Tiled prediction (`predict_tiles`, deepforest's `predict_tile` for orthomosaics): an image larger
than a tile is cut into overlapping tiles of `tile_size` (default the input size, so that a tile
is seen at its native resolution), each predicted as an image, its boxes shifted back to the
image's pixels, and the boxes of all tiles merged by class-wise greedy NMS
(`focaljax.ops.batched_non_max_suppression`). An object cut by a tile's edge is whole in the
neighbouring tile when the overlap is larger than the object; its cut part is then a smaller box
inside the whole one, which the merge removes when their IoU exceeds `iou_threshold` (a lower
threshold, deepforest's 0.15, removes more of them, and more of the distinct objects that touch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from focaljax.data import preprocess_image, to_original_pixels
from focaljax.detectors import Detector
from focaljax.errors import ConfigError, MissingFileError
from focaljax.inference import workdir as workdir_lib
from focaljax.ops.nms import batched_non_max_suppression

DETECTION_KEYS = ("boxes", "scores", "classes", "num_valid")
_EXPECTED_IMAGE = "a NumPy uint8 RGB array of shape [height, width, 3]"


@dataclasses.dataclass(frozen=True)
class Detections:
    """The detections of one image, best first.

    Attributes:
      boxes: float32 `[n, 4]`, xyxy in the image's own pixels.
      scores: float32 `[n]`.
      classes: int32 `[n]`, contiguous class ids `0..num_classes-1`.
      class_names: the name of each detection's class, `n` strings.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.scores)


def check_image(image: Any, what: str = "image") -> np.ndarray:
    """`image` if it is a uint8 RGB array `[height, width, 3]` with pixels; otherwise a one-line
    ConfigError naming what is wrong with `what` and what was expected."""
    if not isinstance(image, np.ndarray):
        raise ConfigError(f"{what} is a {type(image).__name__}, expected {_EXPECTED_IMAGE}")
    if image.dtype != np.uint8:
        raise ConfigError(f"{what} has dtype {image.dtype}, expected {_EXPECTED_IMAGE}")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = (" (convert grayscale or RGBA first, e.g. PIL's image.convert('RGB'))"
                if image.ndim in (2, 3) else "")
        raise ConfigError(f"{what} has shape {image.shape}, expected {_EXPECTED_IMAGE}{hint}")
    if min(image.shape[:2]) < 1:
        raise ConfigError(f"{what} has shape {image.shape} and no pixels, expected "
                          f"{_EXPECTED_IMAGE} with height and width >= 1")
    return image


def batch_sizes(batch_size: int) -> tuple[int, ...]:
    """The batch sizes a `Predictor` compiles: the powers of 2 below `batch_size`, and it; a batch
    of images is padded to the smallest that holds it, so that shapes repeat.

    Examples:
      >>> batch_sizes(8), batch_sizes(6), batch_sizes(1)
      ((1, 2, 4, 8), (1, 2, 4, 6), (1,))
    """
    return tuple(2**k for k in range(math.ceil(math.log2(batch_size)))) + (batch_size,)


def tile_windows(
    image_size: Sequence[int], tile_size: Sequence[int], *, overlap: float
) -> list[tuple[int, int, int, int]]:
    """The `(top, left, bottom, right)` pixel windows that cover an image of `image_size`
    `(height, width)` with tiles of `tile_size` overlapping by at least `overlap` (a fraction of
    the tile) along each axis; the last tile of a row or column ends at the image's edge, and an
    image no larger than a tile along an axis is one tile of its own extent there.

    Examples:
      >>> tile_windows((100, 150), (64, 64), overlap=0.25)
      [(0, 0, 64, 64), (0, 48, 64, 112), (0, 86, 64, 150), (36, 0, 100, 64), (36, 48, 100, 112), (36, 86, 100, 150)]
    """  # noqa: E501

    def starts(length: int, tile: int) -> list[int]:
        if length <= tile:
            return [0]
        stride = max(1, math.floor(tile * (1.0 - overlap)))
        return list(range(0, length - tile, stride)) + [length - tile]

    (height, width), (tile_h, tile_w) = image_size, tile_size
    return [
        (top, left, min(top + tile_h, height), min(left + tile_w, width))
        for top in starts(height, tile_h)
        for left in starts(width, tile_w)
    ]


@functools.partial(jax.jit, static_argnames=("iou_threshold",))
def _class_wise_nms(boxes, scores, classes, valid, *, iou_threshold):
    return batched_non_max_suppression(
        boxes, scores, classes, iou_threshold=iou_threshold, max_output_size=scores.shape[0],
        valid=valid,
    )


class Predictor:
    """A detector and its variables, run on uint8 RGB images of any size; see the module
    docstring. Build one with `from_workdir` (a `python -m train` run) or `from_weights`.

    Attributes:
      detector: the `focaljax.detectors.Detector`.
      variables: its variables (`{"params": ..., **model_state}`), on the first local device.
      image_size: `(height, width)` of its inputs, the config's `dataset.image_size`.
      class_names: the name of each class id.
      category_ids: the COCO category id of each class id (the training data set's), or None.
      step: the training step of the checkpoint, or None.
      batch_size: the most images per forward pass.
    """

    def __init__(
        self,
        detector: Detector,
        variables: Mapping[str, Any],
        *,
        image_size: Sequence[int],
        class_names: Sequence[str],
        category_ids: Sequence[int] | None = None,
        step: int | None = None,
        batch_size: int = 8,
        compiler_options: Mapping[str, Any] | None = None,
    ):
        """See the class docstring; `compiler_options` are XLA options for the compiled forward
        passes (the trainer's `config.compiler_options`); options the installed XLA rejects are
        warned about and left out."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size!r}, expected an int >= 1")
        self.detector = detector
        self.variables = jax.device_put(dict(variables), jax.local_devices()[0])
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.class_names = tuple(class_names)
        self.category_ids = None if category_ids is None else tuple(category_ids)
        self.step = step
        self.batch_size = batch_size
        self._compiler_options = dict(compiler_options or {})
        self._compiled: dict[int, Any] = {}

    @classmethod
    def from_workdir(
        cls,
        workdir: str | os.PathLike,
        step: int | None = None,
        *,
        batch_size: int = 8,
        compiler_options: Mapping[str, Any] | None = None,
    ) -> Predictor:
        """The detector of a `python -m train` run at the checkpoint of `step` (default: the
        latest), with the class names of its data set.

        Raises:
          MissingFileError: for a folder without the run's files or without that checkpoint.
        """
        run = workdir_lib.load_trained(os.fspath(workdir), step)
        return cls(
            run.detector, run.variables, image_size=workdir_lib.image_size_of(run.config),
            class_names=run.info.class_names, category_ids=run.info.category_ids, step=run.step,
            batch_size=batch_size, compiler_options=compiler_options,
        )

    @classmethod
    def from_weights(
        cls,
        weights: str | os.PathLike | Mapping[str, Any],
        config: ml_collections.ConfigDict,
        class_names: Sequence[str],
        *,
        batch_size: int = 8,
        compiler_options: Mapping[str, Any] | None = None,
    ) -> Predictor:
        """The detector of `config` (a run's config: its `model` and `dataset.image_size`) for
        `class_names`, with `weights`: its variables (`{"params": ..., **model_state}`, e.g. a
        converted model-zoo file's), or the path of a file of them in Flax's msgpack format
        (`flax.serialization.msgpack_serialize(variables)`).

        Raises:
          ConfigError: for weights that do not fit the detector (the message names the first
            variable that differs), or a config the detector rejects.
          MissingFileError: for a weights path that is no file.
        """
        if isinstance(weights, (str, os.PathLike)):
            if not os.path.isfile(weights):
                raise MissingFileError(f"weights file {os.fspath(weights)} does not exist")
            with open(weights, "rb") as f:
                weights = flax.serialization.msgpack_restore(f.read())
        detector = workdir_lib.build_detector(config, len(class_names))
        image_size = workdir_lib.image_size_of(config)
        expected = jax.eval_shape(
            detector.init, jax.random.key(0),
            {"image": jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)},
        )
        _check_fits(weights, expected)
        return cls(
            detector, weights, image_size=image_size, class_names=class_names,
            batch_size=batch_size, compiler_options=compiler_options,
        )

    # ------------------------------------------------------------------------------------------
    # Whole images.

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> Detections | list[Detections]:
        """`predict(images)`."""
        return self.predict(images)

    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> Detections | list[Detections]:
        """The detections of one image (uint8 RGB `[height, width, 3]`, any size), or a list of
        them for a list of images (or a uint8 array `[N, height, width, 3]`).

        Raises:
          ConfigError: for an input that is not such an image, naming which and what it is.
        """
        if isinstance(images, np.ndarray) and images.ndim != 4:
            return self._predict_checked([check_image(images)])[0]
        if isinstance(images, np.ndarray):
            images = list(images)
        if not isinstance(images, (list, tuple)):
            raise ConfigError(f"images is a {type(images).__name__}, expected {_EXPECTED_IMAGE} "
                              "or a list of them")
        return self._predict_checked(
            [check_image(image, f"image {i}") for i, image in enumerate(images)]
        )

    def _predict_checked(self, images: list[np.ndarray]) -> list[Detections]:
        detections = []
        for start in range(0, len(images), self.batch_size):
            detections += self._predict_batch(images[start : start + self.batch_size])
        return detections

    def _predict_batch(self, images: list[np.ndarray]) -> list[Detections]:
        inputs, scales = [], []
        for image in images:
            preprocessed, scale = preprocess_image(image, self.image_size)
            inputs.append(preprocessed.numpy())
            scales.append(float(scale))
        size = min(s for s in batch_sizes(self.batch_size) if s >= len(images))
        inputs += [np.zeros_like(inputs[0])] * (size - len(images))
        outputs = jax.device_get(self._compiled_forward(size)(self.variables, np.stack(inputs)))
        outputs = {k: v[: len(images)] for k, v in outputs.items()}
        boxes = to_original_pixels(
            outputs["boxes"], np.asarray(scales, np.float32),
            np.array([image.shape[:2] for image in images]),
        )
        return [
            self._detections(boxes[i, :n], outputs["scores"][i, :n], outputs["classes"][i, :n])
            for i, n in enumerate(outputs["num_valid"])
        ]

    def _detections(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> Detections:
        return Detections(
            boxes=np.asarray(boxes, np.float32), scores=np.asarray(scores, np.float32),
            classes=np.asarray(classes, np.int32),
            class_names=tuple(self.class_names[c] for c in classes),
        )

    def forward(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
        """The detector on preprocessed images (float32 `[B, height, width, 3]`, as
        `preprocess_image` gives them): `{"boxes" [B, K, 4] in input pixels, "scores" [B, K],
        "classes" [B, K], "num_valid" [B]}`. Pure and jittable; what is compiled and exported."""
        batch = {"image": images}
        outputs, _ = self.detector.apply(variables, batch, train=False)
        detections = self.detector.postprocess(outputs, batch)
        return {key: detections[key] for key in DETECTION_KEYS}

    def _compiled_forward(self, batch_size: int) -> Any:
        if batch_size not in self._compiled:
            images = jax.ShapeDtypeStruct((batch_size, *self.image_size, 3), jnp.float32)
            lowered = jax.jit(self.forward).lower(self.variables, images)
            try:
                compiled = lowered.compile(compiler_options=self._compiler_options or None)
            except jax.errors.JaxRuntimeError as error:
                warnings.warn(f"this XLA rejects compiler options {self._compiler_options} "
                              f"({error}); compiling without them", stacklevel=3)
                compiled = lowered.compile()
            self._compiled[batch_size] = compiled
        return self._compiled[batch_size]

    @property
    def compiled_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes compiled so far (each once)."""
        return tuple(sorted(self._compiled))

    # ------------------------------------------------------------------------------------------
    # Tiles.

    def predict_tiles(
        self,
        image: np.ndarray,
        *,
        tile_size: int | Sequence[int] | None = None,
        overlap: float = 0.25,
        iou_threshold: float = 0.5,
    ) -> Detections:
        """The detections of a large `image` (uint8 RGB `[height, width, 3]`) from overlapping
        tiles (`tile_windows`) of `tile_size` (`(height, width)` or one int; default the input
        size, at which a tile is not resized), overlapping by `overlap` (a fraction of the tile,
        in [0, 1)), their boxes merged by class-wise NMS at `iou_threshold`. An image no larger
        than one tile is predicted whole, as `predict` does.

        Raises:
          ConfigError: for an input that is not such an image, or parameters out of range.
        """
        check_image(image)
        if tile_size is None:
            tile_size = self.image_size
        elif isinstance(tile_size, int):
            tile_size = (tile_size, tile_size)
        if len(tile_size) != 2 or min(tile_size) < 1:
            raise ConfigError(f"tile_size is {tile_size}, expected (height, width) of ints >= 1")
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"overlap is {overlap}, expected a fraction of the tile in [0, 1)")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold is {iou_threshold}, expected a value in [0, 1]")
        windows = tile_windows(image.shape[:2], tile_size, overlap=overlap)
        tiles = self._predict_checked([image[t:b, l:r] for t, l, b, r in windows])
        if len(windows) == 1:
            return tiles[0]
        boxes = np.concatenate([
            d.boxes + np.array([left, top, left, top], np.float32)
            for d, (top, left, _, _) in zip(tiles, windows, strict=True)
        ])
        scores = np.concatenate([d.scores for d in tiles])
        classes = np.concatenate([d.classes for d in tiles])
        # Padded to a power of 2 so that the merge compiles for a few sizes only.
        size = max(64, 2 ** math.ceil(math.log2(max(len(scores), 1))))
        pad = size - len(scores)
        keep = np.asarray(_class_wise_nms(
            np.pad(boxes, [(0, pad), (0, 0)]), np.pad(scores, [(0, pad)]),
            np.pad(classes, [(0, pad)]), np.arange(size) < len(scores),
            iou_threshold=float(iou_threshold),
        ))
        keep = keep[keep >= 0]
        return self._detections(boxes[keep], scores[keep], classes[keep])


def _check_fits(variables: Any, expected: Any) -> None:
    """Raises ConfigError unless `variables` has the variables of `expected` (a tree of
    `ShapeDtypeStruct`s), each of its shape."""
    if not isinstance(variables, Mapping):
        raise ConfigError(f"weights are a {type(variables).__name__}, expected the detector's "
                          "variables {'params': ..., ...} or the path of a msgpack file of them")

    def flat(tree: Any) -> dict[str, Any]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}

    given, wanted = flat(variables), flat(expected)
    missing, extra = sorted(set(wanted) - set(given)), sorted(set(given) - set(wanted))
    if missing:
        raise ConfigError(f"weights lack {missing[0]} ({len(missing)} variables missing), which "
                          "the detector of the config has")
    if extra:
        raise ConfigError(f"weights have {extra[0]} ({len(extra)} variables more), which the "
                          "detector of the config lacks")
    for name, leaf in wanted.items():
        shape = tuple(np.shape(given[name]))
        if shape != tuple(leaf.shape):
            raise ConfigError(f"weights' {name} has shape {shape}, expected {tuple(leaf.shape)} "
                              "for the detector of the config")
