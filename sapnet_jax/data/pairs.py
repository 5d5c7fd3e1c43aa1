"""Pairing rainy and clean image files by name: the one module that does it.

Two ways in, sharing the key, order and duplicate rules below:

* `pair_folders(rainy_dir, clean_dir)`: two folders whose names pair by `pair_key`, a file's
  stem lower-cased without rain/clean markers (`rain-001.png` + `norain-001.png`,
  `001_rain.png` + `001_clean.png`, `a.jpg` + `a.png`). Lenient: files without a partner come
  back as lists, for `evaluate` to report or skip. The folders may be URIs (gs://...).
* `Layout` / `find_pairs`: the folder layouts of the public de-raining archives, for the TFDS
  builders. Every archive lays a split out its own way (rainy and clean side by side with
  `rain-`/`norain-` prefixes, `rainy/` + `clean/` sub-folders with equal names, one clean image
  for fourteen rainy ones...). A `Layout` says where the rainy and the clean files of one split
  are and how a name turns into the key that pairs them; `find_pairs` tries a builder's layouts
  in order and takes the first that matches, so a wrong folder fails with a message that lists
  what was expected. Strict, because a silently dropped or mismatched pair corrupts a
  benchmark: every image file in the folders a layout reads must match its name pattern, every
  rainy key must have a clean file and every clean file a rainy one, and no key may occur twice
  unless the layout allows many rainy images per clean one (Rain1400). Errors list the files.
  These take local folders only: the builders walk unpacked archives with os calls.

In both, purely numeric keys compare as numbers (`rain-1.png` pairs with `norain-001.png`) and
pairs come in the natural order of the rainy names (2 before 10).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Sequence

from sapnet_jax.data.imageio import image_names, is_image_name, natural_key
from sapnet_jax.utils import fileio

_MAX_LISTED = 12
_MARKERS = re.compile(r"^(no)?rain(y)?[-_]|[-_](no)?rain(y)?$|^(clean|gt)[-_]|[-_](clean|gt)$")


class LayoutError(ValueError):
  """A folder that does not hold any supported layout, or pairs that do not match up."""


def pair_key(filename: str) -> str:
  """'rain-001.png' -> '001'; 'norain-001.png' -> '001'; '001.png' -> '001'."""
  return _MARKERS.sub("", os.path.splitext(os.path.basename(filename))[0].lower())


def _key(text: str) -> str:
  # Numeric keys compare as numbers: "001" and "1" are the same image.
  return str(int(text)) if text.isdigit() else text


def _listing(names: Iterable[str]) -> str:
  names = sorted(names)
  shown = ", ".join(names[:_MAX_LISTED])
  more = len(names) - _MAX_LISTED
  return shown + (f" ... and {more} more" if more > 0 else "")


def _group(keyed: dict[str, str], folder: str, role: str, unique: bool) -> dict[str, list[str]]:
  """key -> names from name -> key; LayoutError naming the files when `unique` and two names
  share a key (pairing them would be a guess)."""
  grouped: dict[str, list[str]] = {}
  for name, key in keyed.items():
    grouped.setdefault(key, []).append(name)
  dupes = [sorted(v, key=natural_key) for v in grouped.values() if len(v) > 1]
  if unique and dupes:
    shown = "; ".join(" and ".join(v) for v in dupes[:_MAX_LISTED])
    raise LayoutError(f"{folder}: {role} files with the same pairing key (rename one): {shown}")
  return grouped


# ---- two folders, names paired by pair_key -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Pairing:
  pairs: list[tuple[str, str]]  # (rainy path, clean path), natural order of the rainy names
  rainy_only: list[str]  # rainy files without a clean counterpart
  clean_only: list[str]


def _by_pair_key(folder: str, role: str) -> dict[str, str]:
  if not fileio.is_dir(folder):
    raise FileNotFoundError(f"{folder}: no such folder")
  grouped = _group({n: _key(pair_key(n)) for n in image_names(folder)}, folder, role, True)
  return {k: fileio.join(folder, v[0]) for k, v in grouped.items()}


def pair_folders(rainy_dir: str, clean_dir: str) -> Pairing:
  """Matches the image files of two folders (local or URIs) by `pair_key`."""
  rainy = _by_pair_key(rainy_dir, "rainy")
  clean = _by_pair_key(clean_dir, "clean")

  def ordered(paths: Iterable[str]) -> list[str]:
    return sorted(paths, key=lambda p: natural_key(fileio.basename(p)))
  by_rainy = {rainy[k]: clean[k] for k in rainy.keys() & clean.keys()}
  return Pairing([(r, by_rainy[r]) for r in ordered(by_rainy)],
                 ordered(rainy[k] for k in rainy.keys() - clean.keys()),
                 ordered(clean[k] for k in clean.keys() - rainy.keys()))


# ---- archive layouts --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Pair:
  """One example: the rainy file, its clean file (None for unlabelled data) and a name.

  `name` is the rainy file's path relative to the folder it was found in, with `/`
  separators: unique within a split and stable across machines.
  """

  rainy: str
  clean: str | None
  name: str


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where one split keeps its files and how names pair.

  `rainy_dir` / `clean_dir` are relative to the split folder ("" = the folder itself).
  `rainy_name` / `clean_name` are regular expressions matched against the whole file stem
  (name without extension); their group `key` pairs a rainy file with a clean one. Purely
  numeric keys compare as numbers, so `rain-1.png` pairs with `norain-001.png`.
  """

  description: str
  rainy_dir: str
  clean_dir: str
  rainy_name: str = r"(?P<key>.+)"
  clean_name: str = r"(?P<key>.+)"
  many_rainy_per_clean: bool = False

  def expected(self) -> str:
    return self.description


