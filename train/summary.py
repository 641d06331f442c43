"""Metric logging for the trainer: TensorBoard event files and a `metrics.jsonl`, side by side.

TensorBoard's summary ops live in the `tensorboard` package, which `tensorflow-cpu` no longer pulls
in; `tf.summary.write` with the scalars/images plugin metadata writes the same event records
without it, and TensorBoard reads them as ordinary scalar and image summaries.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import summary_pb2


def _metadata(plugin: str) -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
    )


def _json_number(value: float) -> float | None:
    # JSON has no NaN; an undefined metric (e.g. APl without large objects) is written as null.
    return None if math.isnan(value) or math.isinf(value) else value


class SummaryWriter:
    """Writes scalars to `workdir/metrics.jsonl` (one JSON object per call) and to TensorBoard
    event files under `workdir`; images to TensorBoard only."""

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self._writer = tf.summary.create_file_writer(workdir)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = {name: float(value) for name, value in scalars.items()}
        record = {"step": int(step), **{k: _json_number(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        with self._writer.as_default():
            for name, value in values.items():
                tf.summary.write(
                    name, tf.constant(value, tf.float32), step=step, metadata=_metadata("scalars")
                )
        self._writer.flush()

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image`: uint8 `[H, W, 3]`."""
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
        height, width = image.shape[:2]
        # The images plugin's tensor: [width, height, encoded image...] as strings.
        tensor = tf.constant([str(width), str(height), buffer.getvalue()], tf.string)
        with self._writer.as_default():
            tf.summary.write(name, tensor, step=step, metadata=_metadata("images"))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self._jsonl.close()


class NullWriter:
    """The `SummaryWriter` of the processes other than 0 in a multi-process run: writes nothing,
    so that the run has one set of logs."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        del step, scalars

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        del step, name, image

    def close(self) -> None:
        pass
