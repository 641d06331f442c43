"""Inference: a trained detector on NumPy images (`Predictor`, also `focaljax.Predictor`), and the
workdir of a `python -m train` run read without a checkout (`workdir`: its files, `load_trained`).
"""

from __future__ import annotations

from focaljax.inference.predictor import (
    Detections,
    Predictor,
    batch_sizes,
    check_image,
    tile_windows,
)
from focaljax.inference.workdir import TrainedRun, load_trained

__all__ = [
    "Detections",
    "Predictor",
    "TrainedRun",
    "batch_sizes",
    "check_image",
    "load_trained",
    "tile_windows",
]
