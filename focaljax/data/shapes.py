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

With `negatives="easy"` (the default) one pixel's saturation tells object from background without
error. With `negatives="hard"` the background also holds, beneath the objects, saturated
distractors in the objects' own palette (stars, pentagons and hexagons, rings, crescents, outlines
of the classes' shapes, and target shapes cut by a half-plane), saturated lines and blobs, and
textured regions (stripes, checkers, coloured noise), so that no single-pixel statistic separates
objects from background (`pixel_threshold_accuracy` measures it) and a detector must learn shape,
as on real images with hard negatives.

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

from focaljax.errors import ConfigError

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
_NEGATIVES = ("easy", "hard")
# Hard negatives: shapes of no class, outlines of the classes' shapes, and parts of them.
_DISTRACTOR_KINDS = ("star", "polygon", "ring", "crescent", "outline", "partial")
# A "partial" keeps this fraction of a target shape, scaled down where needed to stay below
# `min_visible_fraction`: less of a shape than a labelled object ever shows.
_PARTIAL_KEPT = (0.3, 0.6)
# No hard negative takes the colour of an object it comes this close to (in pixels), so that every
# object stands out from what surrounds it and its box is what one sees.
_OBJECT_MARGIN = 2
_MAX_TEXTURE_REGIONS = 8
# The single-pixel statistics of `pixel_threshold_accuracy`, each an integer in [0, bins).
PIXEL_STATISTICS = {
    "saturation": 256, "red": 256, "green": 256, "blue": 256, "grey": 766, "value": 256, "hue": 360,
}


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
        its pixels stays visible (and the partial shapes of "hard" negatives show less than this).
      class_weights: relative frequency of each class in `CLASS_NAMES`; None for uniform.
      negatives: "easy": the background and its clutter are far less saturated than any object
        (saturation <= 60 against >= 145), so one pixel tells object from background. "hard": the
        hard negatives of the module docstring are painted beneath the objects as well (the
        objects are never covered by them, so boxes stay the objects' visible pixels).
      max_distractors: "hard" only: every image holds between half of this (rounded up) and this
        many distractor shapes, sized as the objects are.
      max_clutter: "hard" only: every image holds between half of this (rounded up) and this many
        saturated lines and blobs (blobs smaller than `min_object_size`).
      texture_fraction: "hard" only: the mean fraction of an image under textured regions (each
        image draws a target between 0.5 and 1.5 times this).
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
    negatives: str = "easy"
    max_distractors: int = 8
    max_clutter: int = 12
    texture_fraction: float = 0.3

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in self.image_size)
        height, width = self.image_size
        if min(height, width) < 2 * self.min_object_size:
            raise ConfigError(
                f"image_size {self.image_size} is too small for min_object_size "
                f"{self.min_object_size}: expected both sides >= {2 * self.min_object_size}"
            )
        if self.num_train < 1 or self.num_validation < 1:
            raise ConfigError(
                f"num_train={self.num_train}, num_validation={self.num_validation}: expected >= 1"
            )
        if self.max_objects < 1:
            raise ConfigError(f"max_objects is {self.max_objects}, expected >= 1")
        if self.min_object_size < 2:
            raise ConfigError(f"min_object_size is {self.min_object_size}, expected >= 2")
        if not 0 <= self.empty_fraction <= 1:
            raise ConfigError(f"empty_fraction is {self.empty_fraction}, expected in [0, 1]")
        if not 0 < self.max_object_fraction <= 1:
            raise ConfigError(
                f"max_object_fraction is {self.max_object_fraction}, expected in (0, 1]"
            )
        # An object with no visible pixel would have no box.
        if not 0 < self.min_visible_fraction <= 1:
            raise ConfigError(
                f"min_visible_fraction is {self.min_visible_fraction}, expected in (0, 1]"
            )
        if self.class_weights is not None and (
            len(self.class_weights) != len(CLASS_NAMES) or min(self.class_weights) < 0
        ):
            raise ConfigError(
                f"class_weights {self.class_weights}: expected {len(CLASS_NAMES)} non-negative "
                f"weights, one per class of {CLASS_NAMES}"
            )
        if self.negatives not in _NEGATIVES:
            raise ConfigError(f"negatives is {self.negatives!r}, expected one of {_NEGATIVES}")
        if self.max_distractors < 0:
            raise ConfigError(f"max_distractors is {self.max_distractors}, expected >= 0")
        if self.max_clutter < 0:
            raise ConfigError(f"max_clutter is {self.max_clutter}, expected >= 0")
        if not 0 <= self.texture_fraction <= 1:
            raise ConfigError(f"texture_fraction is {self.texture_fraction}, expected in [0, 1]")


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
        raise ConfigError(
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
    if config.negatives == "hard":
        _paint_hard_negatives(rng, config, image, owner, colours)
    for i, colour in enumerate(colours):
        image[owner == i] = _PALETTE[colour]
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
    its label, colour (index in `_PALETTE`) and full (unoccluded) pixel count."""
    height, width = config.image_size
    owner = np.full((height, width), -1, np.int32)
    labels, colours, full_areas = [], [], []
    if rng.uniform() < config.empty_fraction:
        return owner, labels, colours, full_areas
    weights = np.ones(len(CLASS_NAMES)) if config.class_weights is None else config.class_weights
    probs = np.asarray(weights, np.float64) / np.sum(weights)
    for _ in range(rng.integers(1, config.max_objects + 1)):
        label = int(rng.choice(len(CLASS_NAMES), p=probs))
        colour = int(rng.integers(len(_PALETTE)))
        for _ in range(_MAX_PLACEMENT_TRIES):
            size = _object_size(rng, config)
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


def _object_size(rng: np.random.Generator, config: ShapesConfig) -> float:
    """An extent in pixels, log-uniform from `min_object_size` to `max_object_fraction` of the
    shorter image side."""
    max_size = max(config.min_object_size, config.max_object_fraction * min(config.image_size))
    return math.exp(rng.uniform(math.log(config.min_object_size), math.log(max_size)))


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


def _paint_hard_negatives(
    rng: np.random.Generator,
    config: ShapesConfig,
    image: np.ndarray,
    owner: np.ndarray,
    colours: list[int],
) -> None:
    """Paints the hard negatives on `image` (float32 [H, W, 3], in place), beneath the objects of
    `owner` that are painted after them: textured regions, then saturated lines and blobs, then
    distractor shapes, each in palette colours other than those of the objects it comes within
    `_OBJECT_MARGIN` pixels of."""
    height, width = config.image_size
    # Bit c of near[y, x] is set when an object of palette colour c is close to pixel (y, x).
    near = np.zeros((height, width), np.uint8)
    for i, colour in enumerate(colours):
        near |= _dilate(owner == i, _OBJECT_MARGIN).astype(np.uint8) << colour
    palette_bits = 1 << np.arange(len(_PALETTE))

    def allowed_colours(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero((palette_bits & np.bitwise_or.reduce(near[mask], initial=0)) == 0)

    def paint(mask: np.ndarray) -> None:
        allowed = allowed_colours(mask)
        if len(allowed):
            image[mask] = _PALETTE[allowed[rng.integers(len(allowed))]]

    side = min(height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    target = min(1.0, config.texture_fraction * rng.uniform(0.5, 1.5))
    covered = np.zeros((height, width), bool)
    for _ in range(_MAX_TEXTURE_REGIONS):
        if covered.mean() >= target:
            break
        centre = rng.uniform((0, 0), (width, height))
        half_sides = rng.uniform(0.1, 0.3, size=2) * side
        region = _polygon_mask(_rotated_rectangle(centre, half_sides, rng.uniform(0, math.pi)),
                               height, width)
        covered |= region
        _paint_texture(rng, config, image, region, xs, ys, allowed_colours(region))

    for _ in range(_count(rng, config.max_clutter)):
        if rng.uniform() < 0.5:
            start = rng.uniform((0, 0), (width, height))
            angle = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(0.2, 1.0) * side
            end = start + length * np.array([math.cos(angle), math.sin(angle)])
            canvas = Image.new("L", (width, height), 0)
            ImageDraw.Draw(canvas).line(
                [*start.tolist(), *end.tolist()], fill=1, width=int(rng.integers(1, 4))
            )
            paint(np.asarray(canvas, bool))
        else:
            centre = rng.uniform((0, 0), (width, height))
            radius = rng.uniform(1.0, config.min_object_size / 2)
            paint(_polygon_mask(_blob(rng, centre, radius), height, width))

    for _ in range(_count(rng, config.max_distractors)):
        kind = _DISTRACTOR_KINDS[rng.integers(len(_DISTRACTOR_KINDS))]
        mask = _distractor_mask(rng, kind, _object_size(rng, config), height, width,
                                max_kept=config.min_visible_fraction)
        if mask.any():
            paint(mask)


def _count(rng: np.random.Generator, maximum: int) -> int:
    """Uniform from half of `maximum` (rounded up) to `maximum`."""
    return int(rng.integers((maximum + 1) // 2, maximum + 1))


def _paint_texture(
    rng: np.random.Generator,
    config: ShapesConfig,
    image: np.ndarray,
    region: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    allowed: np.ndarray,
) -> None:
    """Stripes, a checker or coloured noise over `region` of `image`, in the `allowed` colours.
    Their period stays below a third of `min_object_size`, so that no cell reads as an object."""
    if not len(allowed) or not region.any():
        return
    kind = rng.integers(3)
    period = rng.uniform(2.0, max(3.0, config.min_object_size / 3))
    angle = rng.uniform(0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    if kind == 2:  # Coloured noise: square cells of `period` pixels, each of a random colour.
        rows, cols = (np.floor(ys[region] / period).astype(np.int64),
                      np.floor(xs[region] / period).astype(np.int64))
        picks = rng.integers(len(allowed), size=(rows.max() + 1, cols.max() + 1))
        image[region] = _PALETTE[allowed[picks[rows, cols]]]
        return
    if kind == 0:
        on = (u % period) < period / 2
    else:
        v = -xs * math.sin(angle) + ys * math.cos(angle)
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    colours = rng.permutation(allowed)
    image[region & on] = _PALETTE[colours[0]]
    # Half of the textures alternate with the background rather than with a second colour.
    if len(colours) > 1 and rng.uniform() < 0.5:
        image[region & ~on] = _PALETTE[colours[1]]


def _distractor_mask(
    rng: np.random.Generator, kind: str, size: float, height: int, width: int, *, max_kept: float
) -> np.ndarray:
    """A bool [H, W] mask of one distractor of `kind` and extent `size`, wholly inside the image;
    a "partial" keeps at most `max_kept` of its shape's pixels."""
    if kind in ("outline", "partial"):
        label = int(rng.integers(len(CLASS_NAMES)))
        mask = _shape_mask(rng, label, size, height, width)
        if kind == "outline":
            # At most an eighth of the extent thick, so that an outline never looks filled.
            thickness = min(int(rng.integers(1, 4)), max(1, int(size // 8)))
            return mask & _dilate(~mask, thickness, outside=True)
        kept = rng.uniform(*_PARTIAL_KEPT) * min(1.0, max_kept / _PARTIAL_KEPT[1])
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.nonzero(mask)
        along = xs * math.cos(angle) + ys * math.sin(angle)
        cut = np.sort(along)[max(0, int(kept * len(along)) - 1)]
        partial = np.zeros_like(mask)
        partial[ys[along <= cut], xs[along <= cut]] = True
        return partial
    size = max(4.0, min(size, height, width))
    radius = (size - 1) / 2
    cx = rng.uniform(0.0, width - size) + radius
    cy = rng.uniform(0.0, height - size) + radius
    theta = rng.uniform(0, 2 * math.pi)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind in ("star", "polygon"):
        if kind == "star":
            points = int(rng.integers(5, 8))
            radii = np.tile([radius, radius * rng.uniform(0.4, 0.55)], points)
        else:  # A pentagon or a hexagon.
            points = int(rng.integers(5, 7))
            radii = np.full(points, radius)
        angles = theta + np.arange(len(radii)) * 2 * math.pi / len(radii)
        draw.polygon(list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles),
                              strict=True)), fill=1)
    else:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=1)
        if kind == "ring":
            inner = radius * rng.uniform(0.45, 0.7)
            ox, oy = cx, cy
        else:  # crescent: the disc less a slightly smaller disc, shifted.
            inner = radius * rng.uniform(0.8, 1.0)
            shift = radius * rng.uniform(0.35, 0.7)
            ox, oy = cx + shift * math.cos(theta), cy + shift * math.sin(theta)
        draw.ellipse((ox - inner, oy - inner, ox + inner, oy + inner), fill=0)
    return np.asarray(canvas, bool)


