"""The data tests' small prepared "shapes" data set, for the detector tests that read a data set
(the anchor-coverage report)."""

from tests.data.conftest import small_builder, small_data_dir

__all__ = ["small_builder", "small_data_dir"]
