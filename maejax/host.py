"""Process settings for computing on the host CPU, applied when maejax is imported (before
JAX, so that its first allocations follow them too)."""

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
