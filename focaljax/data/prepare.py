"""Preparing a TFDS builder from local files, with one report and one progress bar.

TFDS's `download_and_prepare` prints "Downloading and preparing dataset Unknown size ..." and
"... downloaded and prepared ..." although nothing is downloaded here, draws a bar for every split
and every shuffle, and logs at INFO. :func:`prepare` shows instead one line before, one progress
bar counting the examples of every split, and one line after; TFDS's own output comes back with
``verbose=True`` (the entry points' ``--verbose``, or absl's verbosity at INFO).
"""

from __future__ import annotations

import contextlib
import io
import logging as python_logging
import time
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from tqdm import tqdm

# Python loggers whose INFO lines a preparation would print.
_QUIET_LOGGERS = ("absl", "tensorflow_datasets")


def prepare(builder: tfds.core.DatasetBuilder, *, verbose: bool | None = None) -> None:
    """Prepares `builder` (nothing is downloaded) unless it is prepared.

    Args:
      builder: a TFDS builder of local sources, e.g. `focaljax.data.Shapes`.
      verbose: show TFDS's own prints, bars and INFO logs; default: when absl's verbosity is at
        INFO or more.
    """
    if builder.is_prepared():
        return
    if verbose is None:
        verbose = logging.get_verbosity() >= logging.INFO
    print(f"Preparing {builder.info.full_name} in {builder.data_dir_root} ...", flush=True)
    start = time.perf_counter()
    download_config = tfds.download.DownloadConfig(try_download_gcs=False)
    if verbose:
        builder.download_and_prepare(download_config=download_config)
    else:
        with _quiet_tfds(), tqdm(desc=f"preparing {builder.info.full_name}", unit=" examples",
                                 dynamic_ncols=True) as bar:
            _count_examples(builder, bar)
            builder.download_and_prepare(download_config=download_config)
    print(f"Prepared {builder.info.full_name} in {time.perf_counter() - start:.1f} s", flush=True)


def _count_examples(builder: tfds.core.DatasetBuilder, bar: tqdm) -> None:
    """Makes the example generators of `builder`'s splits advance `bar`, for this builder
    object only (the class is not changed)."""
    split_generators = builder._split_generators

    def counted(split: str, examples: Iterator[Any]) -> Iterator[Any]:
        for example in examples:
            bar.set_postfix_str(split, refresh=False)
            bar.update()
            yield example

    def wrapped(dl_manager, **kwargs):
        generators = split_generators(dl_manager, **kwargs)
        return {split: counted(split, examples) for split, examples in generators.items()}

    builder._split_generators = wrapped


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """TFDS's prints (stdout), progress bars and INFO logs off; the progress bar of the caller,
    on stderr, stays."""
    loggers = [python_logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    tfds.display_progress_bar(False)
    try:
        for logger in loggers:
            logger.setLevel(max(logger.level, python_logging.WARNING))
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
