"""The registered weights names (shipped, or fetched once and SHA-256 checked) and `load`,
which turns a name, a PyTorch `.pth` or a saved checkpoint into a ready model.
`sapnet_jax.pretrained` is its public face (`pretrained.load`, the listing command)."""

from __future__ import annotations

import dataclasses
import os

from flax import nnx

from sapnet_jax.utils import fileio
from sapnet_jax.weights import download, model_files, torch_layout

WEIGHTS_DIR = os.path.dirname(os.path.abspath(__file__))  # the shipped .npz lie beside this file
DEFAULT = "sapnet-rain100h"
_PRENET = "https://github.com/csdwren/PReNet/raw/c5ca7c21bb5e43e78d4027ff0dfa7c4c97995d58/logs"


_SAPNET = "https://github.com/ShenZheng2000/SAPNet-for-image-deraining"
_NO_LICENCE = ("none stated by the official repository (csdwren/PReNet), so the weights are not "
               "redistributed: they are fetched from it")


@dataclasses.dataclass(frozen=True)
class Entry:
  description: str
  licence: str
  file: str | None = None  # shipped inside sapnet_jax/weights
  source: str | None = None  # where a shipped file was converted from
  url: str | None = None  # official PyTorch checkpoint, fetched on first use
  sha256: str | None = None


REGISTRY = {
    "sapnet-rain100h": Entry(
        "official SAPNet (Zheng et al., WACV-W 2022) trained on Rain100H (logs/SAPNet/Model11), "
        "converted", "MIT, copyright (c) 2021 ShenZheng2000 (weights/LICENSE-SAPNet.txt)",
        file="sapnet_rain100h.npz", source=_SAPNET),
    "prenet-rain100h": Entry(
        "official PReNet (Ren et al., CVPR 2019) trained on Rain100H", _NO_LICENCE,
        url=f"{_PRENET}/Rain100H/PReNet6/net_latest.pth",
        sha256="127c0098787c5272f1f8583f6c5202e7ef674f750cd145a1691912a6d9e96210"),
    "prenet-rain100l": Entry(
        "official PReNet trained on Rain100L", _NO_LICENCE,
        url=f"{_PRENET}/Rain100L/PReNet6/net_latest.pth",
        sha256="cb9b743bb33cf6e5c56ba45f8ade93add46266dea9fa582e1934dc5eed942333"),
    "prn-rain100h": Entry(
        "official PRN (PReNet without LSTM) trained on Rain100H", _NO_LICENCE,
        url=f"{_PRENET}/Rain100H/PRN6/net_latest.pth",
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
  return download.fetch(entry.url, entry.sha256, _cache_name(name_or_path))


def _cache_name(name: str) -> str:
  return f"{name}.pth"


WEIGHTS_HELP = (f"registered name ({', '.join(REGISTRY)}; python -m sapnet_jax.pretrained lists "
                f"them), a .pth, .npz or Orbax checkpoint (default: {DEFAULT})")


def display_name(name_or_path: str) -> str:
  """A registered name, or the weights file's (or folder's) own name: what outputs, clients,
  comparison labels and report folders are shown (never the folders it lies in)."""
  if name_or_path in REGISTRY:
    return name_or_path
  # normpath would turn gs://b/x into gs:/b/x; a URI only loses its trailing slashes.
  name = (fileio.basename(name_or_path) if fileio.is_remote(name_or_path)
          else os.path.basename(os.path.normpath(name_or_path)))
  return name or name_or_path


def load(name_or_path: str = DEFAULT, **overrides) -> nnx.Module:
  """Returns a ready model; `overrides` set forward-only config fields (scan, dtype)."""
  path = resolve(name_or_path)
  if path.endswith(".pth"):
    return torch_layout.load_pth(path, **overrides)
  return model_files.load_model(path, **overrides)


@dataclasses.dataclass(frozen=True)
class State:
  """Where a registered name's file is, without fetching it."""
  kind: str  # "shipped", "cached", "wrong hash", "not downloaded", "missing" (a broken install)
  path: str  # the shipped file, or the file in the cache (present or not)

  def describe(self) -> str:
    return {"shipped": f"shipped at {self.path}",
            "cached": f"cached at {self.path} (SHA-256 verified)",
            "wrong hash": f"cached at {self.path} but its SHA-256 does not match: delete it "
                          "to download it again",
            "not downloaded": f"not downloaded (fetched on first use into {self.path})",
            "missing": f"missing from the installed package: {self.path}"}[self.kind]


def state(name: str) -> State:
  """The state of a registered name's file; reads (and hashes) only local files."""
  entry = REGISTRY[name]
  if entry.file is not None:
    path = os.path.join(WEIGHTS_DIR, entry.file)
    return State("shipped" if os.path.exists(path) else "missing", path)
  path = download.cache_path(_cache_name(name))
  if not os.path.exists(path):
    return State("not downloaded", path)
  return State("cached" if download.sha256_of(path) == entry.sha256 else "wrong hash", path)


def listing() -> list[dict]:
  """The registry as plain data, one dict per name (what `--json` prints)."""
  rows = []
  for name, entry in REGISTRY.items():
    st = state(name)
    rows.append({"name": name, "default": name == DEFAULT, "description": entry.description,
                 "shipped": entry.file is not None, "source": entry.source or entry.url,
                 "licence": entry.licence, "sha256": entry.sha256, "state": st.kind,
                 "path": st.path})
  return rows
