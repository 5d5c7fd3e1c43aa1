"""Keeping XLA:CPU's per-step memory mapped between steps (Linux with glibc).

XLA:CPU allocates each execution's temporaries as one block (2.9 GB for a SAPNet train step
on 12 x 100x100 patches) and frees it when the execution ends. glibc serves a block that large
with mmap and gives it back with munmap, so every step page-faults its 2.9 GB in afresh: 707K
page faults and 1.4 s of kernel time per step, about 0.7 s of a 6.4 s step on 2 cores.

`reuse_step_memory` makes glibc serve large blocks from its heap and never trim the heap, and
runs executions on the calling thread (the heaps of glibc's per-thread arenas hold at most
64 MB, so a larger block from another thread is mmap-ed regardless). The block is then reused:
about 750 page faults per step, and the step takes 5.5-5.7 s instead of 6.3-6.7 s
(benchmarks/bench_train.py, 2-core EPYC). The costs: memory the process frees stays with it
(its resident size stays at its peak, which training reaches in the first step anyway), and
Python waits for each CPU computation instead of running ahead (JAX's async dispatch on CPU;
the input pipeline's threads keep prefetching meanwhile).
"""

from __future__ import annotations

import ctypes
import sys

import jax

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


def reuse_step_memory() -> bool:
  """Applies the settings above to this process; False (and nothing changed) where the C
  library is not glibc. Call it before JAX's first computation: the CPU client reads the
  dispatch mode when it starts (called later, the step measured as slow as without it)."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # no glibc (e.g. musl has no mallopt)
    return False
  # M_TRIM_THRESHOLD = -1 turns trimming off; M_MMAP_MAX = 0 serves every block from the heap.
  if not (mallopt(_M_TRIM_THRESHOLD, -1) and mallopt(_M_MMAP_MAX, 0)):
    return False
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True
