"""maejax keeps freed memory for the next step instead of page-faulting it in again."""

import os
import subprocess
import sys

import pytest

# Allocates 64 MiB with malloc, writes it, frees it; then again, counting the page faults.
_SECOND_ALLOCATION_FAULTS = """
import ctypes, resource
import maejax
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
n = 64 * 2**20
def touch():
  p = libc.malloc(n); ctypes.memset(p, 1, n); return p
libc.free(touch())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
libc.free(touch())
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(platforms):
  env = {**os.environ, "JAX_PLATFORMS": platforms}
  out = subprocess.run([sys.executable, "-c", _SECOND_ALLOCATION_FAULTS], env=env,
                       capture_output=True, text=True, check=True).stdout
  return int(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_maejax_keeps_freed_memory_on_cpu_hosts():
  pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
  assert _faults("cpu") < pages // 100  # Reused pages: no faults.
  # Left alone where steps do not run on the host: glibc maps fresh pages again (in 4 KiB
  # faults, unless the kernel backs every mapping with huge pages).
  thp = "/sys/kernel/mm/transparent_hugepage/enabled"
  if not (os.path.exists(thp) and "[always]" in open(thp).read()):
    assert _faults("tpu") > pages // 2
