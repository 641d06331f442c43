"""Detections on a folder of images with a trained workdir: COCO results JSON and annotated PNGs;
a command over `focaljax.Predictor`, which does the same from Python (and tiled prediction).

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

import numpy as np
from absl import app, flags
from PIL import Image

from focaljax.errors import ConfigError, MissingFileError
from focaljax.evaluation.coco import detections_to_coco
from focaljax.evaluation.visualize import draw_detections
from focaljax.inference import Predictor
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
    config, _ = workdir_lib.read_run_info(workdir)
    predictor = Predictor.from_workdir(
        workdir, step, batch_size=batch_size,
        compiler_options=compilation.compiler_options(config),
    )
    names = find_images(image_dir)
    drawings = [str(Path(name).with_suffix(".png")) for name in names]
    clashes = sorted({d for d in drawings if drawings.count(d) > 1})
    if clashes:
        raise ConfigError(f"several images would be drawn to each of {clashes}; rename them")

    results, images = [], []
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        originals = [_load_rgb(Path(image_dir) / name) for name in chunk]
        for image_id, name, original, detections in zip(
            range(start + 1, start + len(chunk) + 1), chunk, originals,
            predictor.predict(originals), strict=True,
        ):
            results += detections_to_coco(
                [image_id], detections.boxes[None], detections.scores[None],
                detections.classes[None], [len(detections)], predictor.category_ids,
            )
            images.append({"id": image_id, "file_name": name,
                           "width": original.shape[1], "height": original.shape[0]})
            drawing = draw_detections(
                original, detections.boxes, detections.classes, detections.scores,
                predictor.class_names, score_threshold=draw_threshold,
            )
            path = Path(output_dir) / Path(name).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(drawing).save(path)

    categories = [
        {"id": int(c), "name": n}
        for c, n in zip(predictor.category_ids, predictor.class_names, strict=True)
    ]
    with open(Path(output_dir) / "results.json", "w") as f:
        json.dump(results, f)
    with open(Path(output_dir) / "images.json", "w") as f:
        json.dump({"images": images, "categories": categories}, f, indent=1)
    print(
        f"{len(results)} detections on {len(images)} images (checkpoint at step "
        f"{predictor.step} of {workdir}) -> {output_dir}"
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
