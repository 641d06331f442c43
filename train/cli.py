"""What every `train` entry point does with its command line before the work starts: a bad flag or
a misspelled config field ends in one line naming it and what was expected, and exit status 2,
never a traceback; and JAX's persistent compilation cache goes on (`--compilation_cache`), so that
a rerun, a resumed run or a prediction after training skips the compilations an earlier process
made (BENCHMARKS.md, "Time to the first step").

  app.run(main, flags_parser=cli.parse_flags)
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import flags, logging

from focaljax.errors import ConfigError

USAGE_ERROR = 2  # The exit status of a command-line mistake, as absl and argparse use.

flags.DEFINE_bool(
    "verbose", False,
    "Show the libraries' info logs (TFDS, orbax) and TFDS's own output while preparing data.",
)


def _default_compilation_cache() -> str:
    """$JAX_COMPILATION_CACHE_DIR when set, else focaljax's folder of the user's cache."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(home, "focaljax", "jax")


flags.DEFINE_string(
    "compilation_cache", _default_compilation_cache(),
    "Folder of JAX's persistent compilation cache, shared by every run and entry point; "
    "'' turns it off.",
)


def use_compilation_cache(folder: str) -> None:
    """Turns JAX's persistent compilation cache on in `folder` (created when first written), or
    off for ''. JAX keeps only compilations of at least a second
    (`jax_persistent_cache_min_compile_time_secs`), keyed by the program, the compiler options and
    the devices, so a changed program is compiled anew, never mixed up."""
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(folder) if folder else None)


def quiet_libraries() -> None:
    """Libraries log from warnings up, unless `--verbose` or an explicit `--verbosity`: the
    entry point's own report and progress bar are its output."""
    if flags.FLAGS.verbose:
        logging.set_verbosity(logging.INFO)
    elif not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def fail(message: str) -> None:
    """Prints `error: message` to stderr and exits with `USAGE_ERROR`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def _config_path(argv: Sequence[str]) -> str | None:
    """The value of `--config` in `argv` (either spelling), without a `:argument` suffix."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value.split(":", 1)[0]
    return None


def load_config(path: str, *, flag: str = "--config") -> ml_collections.ConfigDict:
    """`get_config()` of the Python file at `path`; `ConfigError` naming `flag` and the file for
    a missing file, anything the file raises, or something other than a ConfigDict."""
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path}: no such file; expected a configs/*.py file")
    spec = importlib.util.spec_from_file_location(f"_cli_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception as error:  # The user's file: whatever it raises is reported in one line.
        raise ConfigError(f"{flag} {path}: {type(error).__name__}: {error}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{flag} {path}: get_config() returned {type(config).__name__}, "
                          "expected an ml_collections.ConfigDict")
    return config


def set_fields(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of `config` with each dotted field of `overrides` (`{"model.loss.gamma": 2.0}`)
    set, as `--config.model.loss.gamma=2.0` sets it; a field the config lacks is a
    `ConfigError` (`unknown_field`'s message), never added. A mapping value replaces the field
    with a ConfigDict of it."""
    config = copy.deepcopy(config)
    for dotted, value in overrides.items():
        message = unknown_field(config, dotted)
        if message:
            raise ConfigError(f"override {dotted}: {message}")
        *parents, name = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if isinstance(value, Mapping):
            value = ml_collections.ConfigDict(dict(value))
        try:
            node[name] = value
        except TypeError as error:
            raise ConfigError(f"override {dotted}={value!r}: {error}") from None
    return config


def _load(path: str) -> ml_collections.ConfigDict | None:
    try:
        return load_config(path)
    except ConfigError as error:
        fail(str(error))
    return None


def unknown_field(config: ml_collections.ConfigDict, dotted: str) -> str | None:
    """None if `dotted` (e.g. `model.loss.gamma`) is a field of `config`, else a message naming
    the first missing part and the closest valid names at that level."""
    node = config
    parts = dotted.split(".")
    for depth, name in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{where} is a {type(node).__name__}, it has no field {name!r}"
        if name not in node:
            valid = sorted(node.keys())
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(close)}?" if close
                    else f"valid fields of {where}: {', '.join(valid)}")
            return f"{where} has no field {name!r}; {hint}"
        node = node[name]
    return None


def check_config_overrides(argv: Sequence[str]) -> None:
    """Exits with one line if the `--config` file of `argv` is missing or fails to load, or an
    `--config.a.b=value` names no field of the config."""
    path = _config_path(argv)
    if path is None:
        return
    config = _load(path)
    overrides = [arg[len("--config."):].split("=", 1)[0] for arg in argv
                 if arg.startswith("--config.")]
    for dotted in overrides:
        message = unknown_field(config, dotted)
        if message:
            fail(f"--config.{dotted}: {message}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`, with every mistake
    reported in one line."""
    check_config_overrides(argv)
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:  # absl puts one line per bad flag.
        fail("; ".join(line.strip() for line in str(error).splitlines() if line.strip()))
    use_compilation_cache(flags.FLAGS.compilation_cache)
    return remaining
