"""Fixtures of the training tests."""

import pytest

from maejax.cli import gpu_check


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """Runs of one config compile identical programs: let the later runs load them."""
  with gpu_check.compilation_cache(str(tmp_path_factory.mktemp("xla_cache"))):
    yield
