"""The host CPU: process settings for computing on it, applied when maejax is imported (before
JAX, so that its first allocations follow them too), and what it is (`cpu`), for figures."""

from __future__ import annotations

import ctypes
import glob
import os
import platform


def keep_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse instead of giving it back to the system, where
  steps run on the host CPU. Returns whether it did.

  XLA:CPU (and PyTorch) allocate a step's activations and gradients with malloc and free them
  after it; glibc serves blocks over 32 MiB with fresh mmap pages and trims freed heap, so
  each step page-faults its working set in again (450,000 faults and 1-4 s of system time a
  ViT-S/16 train step without remat on 2 cores). No mmap and no trimming keep the main
  arena's pages; the process's memory stays at its peak until it exits. Worker threads keep
  their own arenas: one shared arena removes their faults too, but slows multi-threaded input
  pipelines more than it saves (the demo's training 58 s -> 68 s for 1,500 steps). A no-op off
  glibc, when JAX_PLATFORMS leaves out the CPU, and on machines with GPUs or TPUs, whose steps
  do not run on the host.
  """
  platforms = os.environ.get("JAX_PLATFORMS", "")
  accelerator = (os.path.exists("/dev/nvidia0") or glob.glob("/dev/accel[0-9]*")
                 or glob.glob("/dev/vfio/[0-9]*"))
  if (platform.libc_ver()[0] != "glibc" or accelerator
      or (platforms and "cpu" not in platforms.split(","))):
    return False
  libc = ctypes.CDLL("libc.so.6")
  m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
  return bool(libc.mallopt(m_mmap_max, 0) & libc.mallopt(m_trim_threshold, -1))  # -1: never.


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu(cpuinfo: str | None = None) -> dict:
  """The host CPU as every speed figure names it: model, family/model ids, cores, and the
  vector and matrix features that decide bf16 speed (AMX tiles: Intel Sapphire Rapids and
  later). `cpuinfo`: the text of /proc/cpuinfo (read when None; empty off Linux)."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  first = {}
  for line in cpuinfo.splitlines():
    if not line.strip():
      break  # The first processor's block describes them all.
    key, _, value = line.partition(":")
    first[key.strip()] = value.strip()
  flags = set(first.get("flags", "").split())
  return dict(model=first.get("model name", platform.processor() or "unknown"),
              family=first.get("cpu family"), model_id=first.get("model"),
              cores=os.cpu_count(), **{f: f in flags for f in CPU_FEATURES})
