"""De-rain image files: python -m sapnet_jax.derain INPUT [INPUT ...] --out OUT_DIR.

Each INPUT is an image file or a folder (its image files, not recursive); inputs and OUT_DIR
may be local paths or URIs (gs://bucket/folder). Every result is
written as OUT_DIR/<stem>.png (8-bit RGB, clamped and rounded). A file that cannot be read is
reported on one line naming it; the others are still processed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from tqdm import tqdm

from sapnet_jax import fileio, infer, pretrained
from sapnet_jax.data import imageio


def collect_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
  """Expands folders into their image files; returns (files, errors for missing inputs)."""
  files, errors = [], []
  for item in inputs:
    if fileio.is_dir(item):
      files.extend(imageio.list_images(item))
    elif fileio.exists(item):
      files.append(item)
    else:
      errors.append(f"{item}: no such file or directory")
  return files, errors


def output_paths(files: Sequence[str], out_dir: str) -> dict[str, str]:
  """Maps each input to OUT_DIR/<stem>.png; raises ValueError if two inputs share a stem."""
  outputs, owner = {}, {}
  for path in files:
    out = fileio.join(out_dir, os.path.splitext(fileio.basename(path))[0] + ".png")
    if out in owner and fileio.absolute(owner[out]) != fileio.absolute(path):
      raise ValueError(f"{owner[out]} and {path} would both be written to {out}; "
                       "rename one or de-rain them into different --out folders")
    owner[out] = path
    outputs[path] = out
  return outputs


def derain_files(derainer: infer.Derainer, files: Sequence[str], out_dir: str,
                 tile: int | None, overlap: int) -> list[str]:
  """De-rains each file into out_dir; returns one error line per file that failed."""
  outputs = output_paths(files, out_dir)
  errors = []
  for path in tqdm(outputs, desc="de-raining", unit="image", disable=None, file=sys.stderr):
    try:
      image = imageio.read_image(path)
      imageio.write_png(outputs[path], derainer(image, tile=tile, overlap=overlap))
    except imageio.ImageReadError as e:
      errors.append(str(e))
    except OSError as e:
      errors.append(f"{outputs[path]}: cannot write ({e})")
    else:
      continue
    tqdm.write(f"error: {errors[-1]}", file=sys.stderr)
  return errors


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sapnet_jax.derain", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
  parser.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder")
  parser.add_argument("--weights", default=pretrained.DEFAULT, metavar="NAME|PATH",
                      help=f"registered name ({', '.join(pretrained.REGISTRY)}), a .pth, "
                      f".npz or Orbax checkpoint (default: {pretrained.DEFAULT})")
  parser.add_argument("--tile", type=int, default=infer.DEFAULT_TILE, metavar="N",
                      help="tile side in pixels for images larger than N; 0 = never tile "
                      f"(default: {infer.DEFAULT_TILE})")
  parser.add_argument("--overlap", type=int, default=infer.DEFAULT_OVERLAP, metavar="P",
                      help=f"overlap of neighbouring tiles in pixels (default: {infer.DEFAULT_OVERLAP})")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="computation precision (default: float32)")
  args = parser.parse_args(argv)
  if args.tile < 0 or (args.tile and not 0 <= args.overlap < args.tile):
    parser.error("--tile must be >= 0 and --overlap must satisfy 0 <= P < N")

  files, missing = collect_inputs(args.inputs)
  for e in missing:
    print(f"error: {e}", file=sys.stderr)
  try:
    output_paths(files, args.out)
    model = pretrained.load(args.weights, dtype=args.dtype)
  except (ValueError, OSError) as e:  # name clash, unknown or unfit weights, failed download
    print(f"error: {e}", file=sys.stderr)
    return 2
  failed = derain_files(infer.Derainer(model), files, args.out, args.tile or None, args.overlap)
  print(f"de-rained {len(files) - len(failed)} of {len(files)} images into {args.out}",
        file=sys.stderr)
  return 1 if missing or failed else 0

if __name__ == "__main__":
  sys.exit(main())
