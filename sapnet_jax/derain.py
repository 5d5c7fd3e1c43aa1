"""De-rain image files: python -m sapnet_jax.derain INPUT [INPUT ...] --out OUT_DIR.

Each INPUT is an image file or a folder (its image files; with --recursive also those in its
sub-folders, mirrored under OUT_DIR; hidden folders and OUT_DIR itself are skipped). Inputs
and OUT_DIR may be local paths or URIs (gs://bucket/folder). Every result is written as
OUT_DIR/<stem>.png, or .jpg with --format jpg (8-bit RGB, clamped and rounded), keeping the
photo's EXIF (camera, date, ...; the orientation tag is cleared because the pixels are written
upright) and ICC colour profile.
A file that cannot be read is reported on one line naming it; the others are still processed
and the exit status is 1. On a terminal, a bar shows the images done and, for a photo larger
than --tile, its tiles.

Compiled programs are kept in a persistent cache ($JAX_COMPILATION_CACHE_DIR, else
$SAPNET_JAX_CACHE/jax_compile, else ~/.cache/sapnet_jax/jax_compile), so a later run on an
image size seen before skips compiling; --no-compile-cache turns it off.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Sequence

from tqdm import tqdm

from sapnet_jax import compile_cache, fileio, infer, pretrained
from sapnet_jax.data import imageio

EXTENSIONS = {"png": ".png", "jpg": ".jpg"}


def find_inputs(inputs: Sequence[str], recursive: bool = False,
                exclude: str | None = None) -> tuple[dict[str, str], list[str]]:
  """Expands folders into their image files; returns ({path: its name relative to its INPUT,
  with `/` separators}, errors for missing inputs). With `recursive`, files under `exclude`
  (the output folder, when it is a sub-folder of an INPUT) are left out, so a second run
  does not de-rain the first one's results."""
  found, errors = {}, []
  for item in inputs:
    if fileio.is_dir(item):
      inner = _folder_prefix(item)
      skip = _folder_prefix(exclude) if recursive and exclude else None
      if skip is not None and (skip == inner or not skip.startswith(inner)):
        skip = None
      for name in imageio.image_names(item, recursive=recursive):
        path = fileio.join(item, *name.split("/"))
        if skip is None or not fileio.absolute(path).startswith(skip):
          found.setdefault(path, name)
    elif fileio.exists(item):
      found.setdefault(item, fileio.basename(item))
    else:
      errors.append(f"{item}: no such file or directory")
  return found, errors


def collect_inputs(inputs: Sequence[str], recursive: bool = False) -> tuple[list[str], list[str]]:
  """`find_inputs` without the relative names: (files, errors for missing inputs)."""
  found, errors = find_inputs(inputs, recursive)
  return list(found), errors


def _folder_prefix(folder: str) -> str:
  sep = "/" if fileio.is_remote(folder) else os.sep
  return fileio.absolute(folder).rstrip(sep) + sep


def output_paths(files: Sequence[str], out_dir: str, extension: str = ".png",
                 relative: Mapping[str, str] | None = None) -> dict[str, str]:
  """Maps each input to OUT_DIR/<relative dir>/<stem><extension> (the relative name defaults
  to the file's own name); raises ValueError if two inputs would be written to one file."""
  outputs, owner = {}, {}
  for path in files:
    name = (relative or {}).get(path) or fileio.basename(path)
    parts = name.split("/")
    parts[-1] = os.path.splitext(parts[-1])[0] + extension
    out = fileio.join(out_dir, *parts)
    if out in owner and fileio.absolute(owner[out]) != fileio.absolute(path):
      raise ValueError(f"{owner[out]} and {path} would both be written to {out}; "
                       "rename one or de-rain them into different --out folders")
    owner[out] = path
    outputs[path] = out
  return outputs


