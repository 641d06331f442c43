"""The documentation site: it builds with warnings as errors, its API pages list every public loss
and op, and each of those has an `Examples:` block whose doctest passes."""

import doctest
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from focaljax import losses, ops

DOCS = Path(__file__).resolve().parents[1] / "docs"
# The API page of each package whose `__all__` must be documented in full.
API_PAGES = {losses: "losses.html", ops: "ops.html"}


def _public_callables(module):
    """`(qualified name, object)` of the functions and classes in `module.__all__` (constants have
    no docstring of their own to hold an example)."""
    return [
        (f"{module.__name__}.{name}", getattr(module, name))
        for name in module.__all__
        if callable(getattr(module, name))
    ]


PUBLIC = [item for module in API_PAGES for item in _public_callables(module)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The html site built from docs/ with `-W`, as `make docs` builds it, and the build's log."""
    out = tmp_path_factory.mktemp("docs")
    result = subprocess.run(
        [
            sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
            "-d", str(out / "doctrees"), str(DOCS), str(out / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, out / "html"


def test_site_builds_without_warnings(site):
    result, html = site
    assert result.returncode == 0, result.stdout + result.stderr
    assert (html / "index.html").is_file()


def test_api_pages_document_every_public_function(site):
    result, html = site
    missing = []
    for module, page in API_PAGES.items():
        if not (html / page).is_file():
            pytest.fail(f"the build wrote no {page}:\n{result.stdout}{result.stderr}")
        text = (html / page).read_text(encoding="utf-8")
        missing += [name for name, _ in _public_callables(module) if f'id="{name}"' not in text]
    assert not missing, f"not documented on their API page: {missing}"


def _doctests(obj, name):
    """The doctests of `obj`'s own docstring, run in the namespace of the module defining it."""
    module = inspect.getmodule(obj)
    finder = doctest.DocTestFinder(recurse=False)
    return finder.find(obj, name, module=module, globs=dict(vars(module)))


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_function_has_an_example_that_runs(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Examples:" in doc and ">>>" in doc, f"{name}'s docstring has no `Examples:` doctest"
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in _doctests(obj, name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"no doctest found in {name}'s docstring"
    assert results.failed == 0, "".join(report)
