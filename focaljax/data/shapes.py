"""The synthetic "shapes" detection data set, as a TFDS dataset builder.

Every image is a cluttered background (a low-saturation colour gradient, grey-ish distractor lines,
dots and outlines, and pixel noise) with 0 to `max_objects` filled shapes painted on it. The class
of an object is its shape (`CLASS_NAMES`); its colour is drawn independently from a palette of
saturated colours, so colour says "object" but not which one. Object sizes are log-uniform between
`min_object_size` pixels and `max_object_fraction` of the shorter image side, so most objects are
small, and most anchors of a dense detector see background: the imbalance focal loss is made for.

Objects may overlap, but a placement is rejected when it would leave less than
`min_visible_fraction` of an earlier object visible. Boxes and areas describe the visible pixels of
each object, as in COCO.

Every example is a pure function of `(config.seed, split, index)` (see `generate_example`), so any
one example can be regenerated on its own, and generation is bit-for-bit reproducible.

Usage::

  builder = Shapes(config="default", data_dir="/tmp/tfds")  # or "tiny", or shapes_config(...)
  builder.download_and_prepare()  # nothing is downloaded; takes seconds
  ds = builder.as_dataset(split="train")
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "square", "triangle", "cross")

# Saturated colours (max - min channel >= 145) kept inside [40, 215] so that pixel noise rarely
# clips them; the background and distractors stay below a saturation of 60.
_PALETTE = np.array(
    [
        (215, 45, 45),
        (45, 190, 60),
        (50, 80, 215),
        (215, 200, 40),
        (200, 50, 200),
        (40, 190, 210),
        (215, 130, 40),
    ],
    dtype=np.float32,
)
_MAX_CLUTTER_TINT = 30  # Per-channel offset from grey: saturation of clutter <= 2 * 30.
_SPLITS = ("train", "validation")
_MAX_PLACEMENT_TRIES = 20


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """What to generate. The name must be unique for each distinct setting (it names the folder).

    Attributes:
      image_size: (height, width) of every image.
      num_train: number of images in the "train" split.
      num_validation: number of images in the "validation" split.
      seed: every example is generated from `(seed, split, index)`.
      max_objects: non-empty images hold 1..max_objects objects (fewer when placement fails).
      empty_fraction: probability that an image holds no object.
      min_object_size: smallest object extent, in pixels.
      max_object_fraction: largest object extent, as a fraction of the shorter image side.
      min_visible_fraction: an object may be covered by later ones, but at least this fraction of
        its pixels stays visible.
      class_weights: relative frequency of each class in `CLASS_NAMES`; None for uniform.
    """

    image_size: tuple[int, int] = (128, 128)
    num_train: int = 2000
    num_validation: int = 200
    seed: int = 0
    max_objects: int = 6
    empty_fraction: float = 0.1
    min_object_size: int = 8
    max_object_fraction: float = 0.5
    min_visible_fraction: float = 0.5
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in self.image_size)
        height, width = self.image_size
        if min(height, width) < 2 * self.min_object_size:
            raise ValueError(
                f"image_size {self.image_size} is too small for min_object_size "
                f"{self.min_object_size}: expected both sides >= {2 * self.min_object_size}"
            )
        if self.num_train < 1 or self.num_validation < 1:
            raise ValueError(
                f"num_train={self.num_train}, num_validation={self.num_validation}: expected >= 1"
            )
        if self.max_objects < 1:
            raise ValueError(f"max_objects is {self.max_objects}, expected >= 1")
        if self.min_object_size < 2:
            raise ValueError(f"min_object_size is {self.min_object_size}, expected >= 2")
        if not 0 <= self.empty_fraction <= 1:
            raise ValueError(f"empty_fraction is {self.empty_fraction}, expected in [0, 1]")
        if not 0 < self.max_object_fraction <= 1:
            raise ValueError(
                f"max_object_fraction is {self.max_object_fraction}, expected in (0, 1]"
            )
        # An object with no visible pixel would have no box.
        if not 0 < self.min_visible_fraction <= 1:
            raise ValueError(
                f"min_visible_fraction is {self.min_visible_fraction}, expected in (0, 1]"
            )
        if self.class_weights is not None and (
            len(self.class_weights) != len(CLASS_NAMES) or min(self.class_weights) < 0
        ):
            raise ValueError(
                f"class_weights {self.class_weights}: expected {len(CLASS_NAMES)} non-negative "
                f"weights, one per class of {CLASS_NAMES}"
            )


def shapes_config(
    *,
    image_size: int | tuple[int, int] = 128,
    num_train: int = 2000,
    num_validation: int = 200,
    seed: int = 0,
    name: str | None = None,
    **kwargs,
) -> ShapesConfig:
    """A `ShapesConfig` with these settings: the predefined one ("default", "tiny") when they match
    it exactly, else a custom one named after them unless `name` is given.

    `kwargs` are the other fields of `ShapesConfig`; when any is given, `name` is required, since
    the name alone must tell prepared data sets apart.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(int(s) for s in image_size)
    if name is None and kwargs:
        raise ValueError(
            f"shapes_config got {sorted(kwargs)}: give a `name` that identifies these settings"
        )
    config = ShapesConfig(
        name=name or (
            f"{image_size[0]}x{image_size[1]}_train{num_train}_validation{num_validation}"
            f"_seed{seed}"
        ),
        description=f"{image_size[0]}x{image_size[1]} images, custom settings.",
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        seed=seed,
        **kwargs,
    )
    if name is None:
        for predefined in Shapes.BUILDER_CONFIGS:
            if _settings(predefined) == _settings(config):
                return predefined
    return config


