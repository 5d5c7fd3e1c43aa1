"""Scoring a de-raining model on image pairs (or on real photos without ground truth).

    python -m sapnet_jax.evaluate --weights NAME|PATH --rainy DIR [--clean DIR] [--json OUT]
        [--csv OUT] [--grid OUT.png] [--save-outputs DIR] [--skip-bad] ...
    python -m sapnet_jax.evaluate --weights NAME|PATH --dataset NAME:SPLIT [--data_dir DIR] ...

A thin command over sapnet_jax.evaluation.scoring. Images come from two folders paired by file
name, or from a built dataset (sapnet_jax.data.prepare), paired by its builder. With ground
truth every image gets the six full-reference numbers of sapnet_jax.metrics.full_reference (each
key names its convention); without it, NIQE and BRISQUE of the input and of the output. Outputs
are quantized as saved images are (default: rounded to 8 bits, as `derain` writes them;
`--quantize floor` reproduces the official test.py, which truncates). Reports are rewritten
atomically after every image, so an interrupted run keeps every row scored so far. Folders and
outputs may be local paths or URIs (gs://bucket/...). Flags are checked before any work (a bad
one is one line and exit status 2), and so is that no output would replace an input image.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sapnet_jax import infer, pretrained
from sapnet_jax.data import imageio
from sapnet_jax.evaluation import scoring
from sapnet_jax.utils import fileio, flags


def check_outputs(parser: argparse.ArgumentParser, reports: dict[str, str | None],
                  outputs_dir: str | None, input_dirs: Sequence[str | None]) -> None:
  """Ends the command (one line, exit status 2) if a report would replace an input image or
  de-rained images would be written into an input folder: inputs are never written over."""
  folders = [d for d in input_dirs if d]
  inputs = fileio.identities(fileio.join(d, *n.split("/")) for d in folders
                             for n in imageio.image_names(d))
  for flag, path in reports.items():
    if path and fileio.identities([path]) & inputs:
      flags.fail(parser, f"{flag} {fileio.printable(path)} is an input image; it would be "
                 "overwritten")
  if outputs_dir and fileio.identities([outputs_dir]) & fileio.identities(folders):
    flags.fail(parser, f"--save-outputs {fileio.printable(outputs_dir)} is an input folder; "
               "its images would be overwritten")


def main(argv: Sequence[str] | None = None) -> int:
  parser = flags.command_parser("sapnet_jax.evaluate", __doc__)
  flags.add_weights(parser, pretrained.DEFAULT, pretrained.WEIGHTS_HELP + ", or 'identity' to "
                    "score the rainy inputs themselves (the baseline row of results tables)")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--rainy", metavar="DIR", help="rainy input images")
  source.add_argument("--dataset", metavar="NAME:SPLIT",
                      help="a built dataset's split, e.g. rain100h:test (sapnet_jax.data.prepare)")
  parser.add_argument("--clean", metavar="DIR", help="ground truth (omit for NIQE/BRISQUE only)")
  parser.add_argument("--data_dir", metavar="DIR", help="--dataset: where it was built "
                      "(default: TFDS's)")
  parser.add_argument("--json", metavar="OUT", help="per-image and mean metrics as JSON")
  parser.add_argument("--csv", metavar="OUT", help="per-image metrics as CSV")
  parser.add_argument("--grid", metavar="OUT.png", help="rainy | de-rained | clean figure")
  parser.add_argument("--grid-count", type=flags.int_at_least(1), default=4, metavar="K",
                      help="worst K images in the grid (by psnr_rgb, or NIQE without --clean)")
  parser.add_argument("--grid-images", default="", metavar="NAMES",
                      help="comma-separated file names to show instead of the worst ones")
  parser.add_argument("--save-outputs", metavar="DIR", help="also write the de-rained PNGs")
  parser.add_argument("--skip-bad", action="store_true",
                      help="warn about and count bad pairs instead of stopping")
  parser.add_argument("--quantize", choices=scoring.QUANTIZE, default="round",
                      help="8-bit rounding of outputs before scoring (floor = official test.py)")
  parser.add_argument("--crop-border", type=flags.int_at_least(0), default=0, metavar="N",
                      help="pixels cropped from each side before scoring (BasicSR crop_border)")
  flags.add_tiling(parser, infer.DEFAULT_TILE, infer.DEFAULT_OVERLAP)
  args = parser.parse_args(argv)
  flags.check_tiling(parser, args)
  if args.dataset and args.clean:
    flags.fail(parser, "--clean goes with --rainy; a dataset pairs its own images")
  check_outputs(parser, {"--json": args.json, "--csv": args.csv, "--grid": args.grid},
                args.save_outputs, [args.rainy, args.clean])
  try:
    if args.dataset:
      loaders, problems, source = scoring.set_samples("dataset", args.dataset, args.data_dir)
      source.pop("set")
    else:
      loaders, problems = scoring.folder_samples(args.rainy, args.clean)
      source = {"rainy": args.rainy, "clean": args.clean}
    scoring.check_problems(problems, args.skip_bad)
    derainer = (scoring.identity if args.weights == "identity"
                else infer.Derainer(pretrained.load(args.weights)))
  except (ValueError, OSError) as e:
    print(f"error: {fileio.printable(str(e))}", file=sys.stderr)
    return 2
  reports = scoring.Reports(args.json, args.csv, {
      "weights": args.weights, **source, "quantize": args.quantize,
      "crop_border": args.crop_border})
  reports.skipped.extend(problems)
  names = [n for n in args.grid_images.split(",") if n]
  grid = scoring.GridCollector(args.grid_count, names) if args.grid else None
  try:
    summary = scoring.score_samples(derainer, loaders, reports, tile=args.tile or None,
                                    overlap=args.overlap, quantize_mode=args.quantize,
                                    border=args.crop_border, skip_bad=args.skip_bad,
                                    outputs_dir=args.save_outputs, grid=grid)
  except scoring.PairError as e:
    print(f"error: {fileio.printable(str(e))} ({len(reports.rows)} images scored before it "
          "are in the reports)", file=sys.stderr)
    return 1
  finally:
    if grid is not None:
      grid.write(args.grid)
  print(scoring.format_table(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
