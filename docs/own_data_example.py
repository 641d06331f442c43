r"""A small COCO-format folder made from a real photo that ships with scikit-image: coins.

The README's "Your own data" example. `skimage.data.coins()` is a 303x384 grey photo of 24 coins
(Greek coins from Pompeii, Brooklyn Museum). The boxes come from a simple segmentation (Sobel
elevation map, watershed from dark-background and bright-coin markers, holes filled, regions of
100 px or more), as in scikit-image's own coins tutorial: approximate ground truth, a box per
segmented coin, not hand-drawn. Two classes by size: "large coin" (equivalent diameter >= 52 px,
4 coins) and "small coin" (20), so the classes are skewed.

Splits never share a coin: the top three rows of coins (y < 225, 18 coins) give the training
images, the bottom row (y >= 225, 6 coins) the validation images. Each is cut into overlapping
tiles (training 128x128 every 32 px, 45 tiles; validation 78x128 every 32 px, 9 tiles). A coin cut
by its tile's edge keeps its (clipped) box as a crowd annotation (an ignore region) unless at least
90% of its box is inside the tile.

Command (needs `pip install scikit-image`, or `pip install -e ".[examples]"`):

  python docs/own_data_example.py /tmp/coins

writes /tmp/coins/images/{train,val}/*.png and /tmp/coins/annotations/{train,val}.json.
"""

import argparse
import json
import pathlib

import numpy as np
import skimage
from scipy import ndimage

LARGE_DIAMETER = 52.0  # px; splits the coins into 4 large and 20 small.
MIN_VISIBLE = 0.9  # Share of a coin's box inside a tile for it to be an object, not a crowd.
SPLIT_Y = 225  # The gap between the third and fourth row of coins.
CATEGORIES = [{"id": 1, "name": "small coin"}, {"id": 2, "name": "large coin"}]


def segment_coins(image: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Boxes (x0, y0, x1, y1) and category ids of the coins in `image`, by watershed."""
    elevation = skimage.filters.sobel(image)
    markers = np.zeros_like(image)
    markers[image < 30] = 1  # Background.
    markers[image > 150] = 2  # Coin.
    coins = ndimage.binary_fill_holes(skimage.segmentation.watershed(elevation, markers) == 2)
    labels, _ = ndimage.label(coins)
    boxes = []
    for region in skimage.measure.regionprops(labels):
        if region.area < 100:  # Specks of the background.
            continue
        y0, x0, y1, x1 = region.bbox
        category = 2 if region.equivalent_diameter_area >= LARGE_DIAMETER else 1
        boxes.append((np.array([x0, y0, x1, y1], np.float64), category))
    return boxes


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts every `stride` px, the last one flush with the end."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def write_split(
    out: pathlib.Path, split: str, region: np.ndarray, offset_y: int,
    boxes: list[tuple[np.ndarray, int]], tile: tuple[int, int], stride: int,
) -> tuple[int, int, int]:
    """Writes the tiles of `region` and their JSON; returns (images, objects, crowds)."""
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    th, tw = tile
    for y0 in tile_origins(region.shape[0], th, stride):
        for x0 in tile_origins(region.shape[1], tw, stride):
            name = f"coins_y{y0 + offset_y:03d}_x{x0:03d}.png"
            skimage.io.imsave(image_dir / name, region[y0:y0 + th, x0:x0 + tw],
                              check_contrast=False)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "width": tw, "height": th})
            origin = np.array([x0, y0 + offset_y, x0, y0 + offset_y], np.float64)
            for box, category in boxes:
                local = box - origin
                clipped = np.clip(local, 0, [tw, th, tw, th])
                area = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
                if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                    continue
                full = (local[2] - local[0]) * (local[3] - local[1])
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                    "bbox": [float(clipped[0]), float(clipped[1]),
                             float(clipped[2] - clipped[0]), float(clipped[3] - clipped[1])],
                    "area": float(area), "iscrowd": int(area < MIN_VISIBLE * full),
                })
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    with open(out / "annotations" / f"{split}.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    crowds = sum(a["iscrowd"] for a in annotations)
    return len(images), len(annotations) - crowds, crowds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder for images/ and annotations/")
    args = parser.parse_args()
    image = skimage.data.coins()
    boxes = segment_coins(image)
    train = [b for b in boxes if b[0][3] <= SPLIT_Y]
    val = [b for b in boxes if b[0][1] >= SPLIT_Y]
    if len(train) + len(val) != len(boxes):
        raise ValueError(f"a coin crosses the split at y={SPLIT_Y}")
    for split, region, offset, split_boxes, tile, stride in (
        ("train", image[:SPLIT_Y], 0, train, (128, 128), 32),
        ("val", image[SPLIT_Y:], SPLIT_Y, val, (image.shape[0] - SPLIT_Y, 128), 32),
    ):
        n_images, n_objects, n_crowds = write_split(
            args.out, split, region, offset, split_boxes, tile, stride)
        large = sum(c == 2 for _, c in split_boxes)
        print(f"{split}: {len(split_boxes)} coins ({large} large), {n_images} tiles, "
              f"{n_objects} objects and {n_crowds} crowd regions")


if __name__ == "__main__":
    main()
