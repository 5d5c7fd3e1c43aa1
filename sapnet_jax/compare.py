"""Several models side by side on the same images: one table of means and one figure.

    python -m sapnet_jax.compare --model semi=W1/checkpoints --model supervised=W2/checkpoints \
        --model sapnet=sapnet-rain100h --rainy ../shared/data/real_rainy --out OUT [--clean DIR]

Each model is scored by sapnet_jax.evaluation.scoring (NIQE/BRISQUE without --clean, the
full-reference conventions with it) into OUT/<label>/metrics.{json,csv} with its de-rained
images in OUT/<label>/outputs/. OUT/comparison.json and OUT/comparison.md hold every model's
means; OUT/grid.png has one row per shown image: rainy | each model | clean (if given), labelled.
The folders, OUT and the weights may be URIs (gs://bucket/...). Flags are checked before any
work (a bad one is one line and exit status 2), and so is that OUT is no input folder.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sapnet_jax import infer
from sapnet_jax.evaluation import comparison
from sapnet_jax.utils import fileio, flags

def check_out(parser: argparse.ArgumentParser, out: str, labels: Sequence[str],
              input_dirs: Sequence[str | None]) -> None:
  """Ends the command (one line, exit status 2) if OUT, or a folder it writes images into, is
  an input folder: inputs are never written over."""
  inputs = fileio.identities(d for d in input_dirs if d)
  written = [out, *(fileio.join(out, label) for label in labels),
             *(fileio.join(out, label, "outputs") for label in labels)]
  for folder in written:
    if fileio.identities([folder]) & inputs:
      flags.fail(parser, f"--out {fileio.printable(out)}: {fileio.printable(folder)} would be "
                 "written into, and it is an input folder; choose another --out")


def main(argv: Sequence[str] | None = None) -> int:
  parser = flags.command_parser("sapnet_jax.compare", __doc__)
  parser.add_argument("--model", action="append", required=True, metavar="LABEL=NAME|PATH",
                      help="a model to compare (repeat); weights as sapnet_jax.pretrained.load")
  parser.add_argument("--rainy", required=True, metavar="DIR")
  parser.add_argument("--clean", metavar="DIR", help="ground truth (omit for NIQE/BRISQUE only)")
  parser.add_argument("--out", required=True, metavar="DIR")
  parser.add_argument("--images", default="", metavar="NAMES",
                      help="comma-separated file names for the figure (default: the first --count)")
  parser.add_argument("--count", type=flags.int_at_least(1), default=4, metavar="K")
  flags.add_tiling(parser, infer.DEFAULT_TILE, infer.DEFAULT_OVERLAP)
  args = parser.parse_args(argv)
  flags.check_tiling(parser, args)
  try:
    models = [comparison.parse_model(m) for m in args.model]
    check_out(parser, args.out, [label for label, _ in models], [args.rainy, args.clean])
    images = [n for n in args.images.split(",") if n]
    means = comparison.compare(models, args.rainy, args.clean, args.out, images, args.count,
                               args.tile or None, args.overlap)
  except (ValueError, OSError) as e:  # PairError, unknown weights, unreadable images
    print(f"error: {fileio.printable(str(e))}", file=sys.stderr)
    return 1
  print(comparison.markdown_table(means), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
