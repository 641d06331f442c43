"""Preparing a data set: the project's report and one progress bar, TFDS's own output only when
asked for."""

from __future__ import annotations

import re

import pytest

from focaljax import data


@pytest.mark.parametrize("verbose", [False, True])
def test_preparing_shows_one_report_and_bar_unless_verbose(tmp_path, capfd, verbose):
    builder = data.Shapes(config="tiny", data_dir=str(tmp_path))
    data.prepare(builder, verbose=verbose)
    out, err = capfd.readouterr()
    assert builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 32
    assert builder.info.splits["validation"].num_examples == 16
    lines = out.splitlines()
    assert lines[0] == f"Preparing shapes/tiny/1.0.0 in {tmp_path} ..."
    assert re.fullmatch(r"Prepared shapes/tiny/1\.0\.0 in \d+\.\d s", lines[-1])
    tfds_says = "Downloading and preparing dataset"
    if verbose:
        assert any(tfds_says in line for line in lines)
    else:
        assert len(lines) == 2 and tfds_says not in err
        # One bar, counting the 32 + 16 examples of both splits.
        assert "preparing shapes/tiny/1.0.0: 48 examples" in err
        assert "Generating" not in err and "Shuffling" not in err

    data.prepare(builder)  # Prepared: nothing more.
    assert capfd.readouterr() == ("", "")
