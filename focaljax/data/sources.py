"""Checks on the source files of real data sets, shared by the builders of `focaljax.data.coco`,
`focaljax.data.voc` and `focaljax.data.coco_folder`.

Nothing read from a source is lost or changed silently. A missing directory or file is an error
that names the path and shows the layout expected; an image that cannot be decoded, or whose size
differs from its annotation, is an error that names the file. Boxes reaching outside their image
are clipped to it and boxes left without area are dropped; both are counted per split in a
`SplitReport`, logged when the split is written, returned by `prepare_data` and kept in the
prepared data set's `info.metadata["source_report"]` (read back with `source_reports`).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping

import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from focaljax.errors import ConfigError, MissingFileError

# Pixel layouts TensorFlow's decode_image turns into RGB exactly as stored; other images (CMYK
# JPEG, WebP, TIFF, GIF, ...) are decoded here and stored re-encoded.
_DECODABLE = {"JPEG": ("L", "RGB"), "PNG": None}
_MAX_NOTES = 10


@dataclasses.dataclass
class SplitReport:
    """What preparing one split read and what it changed.

    Attributes:
      images: examples written, with and without objects.
      images_without_objects: examples written with no object at all.
      objects: objects written, ignore regions included.
      ignore_regions: objects written as ignore regions (`is_crowd`: COCO crowd, VOC difficult).
      clipped_boxes: boxes that reached outside their image, written clipped to it.
      dropped_boxes: boxes with no area inside their image, not written.
      reencoded_images: images TensorFlow cannot decode as stored (e.g. CMYK JPEG, WebP), written
        decoded and re-encoded.
      notes: the first few boxes clipped or dropped and images re-encoded, one line each.
    """

    images: int = 0
    images_without_objects: int = 0
    objects: int = 0
    ignore_regions: int = 0
    clipped_boxes: int = 0
    dropped_boxes: int = 0
    reencoded_images: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    def note(self, line: str) -> None:
        if len(self.notes) < _MAX_NOTES:
            self.notes.append(line)

    def summary(self) -> str:
        return (
            f"{self.images} images ({self.images_without_objects} without objects), "
            f"{self.objects} objects ({self.ignore_regions} ignore regions); "
            f"{self.clipped_boxes} boxes clipped to their image, {self.dropped_boxes} boxes "
            f"without area dropped, {self.reencoded_images} images re-encoded"
        )


def log_report(builder: tfds.core.DatasetBuilder, split: str, report: SplitReport) -> None:
    """Logs `report`, and records it in `builder.info.metadata["source_report"][split]`."""
    changed = report.clipped_boxes or report.dropped_boxes or report.reencoded_images
    log = logging.warning if changed else logging.info
    lines = "".join(f"\n  {line}" for line in report.notes)
    more = " (first ones below)" if report.notes and changed else ""
    log("%s %s: %s%s%s", builder.info.full_name, split, report.summary(), more, lines)
    builder.info.metadata.setdefault("source_report", {})[split] = dataclasses.asdict(report)


def source_reports(builder: tfds.core.DatasetBuilder) -> dict[str, SplitReport]:
    """The `SplitReport` of each split of a data set prepared by the builders of this package."""
    reports = (builder.info.metadata or {}).get("source_report", {})
    return {split: SplitReport(**fields) for split, fields in reports.items()}


def missing(path: epath.PathLike, what: str, layout: str) -> MissingFileError:
    """The error for a source path that does not exist."""
    return MissingFileError(f"{what} {path} does not exist. Expected this layout:\n{layout}")


def source_folder(
    source_dir: epath.PathLike | None,
    dl_manager: tfds.download.DownloadManager,
    *,
    what: str,
    layout: str,
) -> epath.Path:
    """`source_dir`, else TFDS's manual folder (`<data_dir>/downloads/manual`), checked to exist."""
    if not source_dir:
        try:
            return dl_manager.manual_dir
        except AssertionError as error:  # TFDS's way of saying the manual folder is empty.
            raise MissingFileError(
                f"{what} is not prepared and no source folder was given: set "
                "dataset.builder_kwargs.source_dir (--source_dir of train.prepare_data), or fill "
                f"TFDS's manual folder. {error}"
            ) from None
    path = epath.Path(source_dir).expanduser()
    if not path.is_dir():
        raise missing(path, f"{what} folder", layout)
    return path