def _settings(config: ShapesConfig) -> dict:
    """The fields of `config` that change the generated data."""
    base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return {
        f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in base
    }


def generate_example(config: ShapesConfig, split: str, index: int) -> dict[str, np.ndarray]:
    """Renders example `index` of `split`, independently of every other example.

    Returns:
      A dict with `image` uint8 [H, W, 3], `bbox` float32 [N, 4] (ymin, xmin, ymax, xmax),
      normalized to [0, 1] by the image size and enclosing the visible pixels of each object,
      `label` int64 [N], `area` int64 [N] (visible pixels), `mask` bool [N, H, W] (visible pixels).
    """
    if split not in _SPLITS:
        raise ValueError(f"split is {split!r}, expected one of {_SPLITS}")
    rng = np.random.default_rng([config.seed, _SPLITS.index(split), index])
    height, width = config.image_size
    image = _background(rng, height, width)
    owner, labels, colours, _ = _place_objects(rng, config)
    for i, colour in enumerate(colours):
        image[owner == i] = colour
    # Grey noise, identical on the three channels, leaves the saturation of every pixel unchanged.
    image += rng.uniform(2.0, 10.0) * rng.standard_normal((height, width, 1), dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    masks = owner[None] == np.arange(len(labels))[:, None, None]
    bbox = np.zeros((len(labels), 4), np.float32)
    for i, mask in enumerate(masks):
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        bbox[i] = (ys[0] / height, xs[0] / width, (ys[-1] + 1) / height, (xs[-1] + 1) / width)
    return {
        "image": image,
        "bbox": bbox,
        "label": np.asarray(labels, np.int64),
        "area": masks.sum(axis=(1, 2)).astype(np.int64),
        "mask": masks,
    }


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float32 [H, W, 3] gradient between two tinted greys, with distractors drawn on it."""
    num_lines, num_dots, num_rings = rng.integers(0, (7, 21, 3))
    colours = _clutter_colours(rng, 2 + num_lines + num_dots + num_rings)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys = np.arange(height, dtype=np.float32)[:, None] / height
    xs = np.arange(width, dtype=np.float32)[None, :] / width
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = colours[0] + (colours[1] - colours[0]) * t[..., None]

    canvas = Image.fromarray(np.rint(image).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    fills = [tuple(int(c) for c in colour) for colour in np.rint(colours[2:])]
    extent = np.array([width, height], np.float32)
    lines = rng.uniform(0.0, 1.0, size=(num_lines, 4)) * np.tile(extent, 2)
    line_widths = rng.integers(1, 3, size=num_lines)
    for line, line_width, fill in zip(lines, line_widths, fills, strict=False):
        draw.line(line.tolist(), fill=fill, width=int(line_width))
    fills = fills[num_lines:]
    # Dots (radius 0.5..2.5 px) and rings (radius 5..25% of the image): centre x, y and radius.
    circles = np.concatenate(
        [
            rng.uniform((0, 0, 0.5), (width, height, 2.5), size=(num_dots, 3)),
            rng.uniform((0, 0, 0.05), (width, height, 0.25), size=(num_rings, 3)),
        ]
    )
    circles[num_dots:, 2] *= min(height, width)
    for i, ((x, y, r), fill) in enumerate(zip(circles, fills, strict=True)):
        if i < num_dots:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=1)
    return np.asarray(canvas, np.float32)


def _clutter_colours(rng: np.random.Generator, num: int) -> np.ndarray:
    """[num, 3] tinted greys: saturation (max - min channel) below 2 * _MAX_CLUTTER_TINT."""
    grey = rng.uniform(40.0, 215.0, size=(num, 1))
    tint = rng.uniform(-_MAX_CLUTTER_TINT, _MAX_CLUTTER_TINT, size=(num, 3))
    return (grey + tint).astype(np.float32)


def _place_objects(rng: np.random.Generator, config: ShapesConfig):
    """Chooses and places the objects; returns the owner map [H, W] (-1: background) and per object
    its label, colour and full (unoccluded) pixel count."""
    height, width = config.image_size
    owner = np.full((height, width), -1, np.int32)
    labels, colours, full_areas = [], [], []
    if rng.uniform() < config.empty_fraction:
        return owner, labels, colours, full_areas
    weights = np.ones(len(CLASS_NAMES)) if config.class_weights is None else config.class_weights
    probs = np.asarray(weights, np.float64) / np.sum(weights)
    max_size = max(config.min_object_size, config.max_object_fraction * min(height, width))
    for _ in range(rng.integers(1, config.max_objects + 1)):
        label = int(rng.choice(len(CLASS_NAMES), p=probs))
        colour = _PALETTE[rng.integers(len(_PALETTE))]
        for _ in range(_MAX_PLACEMENT_TRIES):
            size = math.exp(rng.uniform(math.log(config.min_object_size), math.log(max_size)))
            mask = _shape_mask(rng, label, size, height, width)
            new_owner = np.where(mask, len(labels), owner)
            visible = np.bincount(new_owner[new_owner >= 0], minlength=len(labels) + 1)
            if mask.any() and all(
                visible[i] >= config.min_visible_fraction * full_areas[i]
                for i in range(len(labels))
            ):
                owner = new_owner
                labels.append(label)
                colours.append(colour)
                full_areas.append(int(mask.sum()))
                break
    return owner, labels, colours, full_areas


def _shape_mask(
    rng: np.random.Generator, label: int, size: float, height: int, width: int
) -> np.ndarray:
    """A bool [H, W] mask of one shape of extent `size` pixels, placed wholly inside the image."""
    size = max(2.0, min(size, height, width))
    x0 = rng.uniform(0.0, width - size)
    y0 = rng.uniform(0.0, height - size)
    # PIL fills the pixels whose centres (i + 0.5) fall inside; the "- 1" keeps the extent `size`.
    x1, y1 = x0 + size - 1, y0 + size - 1
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    name = CLASS_NAMES[label]
    if name == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=1)
    elif name == "square":
        draw.rectangle((x0, y0, x1, y1), fill=1)
    elif name == "triangle":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (size - 1) / 2
        theta = rng.uniform(0.0, 2.0 * math.pi)
        draw.polygon(
            [
                (cx + r * math.cos(theta + k * 2 * math.pi / 3),
                 cy + r * math.sin(theta + k * 2 * math.pi / 3))
                for k in range(3)
            ],
            fill=1,
        )
    else:  # cross: a plus sign whose arms are a third of its extent thick.
        third = size / 3
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=1)
        draw.rectangle((x0, y0 + third, x1, y1 - third), fill=1)
    return np.asarray(canvas, bool)


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic detection data set: filled shapes on cluttered backgrounds, generated locally."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        ShapesConfig(
            name="default",
            description="128x128 images, 2000 train and 200 validation.",
            image_size=(128, 128),
            num_train=2000,
            num_validation=200,
        ),
        ShapesConfig(
            name="tiny",
            description="64x64 images, 32 train and 16 validation, for tests.",
            image_size=(64, 64),
            num_train=32,
            num_validation=16,
            max_object_fraction=0.5,
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        height, width = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=(
                "Synthetic detection data set: filled circles, squares, triangles and crosses in "
                "saturated colours on cluttered low-saturation backgrounds; 0 to max_objects "
                "objects per image, from min_object_size pixels to half the image."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(height, width, 3), encoding_format="png"),
                    "image/id": np.int64,
                    "objects": tfds.features.Sequence(
                        {
                            "bbox": tfds.features.BBoxFeature(),
                            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                            "is_crowd": np.bool_,
                            "area": np.int64,
                        }
                    ),
                }
            ),
            # Records stay in index order, so that `image/id - 1` is the position in the split.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "validation": self._generate_examples("validation", config.num_validation),
        }

    def _generate_examples(self, split: str, num_examples: int):
        for index in range(num_examples):
            example = generate_example(self.builder_config, split, index)
            num_objects = len(example["label"])
            yield index, {
                "image": _encode_png(example["image"]),
                "image/id": index + 1,
                "objects": {
                    "bbox": example["bbox"],
                    "label": example["label"],
                    "is_crowd": np.zeros(num_objects, bool),
                    "area": example["area"],
                },
            }
