"""XLA's persistent compilation cache for the commands that de-rain (derain, serve).

Compiling SAPNet for a new image or tile size takes seconds on a CPU; with the cache, the
second run of a size already seen loads the compiled program from disk instead
(docs/benchmarks.md, "Compilation cache"). The cache is $JAX_COMPILATION_CACHE_DIR when the
user set it, else CACHE/jax_compile (CACHE is `fileio.cache_dir()`: $SAPNET_JAX_CACHE or
~/.cache/sapnet_jax). Entries are keyed by JAX on the program, the compiler options, the
device and the jaxlib version, so a stale entry is never used; deleting the folder only costs
the next compile.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

from sapnet_jax.utils import fileio

ENV = "JAX_COMPILATION_CACHE_DIR"
_OPTIONS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs")


def default_dir() -> str:
  return os.environ.get(ENV) or os.path.join(fileio.cache_dir(), "jax_compile")


def enable(directory: str | None = None) -> str:
  """Turns the persistent cache on for this process; returns its folder. Every program is
  cached, however fast it compiled: the commands compile few, and a small one still costs a
  second per start."""
  directory = directory or default_dir()
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  # JAX decides once per process, at its first compile, whether to use the cache; a process
  # that compiled before this call (a notebook, a test session) would silently never use it.
  compilation_cache.reset_cache()
  logging.info("XLA compilation cache: %s", directory)
  return directory


def freeze() -> None:
  """Keeps the cache readable but writes nothing more to it: the server calls it after its
  warm-up, so the folder holds only the programs the operator chose to warm, never one a
  client's request compiled. (JAX writes an entry only if it took at least
  jax_persistent_cache_min_compile_time_secs to compile, and reads them regardless.)"""
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
  logging.info("XLA compilation cache: read only from now on")


def disable() -> None:
  """Turns the persistent cache off for this process, even where $JAX_COMPILATION_CACHE_DIR
  would turn it on (JAX reads that variable itself)."""
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()


@contextlib.contextmanager
def scope(directory: str | None = None, enabled: bool = True) -> Iterator[str | None]:
  """`enable(directory)` (yielding its folder) or `disable()` (yielding None) for the block,
  then the process's previous settings again: a command's `main` called in a long-lived
  process (a test session, a notebook) leaves that process's cache as it found it."""
  saved = {name: getattr(jax.config, name) for name in _OPTIONS}
  try:
    if enabled:
      yield enable(directory)
    else:
      disable()
      yield None
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()
