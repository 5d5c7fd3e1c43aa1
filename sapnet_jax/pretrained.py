"""Ready-to-use models from a registered name, a PyTorch `.pth`, or a saved checkpoint.

    model = sapnet_jax.pretrained.load("sapnet-rain100h")      # shipped, no download
    model = sapnet_jax.pretrained.load("prenet-rain100h")      # fetched once, SHA-256 checked
    model = sapnet_jax.pretrained.load("path/to/net_latest.pth")  # architecture from its keys
    model = sapnet_jax.pretrained.load("path/to/orbax_dir")     # converter or training output
    model = sapnet_jax.pretrained.load("gs://bucket/w.npz")     # any path may be a URI

Shipped: the official SAPNet weights trained on Rain100H, converted (MIT licence, copyright
ShenZheng2000; see weights/LICENSE-SAPNet.txt). The official PReNet repository has no licence,
so its weights are not shipped; their names download the official files from that repository.
"""

from __future__ import annotations

import dataclasses
import os

from flax import nnx

from sapnet_jax import checkpoint, convert, download, fileio

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
DEFAULT = "sapnet-rain100h"
_PRENET = "https://github.com/csdwren/PReNet/raw/c5ca7c21bb5e43e78d4027ff0dfa7c4c97995d58/logs"


@dataclasses.dataclass(frozen=True)
class Entry:
  description: str
  file: str | None = None  # shipped inside sapnet_jax/weights
  url: str | None = None  # official PyTorch checkpoint, fetched on first use
  sha256: str | None = None


REGISTRY = {
    "sapnet-rain100h": Entry(
        "official SAPNet (Zheng et al., WACV-W 2022) trained on Rain100H; MIT", file="sapnet_rain100h.npz"),
    "prenet-rain100h": Entry(
        "official PReNet (Ren et al., CVPR 2019) trained on Rain100H", url=f"{_PRENET}/Rain100H/PReNet6/net_latest.pth",
        sha256="127c0098787c5272f1f8583f6c5202e7ef674f750cd145a1691912a6d9e96210"),
    "prenet-rain100l": Entry(
        "official PReNet trained on Rain100L", url=f"{_PRENET}/Rain100L/PReNet6/net_latest.pth",
        sha256="cb9b743bb33cf6e5c56ba45f8ade93add46266dea9fa582e1934dc5eed942333"),
    "prn-rain100h": Entry(
        "official PRN (PReNet without LSTM) trained on Rain100H", url=f"{_PRENET}/Rain100H/PRN6/net_latest.pth",
        sha256="f1d56a7df0851eb087652663781d3f34c4c37a4c7ddd9a3f0802abbede1a06c2"),
}


class UnknownWeightsError(ValueError):
  """Neither a registered name nor an existing file or directory."""


def resolve(name_or_path: str) -> str:
  """Returns the file or directory behind a registered name or a path (a URI that exists is
  returned as it is)."""
  entry = REGISTRY.get(name_or_path)
  if entry is None:
    if fileio.exists(name_or_path):
      return name_or_path
    raise UnknownWeightsError(
        f"{name_or_path!r} is neither a registered weights name ({', '.join(REGISTRY)}) nor an "
        "existing .pth file, .npz file or Orbax checkpoint directory")
  if entry.file is not None:
    return os.path.join(WEIGHTS_DIR, entry.file)
  return download.fetch(entry.url, entry.sha256, f"{name_or_path}.pth")


def load(name_or_path: str = DEFAULT, **overrides) -> nnx.Module:
  """Returns a ready model; `overrides` set forward-only config fields (scan, dtype)."""
  path = resolve(name_or_path)
  if path.endswith(".pth"):
    return convert.load_pth(path, **overrides)
  return checkpoint.load_model(path, **overrides)
