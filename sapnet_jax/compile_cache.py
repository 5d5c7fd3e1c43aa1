"""XLA's persistent compilation cache for the commands that de-rain (derain, serve).

Compiling SAPNet for a new image or tile size takes seconds on a CPU; with the cache, the
second run of a size already seen loads the compiled program from disk instead. The cache is
$JAX_COMPILATION_CACHE_DIR when the user set it, else CACHE/jax_compile (CACHE is
`fileio.cache_dir()`: $SAPNET_JAX_CACHE or ~/.cache/sapnet_jax). Entries are keyed by JAX on
the program, the compiler options, the device and the jaxlib version, so a stale entry is
never used; deleting the folder only costs the next compile.
"""

from __future__ import annotations

import logging
import os

import jax

from sapnet_jax import fileio

ENV = "JAX_COMPILATION_CACHE_DIR"


def default_dir() -> str:
  return os.environ.get(ENV) or os.path.join(fileio.cache_dir(), "jax_compile")


def enable(directory: str | None = None) -> str:
  """Turns the persistent cache on for this process (before the first compile); returns its
  folder. Every program is cached, however fast it compiled: the commands compile few, and
  a small one still costs a second per start."""
  directory = directory or default_dir()
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.info("XLA compilation cache: %s", directory)
  return directory
