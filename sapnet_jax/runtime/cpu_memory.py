"""Keeping XLA:CPU's per-step memory mapped between steps (CPU-only runs, Linux with glibc).

XLA:CPU allocates each execution's temporaries as one block (2.9 GB for a SAPNet train step
on 12 x 100x100 patches) and frees it when the execution ends. glibc serves a block that large
with mmap and gives it back with munmap, so every step page-faults it in afresh (about 0.7 s
of a 6.4 s step on 2 cores; docs/benchmarks.md).

`reuse_step_memory` makes glibc serve large blocks from its heap and never trim the heap, and
runs executions on the calling thread (the heaps of glibc's per-thread arenas hold at most
64 MB, so a larger block from another thread is mmap-ed regardless). The costs: memory the
process frees stays with it (its resident size stays at its peak), and Python waits for each
CPU computation instead of running ahead. Both are process-wide, so it is applied only where
JAX will compute on the CPU alone: JAX_PLATFORMS says cpu, or no GPU/TPU plugin is installed.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import sys
from importlib import metadata

import jax

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


def accelerator_plugins() -> list[str]:
  """JAX's GPU/TPU plugins installed here (by entry point or jax_plugins module), and libtpu."""
  names = {ep.name for ep in metadata.entry_points(group="jax_plugins")}
  try:
    import jax_plugins  # noqa: PLC0415 - a namespace package that exists only with plugins
    names |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
  except ImportError:
    pass
  if importlib.util.find_spec("libtpu") is not None:
    names.add("libtpu")
  return sorted(names)


def cpu_only() -> tuple[bool, str]:
  """Whether JAX will compute on the CPU alone in this process, and why we think so. Decided
  without starting JAX's backends (the setting must come before the CPU client starts)."""
  platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""
  if platforms:
    return set(platforms.split(",")) == {"cpu"}, f"JAX_PLATFORMS={platforms}"
  plugins = accelerator_plugins()
  if plugins:
    return False, f"accelerator plugins installed: {', '.join(plugins)}"
  return True, "no GPU or TPU plugin installed"


def reuse_step_memory() -> tuple[bool, str]:
  """Applies the settings above to this process on a CPU-only run; returns whether it did and
  why (or why not). Call it before JAX's first computation: the CPU client reads the dispatch
  mode when it starts."""
  only, why = cpu_only()
  if not only:
    return False, f"not a CPU-only run ({why})"
  if not sys.platform.startswith("linux"):
    return False, f"not Linux ({sys.platform})"
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # no glibc (e.g. musl has no mallopt)
    return False, "no glibc"
  # M_TRIM_THRESHOLD = -1 turns trimming off; M_MMAP_MAX = 0 serves every block from the heap.
  if not (mallopt(_M_TRIM_THRESHOLD, -1) and mallopt(_M_MMAP_MAX, 0)):
    return False, "glibc's mallopt refused the settings"
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True, f"CPU-only run ({why})"