def _rotated_rectangle(
    centre: np.ndarray, half_sides: np.ndarray, angle: float
) -> list[tuple[float, float]]:
    """The 4 corners (x, y) of a rectangle with these half side lengths, turned by `angle`."""
    c, s = math.cos(angle), math.sin(angle)
    return [
        (centre[0] + a * half_sides[0] * c - b * half_sides[1] * s,
         centre[1] + a * half_sides[0] * s + b * half_sides[1] * c)
        for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float) -> list[tuple[float, float]]:
    """An irregular star-shaped polygon: 6 to 11 vertices at 40-100% of `radius`."""
    points = int(rng.integers(6, 12))
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=points))
    radii = radius * rng.uniform(0.4, 1.0, size=points)
    return list(zip(centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles),
                    strict=True))


def _polygon_mask(points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1)
    return np.asarray(canvas, bool)


def _dilate(mask: np.ndarray, radius: int, *, outside: bool = False) -> np.ndarray:
    """`mask` [H, W] grown by `radius` pixels in all 8 directions; pixels beyond the border count
    as `outside`."""
    grown = mask
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(grown, pad, constant_values=outside)
        length = grown.shape[axis]
        grown = np.logical_or.reduce(
            [np.take(padded, range(k, k + length), axis=axis) for k in range(2 * radius + 1)]
        )
    return grown