# Layouts that several builders accept: sub-folders holding equally named files.
SAME_NAME_LAYOUTS = (
    Layout("rainy/NAME + clean/NAME", "rainy", "clean"),
    Layout("rain/NAME + norain/NAME (or rain/rain-N + norain/norain-N)", "rain", "norain",
           r"(?:rain-)?(?P<key>.+)", r"(?:norain-)?(?P<key>.+)"),
    Layout("input/NAME + target/NAME (MPRNet/Restormer test sets)", "input", "target"),
)


def _matches(pattern: str, names: Sequence[str]) -> dict[str, str]:
  """file name -> key for the names whose stem matches `pattern` as a whole."""
  regex = re.compile(pattern)
  out = {}
  for name in names:
    m = regex.fullmatch(os.path.splitext(name)[0])
    if m:
      out[name] = _key(m.group("key"))
  return out


def _applies(folder: str, layout: Layout) -> bool:
  rainy_dir = os.path.join(folder, layout.rainy_dir)
  clean_dir = os.path.join(folder, layout.clean_dir)
  if not (os.path.isdir(rainy_dir) and os.path.isdir(clean_dir)):
    return False
  return bool(_matches(layout.rainy_name, image_names(rainy_dir))) and bool(
      _matches(layout.clean_name, image_names(clean_dir)))


def pairs_for_layout(folder: str, layout: Layout) -> list[Pair]:
  """Pairs the files of `folder` laid out as `layout`; raises LayoutError naming any file
  that matches no pattern, any key without a partner, and any duplicated key."""
  rainy_dir = os.path.join(folder, layout.rainy_dir)
  clean_dir = os.path.join(folder, layout.clean_dir)
  rainy_files = image_names(rainy_dir)
  clean_files = image_names(clean_dir) if clean_dir != rainy_dir else rainy_files
  rainy = _matches(layout.rainy_name, rainy_files)
  clean = _matches(layout.clean_name, clean_files)
  if rainy_dir == clean_dir:
    both = set(rainy) & set(clean)
    if both:
      raise LayoutError(f"{folder}: these files match both the rainy and the clean name "
                        f"pattern of the layout '{layout.description}': {_listing(both)}")
  known = set(rainy) | set(clean)
  strays = [os.path.join(layout.rainy_dir, f) for f in rainy_files if f not in known]
  if clean_dir != rainy_dir:
    strays += [os.path.join(layout.clean_dir, f) for f in clean_files if f not in clean]
  if strays:
    raise LayoutError(f"{folder}: image files that fit no name of the layout "
                      f"'{layout.expected()}': {_listing(strays)}")

  rainy_by_key = _group(rainy, folder, "rainy", unique=not layout.many_rainy_per_clean)
  clean_by_key = _group(clean, folder, "clean", unique=True)
  lonely_rainy = [os.path.join(layout.rainy_dir, f)
                  for k in rainy_by_key.keys() - clean_by_key.keys() for f in rainy_by_key[k]]
  lonely_clean = [os.path.join(layout.clean_dir, clean_by_key[k][0])
                  for k in clean_by_key.keys() - rainy_by_key.keys()]
  if lonely_rainy or lonely_clean:
    parts = []
    if lonely_rainy:
      parts.append(f"{len(lonely_rainy)} rainy file(s) without a clean partner: "
                   f"{_listing(lonely_rainy)}")
    if lonely_clean:
      parts.append(f"{len(lonely_clean)} clean file(s) without a rainy partner: "
                   f"{_listing(lonely_clean)}")
    raise LayoutError(f"{folder}: unpaired names in layout '{layout.description}': "
                      + "; ".join(parts))
  pairs = []
  for key in sorted(rainy_by_key, key=natural_key):
    clean_path = os.path.join(clean_dir, clean_by_key[key][0])
    for name in sorted(rainy_by_key[key], key=natural_key):
      pairs.append(Pair(os.path.join(rainy_dir, name), clean_path, name))
  return pairs


