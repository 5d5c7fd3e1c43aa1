"""Pairing rainy and clean image files by name.

Public de-raining sets name pairs in a few ways: `rainy/001.png` + `clean/001.png`,
`rain-001.png` + `norain-001.png` (Rain100H/L, Rain12), `001_rain.png` + `001_clean.png`.
A file's pairing key is its stem, lower-cased, without such rain/clean markers.
"""

from __future__ import annotations

import dataclasses
import os
import re

from sapnet_jax.data.imageio import list_images

_MARKERS = re.compile(r"^(no)?rain(y)?[-_]|[-_](no)?rain(y)?$|^(clean|gt)[-_]|[-_](clean|gt)$")


def pair_key(filename: str) -> str:
  """'rain-001.png' -> '001'; 'norain-001.png' -> '001'; '001.png' -> '001'."""
  return _MARKERS.sub("", os.path.splitext(os.path.basename(filename))[0].lower())


@dataclasses.dataclass(frozen=True)
class Pairing:
  pairs: list[tuple[str, str]]  # (rainy path, clean path), sorted by rainy name
  rainy_only: list[str]  # rainy files without a clean counterpart
  clean_only: list[str]


def _by_key(files: list[str], folder: str) -> dict[str, str]:
  keyed: dict[str, str] = {}
  for path in files:
    key = pair_key(path)
    if key in keyed:
      raise ValueError(f"{folder}: {os.path.basename(keyed[key])} and {os.path.basename(path)} "
                       "have the same pairing key; rename one")
    keyed[key] = path
  return keyed


def pair_folders(rainy_dir: str, clean_dir: str) -> Pairing:
  """Matches the image files of two folders by `pair_key`."""
  rainy = _by_key(list_images(rainy_dir), rainy_dir)
  clean = _by_key(list_images(clean_dir), clean_dir)
  pairs = sorted((rainy[k], clean[k]) for k in rainy.keys() & clean.keys())
  return Pairing(pairs, sorted(rainy[k] for k in rainy.keys() - clean.keys()),
                 sorted(clean[k] for k in clean.keys() - rainy.keys()))
