"""Finding rainy/clean pairs in the folder layouts of the public de-raining archives.

Every archive lays a split out its own way (rainy and clean side by side with `rain-`/`norain-`
prefixes, `rainy/` + `clean/` sub-folders with equal names, one clean image for fourteen rainy
ones...). A `Layout` says where the rainy and the clean files of one split are and how a name
turns into the key that pairs them; `find_pairs` tries a builder's layouts in order and takes
the first that matches, so a wrong folder fails with a message that lists what was expected.

Pairing is strict because a silently dropped or mismatched pair corrupts a benchmark: every
image file in the folders a layout reads must match its name pattern, every rainy key must have
a clean file and every clean file a rainy one, and no key may occur twice unless the layout
allows many rainy images per clean one (Rain1400). Errors list the offending files.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Sequence

from sapnet_jax.data.imageio import is_image_name

_MAX_LISTED = 12


class LayoutError(ValueError):
  """A folder that does not hold any supported layout, or pairs that do not match up."""


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


def _key(text: str) -> str:
  # Numeric keys compare as numbers: "001" and "1" are the same image.
  return str(int(text)) if text.isdigit() else text


def _sort_key(key: str) -> tuple:
  # Natural order: 2 before 10, whatever the zero padding.
  return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", key))


def _listing(names: Iterable[str]) -> str:
  names = sorted(names)
  shown = ", ".join(names[:_MAX_LISTED])
  more = len(names) - _MAX_LISTED
  return shown + (f" ... and {more} more" if more > 0 else "")


def image_files(folder: str, recursive: bool = False) -> list[str]:
  """Image files under `folder` (relative paths, `/` separators), hidden files skipped."""
  found = []
  if recursive:
    for root, dirs, files in os.walk(folder):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      rel = os.path.relpath(root, folder)
      for f in files:
        if not f.startswith(".") and is_image_name(f):
          found.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
  elif os.path.isdir(folder):
    found = [f for f in os.listdir(folder) if not f.startswith(".") and is_image_name(f)
             and os.path.isfile(os.path.join(folder, f))]
  return sorted(found, key=_sort_key)


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
  return bool(_matches(layout.rainy_name, image_files(rainy_dir))) and bool(
      _matches(layout.clean_name, image_files(clean_dir)))


def pairs_for_layout(folder: str, layout: Layout) -> list[Pair]:
  """Pairs the files of `folder` laid out as `layout`; raises LayoutError naming any file
  that matches no pattern, any key without a partner, and any duplicated key."""
  rainy_dir = os.path.join(folder, layout.rainy_dir)
  clean_dir = os.path.join(folder, layout.clean_dir)
  rainy_files = image_files(rainy_dir)
  clean_files = image_files(clean_dir) if clean_dir != rainy_dir else rainy_files
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

  def by_key(files: dict[str, str], role: str, unique: bool) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, key in files.items():
      grouped.setdefault(key, []).append(name)
    dupes = {k: v for k, v in grouped.items() if len(v) > 1}
    if unique and dupes:
      shown = "; ".join(" = ".join(sorted(v)) for v in list(dupes.values())[:_MAX_LISTED])
      raise LayoutError(f"{folder}: several {role} files share a key (pairing would be "
                        f"ambiguous): {shown}")
    return grouped

  rainy_by_key = by_key(rainy, "rainy", unique=not layout.many_rainy_per_clean)
  clean_by_key = by_key(clean, "clean", unique=True)
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
  for key in sorted(rainy_by_key, key=_sort_key):
    clean_path = os.path.join(clean_dir, clean_by_key[key][0])
    for name in sorted(rainy_by_key[key], key=_sort_key):
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
