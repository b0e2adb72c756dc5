"""Fixtures of the training tests."""

import jax
import pytest


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """Runs of one config compile identical programs: let the later runs load them."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update(names[1], 0.0)
  jax.config.update(names[2], 0)
  yield
  for n, v in old.items():
    jax.config.update(n, v)
