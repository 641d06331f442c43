"""The user-error types: a mistake in what the user gave (a config field, a flag, a data or weight
file), as opposed to a bug.

An entry point (`python -m train`, `train.predict`, `train.prepare_data`, `train.study`) prints
these, and only these, as one line without a traceback; any other exception keeps its traceback.
Both are ValueErrors (and a missing file a FileNotFoundError too), so code that catches those
still does.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A value the user gave that focaljax cannot use; the message names it and what was
    expected."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file or folder the user named that does not exist, or lacks what was expected."""