def read_image(
    path: epath.PathLike,
    *,
    size: tuple[int, int] | None,
    referenced_by: str,
    keep_formats: tuple[str, ...],
    reencode_format: str,
    report: SplitReport,
) -> tuple[bytes, tuple[int, int]]:
    """The encoded bytes of the image file `path`, checked to decode, and its (width, height).

    Args:
      path: the image file.
      size: (width, height) the annotation gives it, or None not to check.
      referenced_by: the annotation that names the image, for error messages.
      keep_formats: PIL formats stored as they are when TensorFlow decodes them ("JPEG", "PNG").
      reencode_format: "JPEG" or "PNG", for any other image.
      report: counts re-encoded images.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file is not a decodable image, or its size is not `size`.
    """
    path = epath.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"image {path}, named in {referenced_by}, does not exist") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, mode, actual = image.format, image.mode, image.size
            if image_format == "JPEG":
                # Decoding at 1/8 scale still reads the whole file, finding truncated ones quickly.
                image.draft(mode, (max(1, actual[0] // 8), max(1, actual[1] // 8)))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ConfigError(f"cannot decode the image {path} (named in {referenced_by}): {error}") \
            from None
    if size is not None and tuple(actual) != tuple(size):
        hint = ""
        if tuple(actual) == tuple(size)[::-1]:
            hint = " (width and height swapped: was the annotation made on the EXIF-rotated image?)"
        raise ConfigError(
            f"image {path} is {actual[0]}x{actual[1]} (width x height), but {referenced_by} says "
            f"{size[0]}x{size[1]}{hint}"
        )
    modes = _DECODABLE.get(image_format, ())
    if image_format in keep_formats and (modes is None or mode in modes):
        return data, actual
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=reencode_format)
    report.reencoded_images += 1
    report.note(f"{path}: {image_format} {mode} image re-encoded as {reencode_format} RGB")
    return buffer.getvalue(), actual


def clip_box(
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    *,
    where: str,
    report: SplitReport,
) -> tfds.features.BBox | None:
    """The xyxy pixel `box` clipped to the image, as a normalized tfds BBox; None (and counted as
    dropped) when nothing of it with area lies inside. `where` names it in the report's notes."""
    xmin, ymin, xmax, ymax = box
    clipped = (
        min(max(xmin, 0.0), width),
        min(max(ymin, 0.0), height),
        min(max(xmax, 0.0), width),
        min(max(ymax, 0.0), height),
    )
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        report.dropped_boxes += 1
        report.note(f"{where}: box {_format(box)} has no area inside the {width}x{height} image; "
                    "dropped")
        return None
    if clipped != tuple(box):
        report.clipped_boxes += 1
        report.note(f"{where}: box {_format(box)} clipped to {_format(clipped)} ({width}x{height} "
                    "image)")
    xmin, ymin, xmax, ymax = clipped
    return tfds.features.BBox(
        ymin=ymin / height, xmin=xmin / width, ymax=ymax / height, xmax=xmax / width
    )


def count_objects(report: SplitReport, objects: list[Mapping]) -> None:
    """Counts one image's written `objects` (each with an `is_crowd` flag) in `report`."""
    report.images += 1
    report.images_without_objects += not objects
    report.objects += len(objects)
    report.ignore_regions += sum(bool(o["is_crowd"]) for o in objects)


def _format(box) -> str:
    return "[" + ", ".join(f"{float(c):g}" for c in box) + "] (xyxy)"
