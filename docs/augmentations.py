"""Draws the training augmentations of `focaljax.data.augment` on "shapes" images with their boxes.

  python docs/augmentations.py            # writes docs/augmentations.png (about 20 s on CPU)

Each row is the first batch of `focaljax.data.create_train_iterator` (seed 0, horizontal flip and
scale jitter off) with one setting of `Augmentations`, on a small "shapes" split generated in a
temporary folder; each column is the same training image, so that a row shows what its setting
does (a mosaic's is the top-left quarter, the next images of the stream the others). Boxes are the
batch's, in the batch's pixels: where they sit on the objects, the boxes moved with the pixels.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from PIL import Image  # noqa: E402

from focaljax.data import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentations,
    Shapes,
    create_train_iterator,
    shapes_config,
)
from focaljax.evaluation.visualize import class_color  # noqa: E402

IMAGE_SIZE = (96, 128)
NUM_IMAGES = 4
ROWS = (
    ("none", Augmentations()),
    ("vertical_flip, rotate90", Augmentations(vertical_flip=True, rotate90=True)),
    ("brightness, contrast,\nsaturation 0.4, hue 0.1",
     Augmentations(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)),
    ("jpeg_quality (5, 15)", Augmentations(jpeg_quality=(5, 15))),
    ("safe_crop (0.4, 0.8),\nmin visible 0.6",
     Augmentations(safe_crop=(0.4, 0.8), safe_crop_min_visible=0.6)),
    ("mosaic 1.0", Augmentations(mosaic=1.0)),
    ("all of them,\nmosaic 0.5", Augmentations(
        vertical_flip=True, rotate90=True, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
        jpeg_quality=(20, 60), safe_crop=(0.4, 0.8), safe_crop_min_visible=0.6, mosaic=0.5,
    )),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", default=str(pathlib.Path(__file__).with_name("augmentations.png"))
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data_dir:
        builder = Shapes(
            config=shapes_config(image_size=IMAGE_SIZE, num_train=NUM_IMAGES, num_validation=1,
                                 seed=5),
            data_dir=data_dir,
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
        class_names = builder.info.features["objects"]["label"].names
        batches = [
            next(create_train_iterator(
                builder, image_size=IMAGE_SIZE, max_boxes=8, per_device_batch_size=NUM_IMAGES,
                seed=0, horizontal_flip=False, augmentations=augmentations,
            ))
            for _, augmentations in ROWS
        ]

    size = (2.2 * NUM_IMAGES + 1.6, 1.8 * len(ROWS))
    fig, axes = plt.subplots(len(ROWS), NUM_IMAGES, figsize=size)
    for row, ((name, _), batch) in enumerate(zip(ROWS, batches, strict=True)):
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
        order = np.argsort(flat["image_id"])  # the same image in each column
        for column, i in enumerate(order[:NUM_IMAGES]):
            ax = axes[row, column]
            pixels = flat["image"][i] * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
            ax.imshow(np.clip(pixels, 0, 1))
            for box, label in zip(flat["boxes"][i], flat["labels"][i], strict=True):
                if label < 0:
                    continue
                color = np.array(class_color(int(label))) / 255
                ax.add_patch(patches.Rectangle(
                    (box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                    edgecolor=color, linewidth=1.5,
                ))
                ax.text(box[0], box[1], class_names[label], color="black", fontsize=6,
                        va="bottom", bbox={"facecolor": color, "pad": 0.5, "linewidth": 0})
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("Training augmentations (focaljax.data.augment): batch images and boxes, "
                 "padded to 96x128", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90)
    # A 256-colour palette: a quarter of the file, no visible change.
    Image.open(buffer).convert("RGB").quantize(256).save(args.output, optimize=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
