"""De-rain image files: python -m sapnet_jax.derain INPUT [INPUT ...] --out OUT_DIR.

Each INPUT is an image file or a folder (its image files; with --recursive also those in its
sub-folders, mirrored under OUT_DIR; hidden folders and OUT_DIR itself are skipped). Inputs
and OUT_DIR may be local paths or URIs (gs://bucket/folder). Every result is written as
OUT_DIR/<stem>.png, or .jpg with --format jpg (8-bit RGB, clamped and rounded), keeping the
photo's EXIF (camera, date, ...; the orientation tag is cleared because the pixels are written
upright) and ICC colour profile.
No input is ever written over: when a result would replace one of the inputs (OUT_DIR is an
input folder, or a link to one), the command stops before any work with one line naming both
and exit status 2; choose another OUT_DIR. A file that fails (unreadable, an unaccepted
format, an error while de-raining or writing) is reported on one line, `error: FILE: reason`,
and the others are still processed; the exit status is then 1. EXIF or ICC data that the output
format cannot hold (EXIF over JPEG's 64 kB) is left out with a `warning:` line, and the pixels
are still written. Names are printed with control characters escaped (a newline as \n), so
a file name cannot forge a line. On a terminal, a bar shows the images done and, for a photo
larger than --tile, its tiles.

Compiled programs are kept in a persistent cache ($JAX_COMPILATION_CACHE_DIR, else
$SAPNET_JAX_CACHE/jax_compile, else ~/.cache/sapnet_jax/jax_compile), so a later run on an
image size seen before skips compiling; --no-compile-cache turns it off.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

from tqdm import tqdm

from sapnet_jax import infer, pretrained
from sapnet_jax.data import imageio
from sapnet_jax.runtime import compile_cache
from sapnet_jax.utils import fileio, flags

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


def _folder_prefix(folder: str) -> str:
  sep = "/" if fileio.is_remote(folder) else os.sep
  return fileio.absolute(folder).rstrip(sep) + sep


def output_paths(files: Sequence[str], out_dir: str, extension: str = ".png",
                 relative: Mapping[str, str] | None = None) -> dict[str, str]:
  """Maps each input to OUT_DIR/<relative dir>/<stem><extension> (the relative name defaults
  to the file's own name); raises ValueError if two inputs would be written to one file or a
  result would replace any input (links resolved)."""
  outputs, owner = {}, {}
  for path in files:
    name = (relative or {}).get(path) or fileio.basename(path)
    parts = name.split("/")
    parts[-1] = os.path.splitext(parts[-1])[0] + extension
    out = fileio.join(out_dir, *parts)
    if out in owner and fileio.absolute(owner[out]) != fileio.absolute(path):
      raise ValueError(f"{fileio.printable(owner[out])} and {fileio.printable(path)} would both "
                       f"be written to {fileio.printable(out)}; rename one or de-rain them into "
                       "different --out folders")
    owner[out] = path
    outputs[path] = out
  inputs = fileio.identities(files)
  for path, out in outputs.items():
    if fileio.identities([out]) & inputs:
      raise ValueError(f"{fileio.printable(out)}: the result of {fileio.printable(path)} would "
                       "overwrite an input; choose an --out folder that holds no inputs")
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
                 relative: Mapping[str, str] | None = None,
                 outputs: Mapping[str, str] | None = None,
                 scale: float | str = 1.0) -> list[str]:
  """De-rains each file into out_dir; returns one error line per file that failed (printable:
  control characters in names escaped). Any failure of one file (reading, de-raining,
  encoding, writing) is that file's error line; the others are still processed. `outputs`:
  `output_paths`' map when the caller has checked it already. `scale`: Derainer's (1, a
  number, or "auto", whose choice is printed per file)."""
  if outputs is None:
    outputs = output_paths(files, out_dir, EXTENSIONS[format], relative)
  errors = []
  for path in tqdm(outputs, desc="de-raining", unit="image", disable=None, file=sys.stderr):
    bar = _TileBar(fileio.printable(fileio.basename(path)))
    notes = []
    try:
      error = _derain_one(derainer, path, outputs[path], tile, overlap, format, quality, bar,
                          notes, scale)
    finally:
      bar.close()
    for note in notes:
      tqdm.write(f"warning: {fileio.printable(outputs[path])}: {fileio.printable(note)}",
                 file=sys.stderr)
    if error is not None:
      errors.append(fileio.printable(error))
      tqdm.write(f"error: {errors[-1]}", file=sys.stderr)
  return errors


def _derain_one(derainer: infer.Derainer, path: str, out: str, tile: int | None, overlap: int,
                format: str, quality: int, bar: _TileBar, notes: list[str],
                scale: float | str = 1.0) -> str | None:
  """De-rains one file; returns its error line, or None. Every exception is the file's own:
  it must not end the batch, nor reach the user as a traceback."""
  try:
    image, metadata = imageio.read_image_with_metadata(path)
  except imageio.ImageReadError as e:
    return str(e)
  except Exception as e:  # noqa: BLE001 - an unreadable file of any kind is one error line
    return f"{path}: cannot read ({_reason(e)})"
  try:
    if scale == infer.AUTO:
      scale = derainer.estimate_scale(image)
      tqdm.write(f"{fileio.printable(fileio.basename(path))}: scale "
                 f"{infer.format_scale(scale)} (auto)",
                 file=sys.stderr)
    result = derainer(image, tile=tile, overlap=overlap, progress=bar, scale=scale)
    data = imageio.encode_image(result, format, quality, metadata, notes)
  except Exception as e:  # noqa: BLE001 - as above, for de-raining and encoding
    return f"{path}: cannot de-rain ({_reason(e)})"
  try:
    fileio.write_bytes(out, data)
  except Exception as e:  # noqa: BLE001 - a full disk or a read-only folder, say
    return f"{out}: cannot write ({_reason(e)})"
  return None


def _reason(error: BaseException) -> str:
  return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
  parser = flags.command_parser("sapnet_jax.derain", __doc__)
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
  parser.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder")
  parser.add_argument("--recursive", "-r", action="store_true",
                      help="also read the sub-folders of folder INPUTs (hidden ones skipped); "
                      "results mirror them under OUT_DIR")
  parser.add_argument("--format", choices=tuple(EXTENSIONS), default="png",
                      help="output format (default: png, lossless)")
  parser.add_argument("--quality", type=flags.int_in(1, 100), default=95, metavar="Q",
                      help="JPEG quality 1..100 for --format jpg (default: 95)")
  flags.add_weights(parser, pretrained.DEFAULT, pretrained.WEIGHTS_HELP)
  flags.add_tiling(parser, infer.DEFAULT_TILE, infer.DEFAULT_OVERLAP)
  flags.add_scale(parser)
  flags.add_dtype(parser)
  flags.add_compile_cache(parser, f"{compile_cache.ENV}, else the user cache folder's "
                          "jax_compile")
  args = parser.parse_args(argv)
  flags.check_tiling(parser, args)

  found, missing = find_inputs(args.inputs, args.recursive, exclude=args.out)
  for e in missing:
    print(f"error: {fileio.printable(e)}", file=sys.stderr)
  try:
    # Before any work: a result must never replace an input.
    if fileio.exists(args.out) and not fileio.is_dir(args.out):
      raise ValueError(f"{args.out}: --out must be a folder, and this is a file")
    outputs = output_paths(list(found), args.out, EXTENSIONS[args.format], found)
  except (ValueError, OSError) as e:
    print(f"error: {fileio.printable(str(e))}", file=sys.stderr)
    return 2
  # Before loading the weights: building a model compiles too.
  with compile_cache.scope(args.compile_cache, enabled=not args.no_compile_cache):
    try:
      model = pretrained.load(args.weights, dtype=args.dtype)
      derainer = infer.Derainer(model, stages=args.stages)
    except (ValueError, OSError) as e:  # unknown or unfit weights, failed download, stages
      print(f"error: {fileio.printable(str(e))}", file=sys.stderr)
      return 2
    try:
      failed = derain_files(derainer, list(found), args.out, args.tile or None, args.overlap,
                            args.format, args.quality, found, outputs, scale=args.scale)
    except KeyboardInterrupt:  # Ctrl-C: results written so far are whole, the one in progress gone
      print(f"interrupted: results so far are in {fileio.printable(args.out)}", file=sys.stderr)
      return 130
  print(f"de-rained {len(found) - len(failed)} of {len(found)} images into "
        f"{fileio.printable(args.out)}", file=sys.stderr)
  return 1 if missing or failed else 0


if __name__ == "__main__":
  sys.exit(main())
