"""A trained workdir's detector for serving without focaljax: a TensorFlow SavedModel and the
`jax.export` form (`focaljax.inference.export`, whose docstring says what each takes and gives).

  python -m train.export --workdir runs/shapes_retinanet --output exported/

`--output` receives `saved_model/1/` (the SavedModel, version 1 under a TF Serving model base
path), `detector.jax_exported` and `export_info.json` (input size, class names, signatures). The
SavedModel's `serving_default` takes uint8 RGB images [N, height, width, 3] of any one size, does
the evaluation's preprocessing itself (resize to fit the config's `dataset.image_size` keeping the
aspect ratio, normalize, pad) and returns `boxes` [N, K, 4] (xyxy, in the pixels of the images
sent), `scores` [N, K], `classes` [N, K] and `num_detections` [N]: the `Predictor`'s detections.

Serving it with TF Serving (CPU; `tensorflow/serving:latest-gpu` and `--gpus all` for a GPU):

  docker run --rm -p 8501:8501 -p 8500:8500 \\
    -v "$PWD/exported/saved_model:/models/detector" -e MODEL_NAME=detector tensorflow/serving

  curl -d '{"instances": [<an image as nested [height][width][3] lists of 0-255>]}' \\
    http://localhost:8501/v1/models/detector:predict

(REST's `instances` are one image each, all of one size; gRPC on port 8500 takes the uint8 tensor
without JSON.) A later export of another checkpoint goes to a new version folder
(`saved_model/2`), which TF Serving picks up while running.
"""

from __future__ import annotations

import os

from absl import app, flags

from focaljax.errors import ConfigError
from focaljax.inference import Predictor
from focaljax.inference import export as export_lib
from train import cli


def export(
    workdir: str,
    output_dir: str,
    *,
    step: int | None = None,
    platforms: tuple[str, ...] = export_lib.PLATFORMS,
) -> dict[str, str]:
    """Exports the detector of `workdir` at `step` (default: the latest checkpoint) to
    `output_dir`; returns the paths written (`focaljax.inference.export.export`)."""
    saved_model = os.path.join(output_dir, export_lib.SAVED_MODEL_DIR)
    if os.path.exists(saved_model):
        raise ConfigError(f"{saved_model} exists; export to another --output, or remove it")
    predictor = Predictor.from_workdir(workdir, step)
    paths = export_lib.export(predictor, output_dir, platforms=platforms)
    print(f"Exported the checkpoint at step {predictor.step} of {workdir} for "
          f"{', '.join(platforms)}:")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return paths


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined only when run as a program (see `train.predict`)."""
    flags.DEFINE_string("workdir", None, "The workdir of a `python -m train` run.")
    flags.DEFINE_string("output", None, "Folder for saved_model/1, detector.jax_exported and "
                        "export_info.json.")
    flags.DEFINE_integer("step", None, "Checkpoint step to export; default the latest.")
    flags.DEFINE_list("platforms", list(export_lib.PLATFORMS),
                      "Platforms to lower for (jax.export names: cpu, cuda, rocm, tpu).")
    flags.mark_flags_as_required(["workdir", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_libraries()
    try:
        export(FLAGS.workdir, FLAGS.output, step=FLAGS.step, platforms=tuple(FLAGS.platforms))
    except cli.ConfigError as error:  # A bug's exception keeps its traceback.
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