class _TileBar:
  """A nested progress bar over one image's tiles, shown only when it has several (on a
  terminal: tqdm's disable=None turns it off when stderr is a file or a pipe)."""

  def __init__(self, name: str):
    self._name, self._bar = name, None

  def __call__(self, done: int, total: int) -> None:
    if total < 2:
      return
    if self._bar is None:
      self._bar = tqdm(total=total, desc=self._name, unit="tile", leave=False, disable=None,
                       file=sys.stderr)
    self._bar.update(done - self._bar.n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def derain_files(derainer: infer.Derainer, files: Sequence[str], out_dir: str,
                 tile: int | None, overlap: int, format: str = "png", quality: int = 95,
                 relative: Mapping[str, str] | None = None) -> list[str]:
  """De-rains each file into out_dir; returns one error line per file that failed."""
  outputs = output_paths(files, out_dir, EXTENSIONS[format], relative)
  errors = []
  for path in tqdm(outputs, desc="de-raining", unit="image", disable=None, file=sys.stderr):
    bar = _TileBar(fileio.basename(path))
    try:
      image, metadata = imageio.read_image_with_metadata(path)
      result = derainer(image, tile=tile, overlap=overlap, progress=bar)
      imageio.write_image(outputs[path], result, format, quality, metadata)
    except imageio.ImageReadError as e:
      errors.append(str(e))
    except OSError as e:
      errors.append(f"{outputs[path]}: cannot write ({e})")
    else:
      continue
    finally:
      bar.close()
    tqdm.write(f"error: {errors[-1]}", file=sys.stderr)
  return errors


def _quality(text: str) -> int:
  value = int(text)
  if not 1 <= value <= 100:
    raise argparse.ArgumentTypeError(f"must be in 1..100, got {value}")
  return value


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sapnet_jax.derain", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
  parser.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder")
  parser.add_argument("--recursive", "-r", action="store_true",
                      help="also read the sub-folders of folder INPUTs (hidden ones skipped); "
                      "results mirror them under OUT_DIR")
  parser.add_argument("--format", choices=tuple(EXTENSIONS), default="png",
                      help="output format (default: png, lossless)")
  parser.add_argument("--quality", type=_quality, default=95, metavar="Q",
                      help="JPEG quality 1..100 for --format jpg (default: 95)")
  parser.add_argument("--weights", default=pretrained.DEFAULT, metavar="NAME|PATH",
                      help=pretrained.WEIGHTS_HELP)
  parser.add_argument("--tile", type=int, default=infer.DEFAULT_TILE, metavar="N",
                      help="tile side in pixels for images larger than N; 0 = never tile "
                      f"(default: {infer.DEFAULT_TILE})")
  parser.add_argument("--overlap", type=int, default=infer.DEFAULT_OVERLAP, metavar="P",
                      help="overlap of neighbouring tiles in pixels "
                      f"(default: {infer.DEFAULT_OVERLAP})")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="computation precision (default: float32)")
  cache = parser.add_mutually_exclusive_group()
  cache.add_argument("--compile-cache", metavar="DIR",
                     help=f"persistent compilation cache folder (default: {compile_cache.ENV}, "
                     "else the user cache folder's jax_compile)")
  cache.add_argument("--no-compile-cache", action="store_true",
                     help="compile every image size afresh, writing no cache")
  args = parser.parse_args(argv)
  if args.tile < 0 or (args.tile and not 0 <= args.overlap < args.tile):
    parser.error("--tile must be >= 0 and --overlap must satisfy 0 <= P < N")

  found, missing = find_inputs(args.inputs, args.recursive, exclude=args.out)
  for e in missing:
    print(f"error: {e}", file=sys.stderr)
  # Before loading the weights: building a model compiles too.
  with compile_cache.scope(args.compile_cache, enabled=not args.no_compile_cache):
    try:
      output_paths(list(found), args.out, EXTENSIONS[args.format], found)
      model = pretrained.load(args.weights, dtype=args.dtype)
    except (ValueError, OSError) as e:  # name clash, unknown or unfit weights, failed download
      print(f"error: {e}", file=sys.stderr)
      return 2
    failed = derain_files(infer.Derainer(model), list(found), args.out, args.tile or None,
                          args.overlap, args.format, args.quality, found)
  print(f"de-rained {len(found) - len(failed)} of {len(found)} images into {args.out}",
        file=sys.stderr)
  return 1 if missing or failed else 0

if __name__ == "__main__":
  sys.exit(main())