def find_pairs(folder: str, layouts: Sequence[Layout]) -> tuple[Layout, list[Pair]]:
  """Pairs `folder` with the first of `layouts` that fits it; LayoutError if none does."""
  for layout in layouts:
    if _applies(folder, layout):
      return layout, pairs_for_layout(folder, layout)
  raise LayoutError(f"{folder}: no supported layout found. Expected one of:\n  "
                    + "\n  ".join(layout.expected() for layout in layouts)
                    + f"\nFound: {describe_folder(folder)}")


def find_folder(base: str, rel: str) -> str | None:
  """`base/rel` if it is a folder, matching each part of `rel` case-insensitively when there
  is no exact match (archives spell Rain100H, rain100h and RAIN100H); None if absent."""
  path = base
  for part in rel.split("/"):
    candidate = os.path.join(path, part)
    if not os.path.isdir(candidate):
      try:
        matches = [e for e in os.listdir(path) if e.lower() == part.lower()
                   and os.path.isdir(os.path.join(path, e))]
      except OSError:
        return None
      if len(matches) != 1:
        return None
      candidate = os.path.join(path, matches[0])
    path = candidate
  return path


def describe_folder(folder: str) -> str:
  """A short listing of what a folder holds, for error messages."""
  if not os.path.exists(folder):
    return "(the folder does not exist)"
  if not os.path.isdir(folder):
    return "(not a folder)"
  entries = sorted(os.listdir(folder))
  dirs = [e + "/" for e in entries if os.path.isdir(os.path.join(folder, e))]
  images = [e for e in entries if is_image_name(e)]
  others = len(entries) - len(dirs) - len(images)
  return (f"folders [{_listing(dirs)}], {len(images)} image file(s) [{_listing(images)}]"
          + (f", {others} other file(s)" if others else ""))


def _relative(path: str) -> str:
  while path.startswith("./"):
    path = path[2:]
  return path.lstrip("/")


def pairs_from_list(list_file: str, root: str) -> list[Pair]:
  """Pairs from a text file of `rainy_path clean_path` lines (SPA-Data's `real_world.txt`).

  Paths are resolved under `root` whether they start with `/`, `./` or neither: the public
  lists use absolute-looking paths that are really relative to the archive folder.
  """
  pairs, missing = [], []
  with open(list_file, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 2:
        raise LayoutError(f"{list_file}:{line_no}: expected 'rainy_path clean_path', got "
                          f"{line.strip()!r}")
      rainy, clean = (os.path.join(root, _relative(p)) for p in parts)
      for path in (rainy, clean):
        if not os.path.isfile(path):
          missing.append(os.path.relpath(path, root))
      pairs.append(Pair(rainy, clean, _relative(parts[0])))
  if missing:
    raise LayoutError(f"{list_file}: {len(missing)} listed file(s) missing under {root}: "
                      f"{_listing(missing)}")
  if not pairs:
    raise LayoutError(f"{list_file}: lists no pairs")
  names = [p.name for p in pairs]
  if len(set(names)) != len(names):
    dupes = {n for n in names if names.count(n) > 1}
    raise LayoutError(f"{list_file}: rainy files listed more than once: {_listing(dupes)}")
  return pairs
