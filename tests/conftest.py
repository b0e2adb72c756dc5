"""Tests run on an emulated 8-device CPU mesh (set before JAX is imported)."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# As every command does: keep freed memory for the next step (maejax.host.keep_freed_memory).
import maejax  # noqa: E402,F401
