"""The embedded demo dataset, for people: build it, or draw a grid of its pairs.

The dataset itself (the TFDS builder `synthetic_rain`, its configs and how pairs are drawn) is
in synthetic_builder.py; the rain synthesizer in rain_renderer.py.

    spec = demo.build_demo(data_dir)                       # or build_demo(data_dir, clean_dir)
    config.data.dataset = spec.name                        # "synthetic_rain/shipped"
    config.eval.sets = {"val": f"{spec.name}:validation"}

`python -m sapnet_jax.data.demo --grid docs/images/synthetic_rain.png` draws the README grid
(`--style rain100h` the rain of the fine-tuning pairs).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

import numpy as np
from PIL import Image

from sapnet_jax.data import imageio, prepare, rain_renderer, synthetic_builder
from sapnet_jax.utils.fileio import atomic_write


@dataclasses.dataclass(frozen=True)
class DemoSpec:
  """Where a built demo dataset is and which splits to use (what configs/demo.py sets)."""

  name: str
  data_dir: str | None
  train_split: str = "train"
  eval_split: str = "validation"


def build_demo(data_dir: str | None, clean_dir: str | None = None) -> DemoSpec:
  """Builds the demo dataset into `data_dir` (None: TFDS's ~/tensorflow_datasets) once (later
  calls reuse it) and says where it is. On several hosts, call it on one process first.

  With `clean_dir` the `pool` config is built from it plus the shipped photos; without, the
  `shipped` config. Nothing is downloaded.
  """
  name = "synthetic_rain/pool" if clean_dir else "synthetic_rain/shipped"
  prepare.build(name, data_dir=data_dir, manual_dir=clean_dir)
  return DemoSpec(name=name, data_dir=data_dir)


def grid(pairs: Sequence[tuple[np.ndarray, np.ndarray]], cell: int = 192, gap: int = 4,
         per_row: int = 2) -> np.ndarray:
  """A grid image (uint8): `per_row` (rainy, clean) pairs side by side per row. Each image is
  centre-cropped to a `cell` square at its own resolution (streaks keep their real size);
  smaller images are resized up to it."""
  def square(image):
    h, w = image.shape[:2]
    s = min(h, w, cell) if min(h, w) >= cell else min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.round(np.clip(image[top:top + s, left:left + s], 0, 1) * 255).astype(np.uint8)
    if s != cell:
      crop = np.asarray(Image.fromarray(crop).resize((cell, cell), Image.LANCZOS))
    return crop

  n_rows = (len(pairs) + per_row - 1) // per_row
  width = per_row * (2 * cell + 3 * gap)
  out = np.full((n_rows * (cell + gap) + gap, width, 3), 255, np.uint8)
  for i, (rainy, clean) in enumerate(pairs):
    r, c = divmod(i, per_row)
    y = gap + r * (cell + gap)
    x = gap + c * (2 * cell + 3 * gap)
    out[y:y + cell, x:x + cell] = square(rainy)
    out[y:y + cell, x + cell + gap:x + 2 * cell + gap] = square(clean)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description="Draw a grid of synthetic rainy/clean pairs.")
  parser.add_argument("--grid", required=True, help="output PNG")
  parser.add_argument("--clean_dir", default=None,
                      help="folder of clean photos to use besides the shipped ones")
  parser.add_argument("--count", type=int, default=6, help="pairs in the grid")
  parser.add_argument("--cell", type=int, default=176, help="pixels per image in the grid")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--style", default="demo", choices=["demo", *rain_renderer.STYLES],
                      help="rain style: demo (what the demo dataset draws) or one of "
                      "rain_renderer.STYLES")
  args = parser.parse_args(argv)
  sources = synthetic_builder.clean_sources(args.clean_dir)
  # Spread over the sources; with fewer sources than pairs, later pairs are new rain draws.
  picks = np.linspace(0, len(sources) - 1, num=min(args.count, len(sources))).round().astype(int)
  pairs = []
  for k in range(args.count):
    name, path = sources[picks[k % len(picks)]]
    clean = imageio.read_image(path)
    style = (synthetic_builder.DRAW_STYLES[k % len(synthetic_builder.DRAW_STYLES)]
             if args.style == "demo" else rain_renderer.STYLES[args.style])
    seed = synthetic_builder.pair_seed(args.seed, name, k // len(picks))
    rainy, _ = rain_renderer.add_rain(clean, seed, style)
    pairs.append((rainy, clean))
  # A 256-colour palette keeps the README image small; the pairs themselves are lossless.
  picture = Image.fromarray(grid(pairs, cell=args.cell)).quantize(256, dither=Image.Dither.NONE)
  with atomic_write(args.grid) as f:
    picture.save(f, format="PNG", optimize=True)
  print(f"wrote {args.grid} ({len(pairs)} pairs)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