def pixel_threshold_accuracy(
    config: ShapesConfig, *, split: str = "validation", num_images: int = 200
) -> dict:
    """How well a single pixel tells object from background: for each single-pixel statistic, the
    balanced accuracy of the best threshold on it.

    Over the object pixels `O` (those of the objects' masks) and the background pixels `B` (all
    others) of the first `num_images` images of `split`, pooled, a statistic `s` and a threshold
    `t` call a pixel an object's when `s >= t` (or, the other direction, when `s < t`), and

        balanced_accuracy(t) = (|{p in O : s(p) >= t}| / |O| + |{p in B : s(p) < t}| / |B|) / 2,

    the mean of the object and the background recall (its other direction scores 1 minus it). The
    best over every `t` and both directions is 0.5 for a statistic that says nothing, 1 for one
    that separates the two without error. The statistics (`PIXEL_STATISTICS`) are integers of the
    uint8 RGB pixel: `saturation` (max - min channel), `red`, `green`, `blue`, `grey` (the sum of
    the channels: 3 times their mean), `value` (max channel) and `hue` (HSV hue in whole degrees,
    floored, in [0, 360); 0 for a grey pixel).

    Args:
      config: the data set's settings.
      split: "train" or "validation".
      num_images: how many of the split's first images to pool (all of them if it has fewer).

    Returns:
      `{"statistics": {name: best balanced accuracy}, "best": the highest of them,
      "best_statistic": its name, "images": images pooled, "object_pixels": |O|,
      "background_pixels": |B|}`.

    Raises:
      ValueError: for an unknown split, `num_images` < 1, or images without object pixels or
        without background pixels.

    Examples:
      >>> easy = shapes_config(image_size=32, name="doc", min_object_size=8, empty_fraction=0.0)
      >>> hard = shapes_config(image_size=32, name="doc_hard", min_object_size=8,
      ...                      empty_fraction=0.0, negatives="hard")
      >>> result = pixel_threshold_accuracy(easy, num_images=4)
      >>> result["best_statistic"], result["best"]
      ('saturation', 1.0)
      >>> pixel_threshold_accuracy(hard, num_images=4)["best"] < 0.9
      True
    """
    if split not in _SPLITS:
        raise ValueError(f"split is {split!r}, expected one of {_SPLITS}")
    if num_images < 1:
        raise ValueError(f"num_images is {num_images}, expected >= 1")
    num_images = min(num_images, config.num_train if split == "train" else config.num_validation)
    counts = {name: np.zeros((2, bins), np.int64) for name, bins in PIXEL_STATISTICS.items()}
    for index in range(num_images):
        example = generate_example(config, split, index)
        is_object = example["mask"].any(axis=0).ravel()
        for name, values in _pixel_statistics(example["image"].reshape(-1, 3)).items():
            bins = PIXEL_STATISTICS[name]
            counts[name][0] += np.bincount(values[~is_object], minlength=bins)
            counts[name][1] += np.bincount(values[is_object], minlength=bins)
    num_background, num_objects = (int(n) for n in counts["red"].sum(axis=1))
    if not num_objects or not num_background:
        raise ValueError(
            f"the first {num_images} {split} images of {config.name!r} have {num_objects} object "
            f"and {num_background} background pixels, expected both > 0"
        )
    statistics = {}
    for name, (background, objects) in counts.items():
        # Threshold t = 0..bins: background recall P(s < t), object recall P(s >= t).
        background_recall = np.concatenate([[0], np.cumsum(background)]) / num_background
        object_recall = 1 - np.concatenate([[0], np.cumsum(objects)]) / num_objects
        balanced = (background_recall + object_recall) / 2
        statistics[name] = float(max(balanced.max(), 1 - balanced.min()))
    best_statistic = max(statistics, key=statistics.get)
    return {
        "statistics": statistics,
        "best": statistics[best_statistic],
        "best_statistic": best_statistic,
        "images": num_images,
        "object_pixels": num_objects,
        "background_pixels": num_background,
    }


