"""The command-line flags several commands share, defined once: what each means, its checks.

Defaults that belong to a library (the registered weights, the inference tile) are passed in by
the command, so this module imports nothing from the package. Every check runs while the
arguments are parsed, before a command does any work; a bad value ends the command with exit
status 2 and an error line naming the flag.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

DTYPES = ("float32", "bfloat16")


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
  """An argparse `type`: an integer in low..high (no upper bound when `high` is None)."""
  def parse(text: str) -> int:
    value = int(text)
    if value < low or (high is not None and value > high):
      bounds = f">= {low}" if high is None else f"in {low}..{high}"
      raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
    return value
  parse.__name__ = "integer"  # argparse names the type in its message
  return parse


def int_at_least(low: int) -> Callable[[str], int]:
  """An argparse `type`: an integer >= `low`."""
  return int_in(low)


def float_above(low: float, inclusive: bool = False) -> Callable[[str], float]:
  """An argparse `type`: a finite number > `low` (>= with `inclusive`); nan and inf are
  refused, as no timeout or wait means them."""
  def parse(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
      raise argparse.ArgumentTypeError(
          f"must be a finite number {'>=' if inclusive else '>'} {low:g}, got {text}")
    return value
  parse.__name__ = "number"
  return parse


def command_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
  """The parser of `python -m MODULE`, its docstring as the description with its line breaks
  kept (the usage examples in it are laid out by hand)."""
  return argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_number(parser: Any, flag: str, type: Callable[[str], float], default: float,
               metavar: str, help: str) -> None:
  """A numeric flag of a parser or argument group, whose help ends with its default
  (`(default: 8)`; `(default: 60)` for 60.0). Its range is checked where the value is used
  (`check_range`), so that a library's callers get the same checks."""
  shown = f"{default:g}" if isinstance(default, float) else f"{default}"
  parser.add_argument(flag, type=type, default=default, metavar=metavar,
                      help=f"{help} (default: {shown})")


def check_range(flag: str, value: float, low: float, high: float | None = None, *,
                above: bool = False) -> None:
  """Raises ValueError `FLAG must be ..., got VALUE` unless low <= value <= high (low < value
  with `above`; no upper bound when `high` is None): one wording for the limits a library
  checks in its own objects, whose errors reach the command's user as they are."""
  fits = (value > low if above else value >= low) and (high is None or value <= high)
  if not fits:
    if high is None:
      bounds = f"{'>' if above else '>='} {low}"
    else:
      bounds = f"in ({low}, {high}]" if above else f"in {low}..{high}"
    raise ValueError(f"{flag} must be {bounds}, got {value}")


def fail(parser: argparse.ArgumentParser, message: str) -> None:
  """Ends the command with one line, `PROG: error: MESSAGE`, and exit status 2 (argparse's
  status for a usage error; its usage text would bury the line that matters)."""
  parser.exit(2, f"{parser.prog}: error: {message}\n")


def add_weights(parser: argparse.ArgumentParser, default: str, help: str) -> None:
  """--weights NAME|PATH: a registered name or a weights file."""
  parser.add_argument("--weights", default=default, metavar="NAME|PATH", help=help)


def add_tiling(parser: argparse.ArgumentParser, tile: int, overlap: int) -> None:
  """--tile N (0 = whole images) and --overlap P; check them with `check_tiling`."""
  parser.add_argument("--tile", type=int_at_least(0), default=tile, metavar="N",
                      help="tiles of at most N rows and N x N pixels for larger images; "
                      f"0 = never tile (default: {tile})")
  parser.add_argument("--overlap", type=int_at_least(0), default=overlap, metavar="P",
                      help="overlap of neighbouring tiles in pixels, less than N "
                      f"(default: {overlap})")


def check_tiling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """The overlap must be smaller than the tile (when tiling), or no tile would advance."""
  if args.tile and args.overlap >= args.tile:
    fail(parser, f"--overlap {args.overlap} must be smaller than --tile {args.tile}: lower "
         "--overlap, raise --tile, or give --tile 0 for whole images")


def scale(text: str) -> float | str:
  """An argparse `type` for --scale: `auto` or a number from 1 to 16 (infer.parse_scale's
  rule, repeated here because this module imports nothing from the package; a test holds the
  two together)."""
  if text.strip().lower() == "auto":
    return "auto"
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not 1.0 <= value <= 16.0:
    raise argparse.ArgumentTypeError(f"must be 'auto' or a number from 1 to 16, got {text!r}")
  return value


def add_scale(parser: argparse.ArgumentParser) -> None:
  """--scale 1|F|auto and --stages N: the working scale and the speed/quality dial."""
  parser.add_argument("--scale", type=scale, default=1.0, metavar="F|auto",
                      help="de-rain at 1/F of the photo's size and put the removed rain back "
                      "at full size, for streaks F times wider than the training data's; "
                      "auto picks F from the photo (1, 1.5, 2, 3 or 4); 1 = full size "
                      "(default: 1)")
  parser.add_argument("--stages", type=int_in(1, 6), default=None, metavar="N",
                      help="run only the first N of the network's 6 recurrent stages: faster, "
                      "less rain removed (docs/scale.md; default: all)")


def add_dtype(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dtype", choices=DTYPES, default=DTYPES[0],
                      help=f"computation precision (default: {DTYPES[0]})")


def add_compile_cache(parser: argparse.ArgumentParser, default_help: str,
                      folder: bool = True) -> None:
  """--compile-cache DIR (with `folder`) or --no-compile-cache: where compiled programs are
  kept between runs; `default_help` says where they go by default."""
  group = parser.add_mutually_exclusive_group()
  if folder:
    group.add_argument("--compile-cache", metavar="DIR",
                       help=f"persistent compilation cache folder (default: {default_help})")
  group.add_argument("--no-compile-cache", action="store_true",
                     help="compile every image size afresh, writing no cache")
