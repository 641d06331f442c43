"""`default_config()`: every field of the dataset config that `focaljax.data.build` and the data
set's iterators read, with what it means and its default, the COCO 2017 recipe of the RetinaNet
paper (800-pixel images, horizontal flips, no other augmentation)."""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    """The dataset config (`config.dataset`) with every field `focaljax.data.build` reads: COCO
    2017 at 800 pixels, flipped horizontally in training, every other augmentation off. Start
    from it and change what differs, e.g. `name` and `builder_kwargs` for another data set.

    Examples:
      >>> config = default_config()
      >>> config.name, config.image_size, config.horizontal_flip, config.safe_crop
      ('coco', (800, 1344), True, ())
    """
    config = ml_collections.ConfigDict()
    config.name = "coco"  # A registered data set: "shapes", "coco", "voc" or "coco_folder".
    config.data_dir = ""  # The TFDS data directory; "" for TFDS's (~/tensorflow_datasets).
    # What to build, by data set: "shapes" {"config": "default" | "tiny"} or the settings of
    # focaljax.data.shapes_config; "coco" {"source_dir"}; "voc" {"source_dir", "config": "2007"
    # | "2012"}; "coco_folder" {"name", "splits"}. A source_dir is read only when the data set is
    # not prepared in data_dir yet.
    config.builder_kwargs = ml_collections.ConfigDict({"source_dir": ""})
    # (height, width) of the batch images: each image is resized to fit, keeping its aspect
    # ratio, and padded. Landscape COCO images get a short side of 800, portrait ones a long side
    # of 800.
    config.image_size = (800, 1344)
    config.max_boxes = 100  # Box rows per image; COCO train2017 has at most 93 annotations.
    # The splits trained on and evaluated on ("a+b" joins splits).
    config.train_split = "train"
    config.eval_split = "validation"
    config.horizontal_flip = True  # Random horizontal flips in training.
    # (low, high) random resize factor in training. No jitter, written as a range so that the
    # command line can set one, e.g. "(0.8,1.2)".
    config.scale_jitter = (1.0, 1.0)
    # More training augmentations (focaljax.data.augment), all off here. For images that have no
    # up (aerial, microscopy): random up-down flips and quarter turns (k * 90 degrees).
    config.vertical_flip = False
    config.rotate90 = False
    # Color jitter, torchvision's ColorJitter: brightness, contrast and saturation factors uniform
    # in [1 - s, 1 + s] for a strength s in [0, 1), a hue shift uniform in [-hue, hue] turns (at
    # most 0.5); 0.0 is off.
    config.brightness = 0.0
    config.contrast = 0.0
    config.saturation = 0.0
    config.hue = 0.0
    # JPEG re-compression at a quality uniform in (low, high), e.g. (30, 95); () is off.
    config.jpeg_quality = ()
    # A box-safe random crop before the resize, e.g. (0.5, 1.0): height and width each this
    # fraction of the image's; () is off. No object is cut below safe_crop_min_visible of its box
    # area (of 16 random windows the first that cuts none is taken, else the whole image); cut
    # objects are clipped, those outside dropped (the iterator's num_clipped_boxes and
    # num_dropped_boxes count them).
    config.safe_crop = ()
    config.safe_crop_min_visible = 0.5
    # Mosaic (YOLOv4): with this probability, e.g. 0.5, a training image is made of 4, itself and
    # the next 3 of the shuffled stream, each resized to fit image_size as a single image is, on an
    # image_size canvas split into quarters at a random centre (20-80% of each side); each image
    # shows its part that faces the centre. Objects with less than safe_crop_min_visible of their
    # box area in their quarter are dropped, the others clipped (counted as the crop's are). 0.0 is
    # off. A mosaic decodes and resizes 4 images for one, and their objects share max_boxes rows.
    config.mosaic = 0.0
    # Repeat-factor sampling (LVIS, detectron2's RepeatFactorTrainingSampler): an image is repeated
    # max(1, sqrt(t / f_c)) times per epoch (stochastically rounded) over its classes c, f_c the
    # fraction of the train split's images holding c, for this threshold t (e.g. 0.1); 0.0 is off.
    # A training run prints how many images are repeated, and by how much, at its start.
    config.repeat_factor_threshold = 0.0
    config.shuffle_buffer_size = 10_000  # Examples; capped at the size of the split.
    return config
