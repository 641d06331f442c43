"""Sphinx configuration of the focaljax documentation: `make docs` builds it into docs/_build/html.

The API pages are generated from the docstrings (Google style, through napoleon); the prose pages
are MyST Markdown. Everything needed is a Python package (the `docs` extra), so the build runs
offline.
"""

import functools
import inspect
import operator
import os
import sys
import types
import typing
from collections import abc

import jax.typing

# `configs/` is run from a checkout, not installed; the configs page imports it from there.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import focaljax  # noqa: E402

project = "focaljax"
author = "focaljax authors"
copyright = "focaljax authors"
release = version = focaljax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "study_results"]  # The study's own outputs (README links them).
# The docstrings write code in single backticks, Markdown-style.
default_role = "code"

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# An `Attributes:` section lists the fields of a dataclass or Flax module as a field list, like
# `Args:` (so `min_level, max_level: ...` documents both); as attribute entries they would collide
# with the dataclass fields that autodoc documents.
napoleon_custom_sections = [("Attributes", "params_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Defaults as the source writes them (`BoxCoder()`, `DEFAULT_SCALES`), not as their values' repr.
autodoc_preserve_defaults = True

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"focaljax {release}"


def _configs_as_written(app, what, name, obj, options, lines):
    """Shows a `configs/*.py` docstring as a literal block: they are plain text, laid out to be read
    in the file (big_vision's habit), not reStructuredText."""
    if what == "module" and name.startswith("configs.") and lines:
        lines[:] = ["::", ""] + [f"   {line}" if line else "" for line in lines]


class ArrayLike:
    """Stands for `jax.typing.ArrayLike` in signatures, which would otherwise list every type of its
    union."""


ArrayLike.__module__ = "jax.typing"
_ARRAY_LIKE = set(typing.get_args(jax.typing.ArrayLike))


def _shorten(annotation):
    """`annotation` with the members of `jax.typing.ArrayLike` in a union replaced by `ArrayLike`,
    also inside a generic such as `Mapping[int, ArrayLike]`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if set(args) >= _ARRAY_LIKE:
            args = [ArrayLike, *(a for a in args if a not in _ARRAY_LIKE)]
        return functools.reduce(operator.or_, [_shorten(a) for a in args])
    if isinstance(annotation, types.GenericAlias) and annotation.__origin__ is not abc.Callable:
        return types.GenericAlias(annotation.__origin__, tuple(_shorten(a) for a in args))
    return annotation


def _short_array_like(app, obj, bound_method):
    """Rewrites the annotations of a documented function, in the Sphinx process only."""
    if not inspect.isfunction(obj):
        return
    try:
        hints = typing.get_type_hints(obj)
    except Exception:  # A hint that does not resolve is left to autodoc as written.
        return
    obj.__annotations__ = {name: _shorten(hint) for name, hint in hints.items()}


def setup(app):
    app.connect("autodoc-process-docstring", _configs_as_written)
    app.connect("autodoc-before-process-signature", _short_array_like)
