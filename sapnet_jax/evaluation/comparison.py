"""Several models side by side on the same images: each scored into OUT/<label>/, their means
in one table (OUT/comparison.{json,md}, each column marked with its metric's direction) and one
labelled figure (OUT/grid.png). `python -m sapnet_jax.compare` is its command."""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from sapnet_jax import infer
from sapnet_jax.data import imageio
from sapnet_jax.evaluation import scoring
from sapnet_jax.metrics import conventions
from sapnet_jax.utils import fileio
from sapnet_jax.utils.fileio import atomic_write
from sapnet_jax.weights import registry


def parse_model(spec: str) -> tuple[str, str]:
  """`LABEL=NAME|PATH` (or a bare name, which is then its own label)."""
  label, sep, weights = spec.partition("=")
  if not sep:
    label, weights = registry.display_name(spec), spec
  if not label or not weights or os.sep in label:
    raise ValueError(f"--model {spec!r}: expected LABEL=NAME|PATH with a plain label")
  return label, weights


def markdown_table(means: dict[str, dict[str, float]]) -> str:
  keys = [k for k in conventions.CONVENTIONS if any(k in m for m in means.values())]
  head = ["model", *(f"{k} {conventions.arrow(k)}" for k in keys)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label, m in means.items():
    cells = [label, *(f"{m[k]:.4f}" if k in m else "" for k in keys)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def comparison_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str],
                    gap: int = 4, header: int = 18) -> np.ndarray:
  """A labelled figure from thumbnails of one height: one row per image, one column per label."""
  cells = [[Image.fromarray(im) for im in row] for row in rows]
  height = cells[0][0].height
  widths = [max(r[c].width for r in cells) for c in range(len(labels))]
  canvas = Image.new("RGB", (sum(widths) + gap * (len(widths) + 1),
                             header + len(cells) * (height + gap) + gap), "white")
  draw = ImageDraw.Draw(canvas)
  x = gap
  for c, label in enumerate(labels):
    draw.text((x + 2, 3), label, fill="black")
    for r, row in enumerate(cells):
      canvas.paste(row[c], (x, header + gap + r * (height + gap)))
    x += widths[c] + gap
  return np.asarray(canvas)


def compare(models: Sequence[tuple[str, str]], rainy_dir: str, clean_dir: str | None, out: str,
            images: Sequence[str] = (), count: int = 4, tile: int | None = infer.DEFAULT_TILE,
            overlap: int = infer.DEFAULT_OVERLAP, progress: bool = True) -> dict[str, dict]:
  """Scores every model, writes the reports and the figure; returns {label: means}."""
  labels = [label for label, _ in models]
  if len(set(labels)) != len(labels):
    raise ValueError(f"--model labels must differ: {labels}")
  loaders, problems = scoring.folder_samples(rainy_dir, clean_dir)
  scoring.check_problems(problems, skip_bad=False)
  names = list(images) or sorted(fileio.basename(p) for p in imageio.list_images(rainy_dir))[:count]
  means, thumbs = {}, {}
  for label, weights in models:
    grid = scoring.GridCollector(len(names), names)
    derainer = infer.Derainer(registry.load(weights))
    reports = scoring.Reports(fileio.join(out, label, "metrics.json"),
                                 fileio.join(out, label, "metrics.csv"),
                                 {"model": label, "weights": weights, "rainy": rainy_dir,
                                  "clean": clean_dir, "quantize": "round", "crop_border": 0})
    summary = scoring.score_samples(derainer, loaders, reports, tile=tile, overlap=overlap,
                                    outputs_dir=fileio.join(out, label, "outputs"),
                                    grid=grid, progress=progress)
    means[label], thumbs[label] = summary["means"], grid.thumbnails()
    print(f"[{label}] {weights}\n{scoring.format_table(summary)}")
  with atomic_write(fileio.join(out, "comparison.json")) as f:
    f.write(json.dumps({"rainy": rainy_dir, "clean": clean_dir,
                        "models": dict(models), "means": means,
                        "conventions": {k: conventions.CONVENTIONS[k]
                                        for k in next(iter(means.values()))}},
                       indent=1).encode())
  with atomic_write(fileio.join(out, "comparison.md")) as f:
    f.write(markdown_table(means).encode())
  # Each model's collector holds rainy | its output [| clean]: take the inputs from the first.
  first = thumbs[labels[0]]
  missing = [n for n in names if n not in first]
  if missing:
    raise ValueError(f"--images: not among the scored images of {rainy_dir}: {', '.join(missing)}")
  rows = [[first[n][0], *(thumbs[label][n][1] for label in labels), *first[n][2:]] for n in names]
  imageio.write_png(fileio.join(out, "grid.png"),
                    comparison_grid(rows, ["rainy", *labels, *(["clean"] if clean_dir else [])]))
  return means
