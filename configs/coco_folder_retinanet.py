r"""RetinaNet ResNet-50-FPN on your own data: a folder of images and a COCO-format JSON per split.

What: any number of classes, read from the JSON's "categories" (labels in the order of their
ids; evaluation reports the JSON's own category ids). Crowd annotations ("iscrowd": 1) are ignore
regions; images without annotations are kept as background. Images are resized to fit 640x640
with scale jitter 0.8-1.2 and flips, padded square. RetinaNet as in the paper (P3-P7, 9 anchors,
focal loss alpha 0.25, gamma 2, L1 box loss), SGD at 0.01 per 16 images, 12 epochs with x0.1 at
epochs 8 and 11 (the "1x" schedule); set `num_epochs` and `schedule.decay_epochs` for your data's
size. The ResNet-50 is `configs/coco_retinanet_r50.py`'s, by the config argument: from an
ImageNet weight file (`--config configs/coco_folder_retinanet.py:/data/R-50.pkl`) with frozen
batch norm and the stem and C2 frozen, the paper's recipe and the better start for a small data
set (`--config.model.stride_in_1x1=False` for torchvision or timm weights), or without one from
scratch with GroupNorm.

Layout (see `focaljax.data.coco_folder` for the JSON fields read):

  /data/my_data/images/train/...      /data/my_data/annotations/train.json
  /data/my_data/images/val/...        /data/my_data/annotations/val.json

Command. Prepare once (reads and checks every image and box; the report lists every box clipped
to its image or dropped for having no area):

  python -m train.prepare_data --dataset coco_folder --name my_data \
      --images train=/data/my_data/images/train \
      --annotations train=/data/my_data/annotations/train.json \
      --images validation=/data/my_data/images/val \
      --annotations validation=/data/my_data/annotations/val.json

then train on it, by its name, from ImageNet weights or from scratch:

  python -m train --config configs/coco_folder_retinanet.py:/data/R-50.pkl \
      --workdir runs/my_data --config.dataset.builder_kwargs.name=my_data
  python -m train --config configs/coco_folder_retinanet.py --workdir runs/my_data_scratch \
      --config.dataset.builder_kwargs.name=my_data

  (or skip the first step and give the trainer the paths below, e.g.
  `--config.dataset.builder_kwargs.splits.train.images=/data/my_data/images/train`.)

Hardware, time and result: depend on the data; no reference applies. For scale, the same
detector on COCO (118k images, 80 classes) reaches 36.5-37.4 AP in 12 epochs from ImageNet
weights (the mmdetection and detectron2 model zoos).
"""

import ml_collections

from configs import coco_retinanet_r50


def get_config(weights: str = "") -> ml_collections.ConfigDict:
    """From the ImageNet `weights` file or, when it is "", from scratch."""
    # The model, optimizer and inference settings of the COCO recipe; data and schedule below.
    config = coco_retinanet_r50.get_config(weights)

    dataset = config.dataset
    dataset.name = "coco_folder"
    # The name picks the prepared data set in data_dir; the splits are read only to prepare it.
    dataset.builder_kwargs = ml_collections.ConfigDict({
        "name": "my_data",
        "splits": {
            "train": {"images": "/data/my_data/images/train",
                      "annotations": "/data/my_data/annotations/train.json"},
            "validation": {"images": "/data/my_data/images/val",
                           "annotations": "/data/my_data/annotations/val.json"},
        },
    })
    dataset.image_size = (640, 640)
    dataset.scale_jitter = (0.8, 1.2)

    config.schedule.warmup_steps = 500
    config.schedule.decay_steps = ()  # The decay points in epochs instead, for any data size.
    config.schedule.decay_epochs = (8, 11)
    config.num_train_steps = 0  # The length in epochs instead.
    config.num_epochs = 12.0
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 1000
    return config
