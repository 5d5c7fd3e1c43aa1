"""Fetching public weight files once into a local cache, verified by SHA-256.

The cache is $SAPNET_JAX_CACHE, else ~/.cache/sapnet_jax. A file already in the cache with
the right hash is used without any network access, so an offline machine works once the file
is placed there (or its path is passed directly).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request

from sapnet_jax.utils import fileio
from sapnet_jax.utils.fileio import atomic_write, cache_dir


class DownloadError(OSError):
  """A weight file that could not be fetched or failed its hash check."""


def sha256_of(path: str) -> str:
  """SHA-256 of a file (a local path or a URI), read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with fileio.open_read(path) as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def cache_path(filename: str) -> str:
  """Where `fetch` keeps `filename`."""
  return os.path.join(cache_dir(), filename)


def fetch(url: str, sha256: str, filename: str) -> str:
  """Returns the path of `filename` in the cache, downloading `url` first if needed."""
  path = cache_path(filename)
  if os.path.exists(path):
    got = sha256_of(path)
    if got != sha256:
      raise DownloadError(
          f"{path}: SHA-256 {got} does not match the expected {sha256}; delete the file to "
          "download it again")
    return path
  digest = hashlib.sha256()
  try:
    with urllib.request.urlopen(url, timeout=60) as response, atomic_write(path) as f:
      for block in iter(lambda: response.read(1 << 20), b""):
        digest.update(block)
        f.write(block)
      if digest.hexdigest() != sha256:
        raise DownloadError(f"{url}: downloaded data has SHA-256 {digest.hexdigest()}, "
                            f"expected {sha256}")
  except DownloadError:
    raise
  except OSError as e:
    raise DownloadError(
        f"could not download {url} ({e}). Without network access, fetch it elsewhere and "
        f"place it at {path}, or pass the file's path instead of the name") from None
  return path