def _pixel_statistics(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """`PIXEL_STATISTICS` of uint8 [N, 3] RGB pixels, each int64 [N]."""
    red, green, blue = pixels.astype(np.int64).T
    high = pixels.max(axis=1).astype(np.int64)
    spread = high - pixels.min(axis=1)
    # HSV hue in sixths of the circle, as colorsys computes it (red first, then green, when two
    # channels tie for the maximum), floored to whole degrees with integer arithmetic.
    sector = np.where(red == high, 0, np.where(green == high, 120, 240))
    difference = np.where(red == high, green - blue,
                          np.where(green == high, blue - red, red - green))
    hue = (sector + (60 * difference) // np.maximum(spread, 1)) % 360
    return {
        "saturation": spread,
        "red": red,
        "green": green,
        "blue": blue,
        "grey": red + green + blue,
        "value": high,
        "hue": np.where(spread > 0, hue, 0),
    }


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
        hard = (
            " With hard negatives: saturated distractors, clutter and textures beneath the objects."
            if self.builder_config.negatives == "hard" else ""
        )
        return self.dataset_info_from_configs(
            description=(
                "Synthetic detection data set: filled circles, squares, triangles and crosses in "
                "saturated colours on cluttered low-saturation backgrounds; 0 to max_objects "
                "objects per image, from min_object_size pixels to half the image." + hard
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
