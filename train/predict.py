"""Detections on a folder of images with a trained workdir: COCO results JSON and annotated PNGs.

  python -m train.predict --workdir runs/shapes_retinanet --images photos/ --output predictions/

The detector, its input size and the class names come from the workdir (`config.json`,
`dataset_info.json` and the latest checkpoint, or `--step`). Every image in `--images` and its
subfolders (JPEG, PNG, BMP, GIF, WebP) is preprocessed as the evaluation data is: resized to fit
the config's `dataset.image_size` keeping its aspect ratio, normalized and padded. `--output`
receives:

  results.json    COCO results, [{"image_id", "category_id", "bbox": [x, y, width, height],
                  "score"}], in the original pixels of each image: every detection the detector
                  returns (score above the config's `model.postprocess.score_threshold`)
  images.json     {"images": [{"id", "file_name", "width", "height"}], "categories": [{"id",
                  "name"}]}: which file each image_id is (ids count from 1 in sorted file order)
  <file>.png      each image with its detections scoring at least `--draw_threshold`, at the same
                  relative path with a .png suffix
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from PIL import Image

from focaljax.data import preprocess_image, to_original_pixels
from focaljax.errors import ConfigError, MissingFileError
from focaljax.evaluation.coco import detections_to_coco
from focaljax.evaluation.visualize import draw_detections
from train import cli, compilation
from train import workdir as workdir_lib

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def find_images(folder: str | os.PathLike) -> list[str]:
    """Paths of the images under `folder`, relative to it, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"{folder} is not a folder")
    paths = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise MissingFileError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def _preprocess(image: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The evaluation data's preprocessing (`focaljax.data.preprocess_image`), in NumPy."""
    inputs, scale = preprocess_image(image, image_size)
    return inputs.numpy(), float(scale)


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def predict(
    workdir: str,
    image_dir: str,
    output_dir: str,
    *,
    step: int | None = None,
    batch_size: int = 8,
    draw_threshold: float = 0.3,
) -> dict[str, Any]:
    """Runs the detector of `workdir` on every image of `image_dir`; writes the files of the
    module docstring to `output_dir` and returns `{"results": [...], "images": [...]}`."""
    if batch_size < 1:
        raise ConfigError(f"batch_size is {batch_size}, expected >= 1")
    if Path(output_dir).resolve() == Path(image_dir).resolve():
        raise ConfigError("--output is the --images folder; the annotated PNGs would overwrite it")
    run = workdir_lib.load_trained(workdir, step)
    config, info, detector = run.config, run.info, run.detector
    image_size = tuple(int(s) for s in config.dataset.image_size)
    names = find_images(image_dir)
    drawings = [str(Path(name).with_suffix(".png")) for name in names]
    clashes = sorted({d for d in drawings if drawings.count(d) > 1})
    if clashes:
        raise ConfigError(f"several images would be drawn to each of {clashes}; rename them")


    def detect(variables, images):
        batch = {"image": images}
        outputs, _ = detector.apply(variables, batch, train=False)
        return detector.postprocess(outputs, batch)

    options = compilation.compiler_options(config)
    detect = compilation.with_compiler_options(jax.jit(detect), options)

    results, images = [], []
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        originals = [_load_rgb(Path(image_dir) / name) for name in chunk]
        inputs, scales = zip(*(_preprocess(image, image_size) for image in originals), strict=True)
        # Padding to a full batch keeps one compiled shape.
        inputs = np.stack(inputs + (np.zeros_like(inputs[0]),) * (batch_size - len(chunk)))
        detections = jax.device_get(detect(run.variables, jnp.asarray(inputs)))
        detections = {k: v[: len(chunk)] for k, v in detections.items()}
        boxes = to_original_pixels(
            detections["boxes"], np.asarray(scales, np.float32),
            np.array([image.shape[:2] for image in originals]),
        )
        image_ids = np.arange(start + 1, start + len(chunk) + 1)
        results += detections_to_coco(
            image_ids, boxes, detections["scores"], detections["classes"],
            detections["num_valid"], info.category_ids,
        )
        for i, (name, original) in enumerate(zip(chunk, originals, strict=True)):
            images.append({"id": int(image_ids[i]), "file_name": name,
                           "width": original.shape[1], "height": original.shape[0]})
            count = int(detections["num_valid"][i])
            drawing = draw_detections(
                original, boxes[i, :count], detections["classes"][i, :count],
                detections["scores"][i, :count], info.class_names,
                score_threshold=draw_threshold,
            )
            path = Path(output_dir) / Path(name).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(drawing).save(path)

    categories = [
        {"id": int(c), "name": n} for c, n in zip(info.category_ids, info.class_names, strict=True)
    ]
    with open(Path(output_dir) / "results.json", "w") as f:
        json.dump(results, f)
    with open(Path(output_dir) / "images.json", "w") as f:
        json.dump({"images": images, "categories": categories}, f, indent=1)
    print(
        f"{len(results)} detections on {len(images)} images (checkpoint at step {run.step} of "
        f"{workdir}) -> {output_dir}"
    )
    return {"results": results, "images": images}


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined only when run as a program: the `train` entry points
    share absl's global flag registry, and `predict()` is also imported as a library."""
    flags.DEFINE_string("workdir", None, "The workdir of a `python -m train` run.")
    flags.DEFINE_string("images", None, "Folder of images (searched recursively).")
    flags.DEFINE_string("output", None, "Folder for results.json, images.json and annotated PNGs.")
    flags.DEFINE_integer("step", None, "Checkpoint step to use; default the latest.")
    flags.DEFINE_integer("batch_size", 8, "Images per forward pass.")
    flags.DEFINE_float("draw_threshold", 0.3, "Least score of a drawn detection.")
    flags.mark_flags_as_required(["workdir", "images", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_libraries()  # Keep orbax's restore logs out of sight.
    try:
        predict(
            FLAGS.workdir, FLAGS.images, FLAGS.output, step=FLAGS.step,
            batch_size=FLAGS.batch_size, draw_threshold=FLAGS.draw_threshold,
        )
    except cli.ConfigError as error:  # A bug's exception keeps its traceback.
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
