"""Scoring a de-raining model on image pairs (or on real photos without ground truth): the
library behind `python -m sapnet_jax.evaluate`, `sapnet_jax.compare`, `main --mode=eval` and
training's validation.

With a clean image every image gets the six full-reference numbers of
sapnet_jax.metrics.full_reference (each key names its convention); without one, NIQE and BRISQUE
of the input and of the output. Outputs are quantized as saved images are (default: rounded to 8
bits, as `derain` writes them; "floor" reproduces the official test.py, which truncates).
Reports are rewritten atomically after every image, so an interrupted run keeps every row scored
so far. Folders and outputs may be local paths or URIs (gs://bucket/...).
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import io
import json
import os
import sys
import time
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from sapnet_jax import infer, models
from sapnet_jax.data import imageio, pairs
from sapnet_jax.metrics import conventions, full_reference
from sapnet_jax.utils import fileio
from sapnet_jax.utils.fileio import atomic_write
from sapnet_jax.weights import model_files, registry

QUANTIZE = ("round", "floor", "none")
NOREF_KEYS = ("niqe", "brisque", "niqe_input", "brisque_input")


def identity(image: np.ndarray, **unused) -> np.ndarray:
  """The rainy input itself as the "model": the baseline row of results tables."""
  return image


class PairError(ValueError):
  """A pair that cannot be scored: unreadable image, missing counterpart, size mismatch."""


@dataclasses.dataclass
class Sample:
  name: str
  rainy: np.ndarray  # (H, W, 3) float32 in [0, 1]
  clean: np.ndarray | None


def quantize(image: np.ndarray, mode: str) -> np.ndarray:
  """What a saved 8-bit image holds, back in [0, 1] (`none`: only clamped)."""
  clamped = np.clip(image, 0.0, 1.0)
  if mode == "round":
    return imageio.to_uint8(clamped).astype(np.float32) / 255.0
  if mode == "floor":
    return np.floor(clamped * 255.0).astype(np.float32) / 255.0
  return clamped


def folder_samples(rainy_dir: str, clean_dir: str | None
                   ) -> tuple[list[Callable[[], Sample]], list[str]]:
  """Lazy loaders of the samples of two folders, and the problems found while pairing them."""
  if clean_dir is None:
    return [(lambda p=p: Sample(fileio.basename(p), imageio.read_image(p), None))
            for p in imageio.list_images(rainy_dir)], []
  pairing = pairs.pair_folders(rainy_dir, clean_dir)
  problems = [f"{p}: no clean counterpart in {clean_dir}" for p in pairing.rainy_only]
  problems += [f"{p}: no rainy counterpart in {rainy_dir}" for p in pairing.clean_only]

  def load(rainy_path: str, clean_path: str) -> Sample:
    rainy, clean = imageio.read_image(rainy_path), imageio.read_image(clean_path)
    if rainy.shape != clean.shape:
      raise PairError(f"{rainy_path} is {rainy.shape[1]}x{rainy.shape[0]} but {clean_path} is "
                      f"{clean.shape[1]}x{clean.shape[0]}")
    return Sample(fileio.basename(rainy_path), rainy, clean)

  return [(lambda r=r, c=c: load(r, c)) for r, c in pairing.pairs], problems


class Reports:
  """Per-image rows and means, rewritten atomically as JSON and CSV after every image."""

  def __init__(self, json_path: str | None, csv_path: str | None, meta: dict):
    self.json_path, self.csv_path, self.meta = json_path, csv_path, meta
    self.rows: list[dict] = []
    self.skipped: list[str] = []

  def keys(self) -> list[str]:
    return [k for k in conventions.CONVENTIONS if self.rows and k in self.rows[0]]

  def means(self) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in self.rows])) for k in self.keys()}

  def summary(self, complete: bool) -> dict:
    return {**self.meta, "complete": complete, "count": len(self.rows),
            "skipped": self.skipped,
            "conventions": {k: conventions.CONVENTIONS[k] for k in self.keys()},
            "means": self.means(), "images": self.rows}

  def write(self, complete: bool) -> None:
    if self.json_path:
      with atomic_write(self.json_path) as f:
        f.write(json.dumps(self.summary(complete), indent=1).encode())
    if self.csv_path and self.rows:
      text = io.StringIO()
      writer = csv.DictWriter(text, fieldnames=["name", *self.keys(), "seconds"])
      writer.writeheader()
      writer.writerows(self.rows)
      with atomic_write(self.csv_path) as f:
        f.write(text.getvalue().encode())


class GridCollector:
  """Keeps thumbnails of the chosen images, or of the `count` worst ones, for one figure."""

  def __init__(self, count: int, names: Sequence[str] = (), height: int = 200):
    self.count, self.names, self.height = count, set(names), height
    self._heap: list[tuple[float, int, str, list[np.ndarray]]] = []
    self._offered = 0  # tie-breaker, so equal badness never compares the image lists

  def offer(self, name: str, badness: float, images: list[np.ndarray]) -> None:
    if self.names and name not in self.names:
      return
    self._offered += 1
    entry = (badness if not self.names else 0.0, self._offered, name,
             [self._thumb(im) for im in images])
    if len(self._heap) < (len(self.names) or self.count):
      heapq.heappush(self._heap, entry)
    elif not self.names:
      heapq.heappushpop(self._heap, entry)

  def _thumb(self, image: np.ndarray) -> np.ndarray:
    im = Image.fromarray(imageio.to_uint8(image))
    width = max(1, round(im.width * self.height / im.height))
    return np.asarray(im.resize((width, self.height), Image.Resampling.LANCZOS))

  def thumbnails(self) -> dict[str, list[np.ndarray]]:
    """name -> the kept thumbnails (rainy, de-rained[, clean]), each `height` pixels high."""
    return {name: thumbs for _, _, name, thumbs in self._heap}

  def write(self, path: str) -> None:
    """Rows (worst first): rainy | de-rained | clean, 4-pixel white gutters."""
    rows = [np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255)
                            for t in ts], axis=1)
            for _, _, _, ts in sorted(self._heap, reverse=True)]
    if not rows:
      return
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                           for r in rows], axis=0)
    imageio.write_png(path, grid)


def score_samples(derainer: infer.Derainer, loaders: Iterable[Callable[[], Sample]],
                  reports: Reports, *, tile: int | None = infer.DEFAULT_TILE,
                  overlap: int = infer.DEFAULT_OVERLAP, quantize_mode: str = "round",
                  border: int = 0, skip_bad: bool = False, outputs_dir: str | None = None,
                  grid: GridCollector | None = None, progress: bool = True,
                  extra: Callable[[np.ndarray, np.ndarray], dict] | None = None,
                  score_input: bool = True) -> dict:
  """De-rains and scores every sample; returns the summary (also written by `reports`).

  `extra(out, clean)` adds metrics (keys of conventions.CONVENTIONS) to each pair's row;
  `score_input` False leaves out the rainy input's NIQE/BRISQUE (the same for every model scored).

  A bad sample raises PairError naming its files, after the rows so far are written; with
  `skip_bad` it is listed in the report's "skipped" and the run goes on.
  """
  start = time.perf_counter()
  try:
    for load in tqdm(loaders, desc="evaluating", unit="image", disable=None if progress else True,
                     file=sys.stderr, total=len(loaders) if hasattr(loaders, "__len__") else None):
      t0 = time.perf_counter()
      try:
        sample = load()
      except (imageio.ImageReadError, PairError) as e:
        if not skip_bad:
          raise PairError(str(e)) from None
        reports.skipped.append(str(e))
        tqdm.write(f"warning: skipped {e}", file=sys.stderr)
        continue
      out = quantize(derainer(sample.rainy, tile=tile, overlap=overlap), quantize_mode)
      if outputs_dir:
        imageio.write_png(fileio.join(outputs_dir, os.path.splitext(sample.name)[0] + ".png"), out)
      if sample.clean is not None:
        row = full_reference.score_pair(out, sample.clean, border)
        if extra is not None:
          row.update(extra(out, sample.clean))
        badness = -row["psnr_rgb"]
        images = [sample.rainy, out, sample.clean]
      else:
        try:
          row = score_noref(out, sample.rainy if score_input else None, border)
        except ValueError as e:  # e.g. too small for NIQE: a bad sample, like an unreadable one
          if not skip_bad:
            raise PairError(f"{sample.name}: {e}") from None
          reports.skipped.append(f"{sample.name}: {e}")
          tqdm.write(f"warning: skipped {sample.name}: {e}", file=sys.stderr)
          continue
        badness = row["niqe"]
        images = [sample.rainy, out]
      reports.rows.append({"name": sample.name, **row, "seconds": time.perf_counter() - t0})
      if grid is not None:
        grid.offer(sample.name, badness, images)
      reports.write(complete=False)
  finally:
    elapsed = time.perf_counter() - start
    reports.meta["images_per_second"] = len(reports.rows) / elapsed if elapsed > 0 else 0.0
    reports.write(complete=False)
  reports.write(complete=True)
  return reports.summary(complete=True)


def score_noref(out: np.ndarray, rainy: np.ndarray | None, border: int = 0
                ) -> dict[str, float]:
  """NIQE and BRISQUE (sapnet_jax.metrics.no_reference) of the output and of the rainy input
  (unless None), less `border` pixels on each side (for NIQE the same as BasicSR's crop_border)."""
  from sapnet_jax.metrics import no_reference  # deferred: only real photos need it (and SciPy)
  crop = (slice(border, -border),) * 2 if border else (slice(None),) * 2
  row = {"niqe": no_reference.niqe(out[crop]), "brisque": no_reference.brisque(out[crop])}
  if rainy is not None:
    row.update(niqe_input=no_reference.niqe(rainy[crop]),
               brisque_input=no_reference.brisque(rainy[crop]))
  return row


def check_problems(problems: list[str], skip_bad: bool) -> None:
  if problems and not skip_bad:
    more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
    raise PairError("; ".join(problems[:10]) + more)


def set_samples(name: str, spec, data_dir: str | None = None
                ) -> tuple[Iterable[Callable[[], Sample]], list[str], dict]:
  """The samples of one entry of `config.eval.sets`, the pairing problems, and report metadata.

  An entry is a folder pair (`dict(rainy=DIR, clean=DIR)`, clean optional) or a built TFDS
  split as "name:split" (e.g. "synthetic_rain/shipped:validation", see sapnet_jax.data).
  """
  if isinstance(spec, str):
    from sapnet_jax.data import pipeline  # deferred: only built datasets need TFDS and grain
    dataset_size(spec, data_dir)  # now, not at the first image: an unbuilt one says how to build

    def tfds_loaders():
      # Every process scores every image: validation runs on process 0 only.
      for ex in pipeline.make_eval_iterator(spec, data_dir=data_dir, process_index=0,
                                            process_count=1):
        clean = ex["clean"][0] if "clean" in ex else None
        yield lambda ex=ex, clean=clean: Sample(str(ex["name"][0]), ex["rainy"][0], clean)
    return tfds_loaders(), [], {"set": name, "dataset": spec}
  if "rainy" not in spec:
    raise ValueError(f"eval.sets.{name}: needs 'rainy' (and usually 'clean') folders, or a "
                     "'name:split' string of a built dataset")
  clean = spec.get("clean")
  loaders, problems = folder_samples(spec["rainy"], clean)
  return loaders, problems, {"set": name, "rainy": spec["rainy"], "clean": clean}


def dataset_size(spec: str, data_dir: str | None = None) -> int:
  """Images in the built split "name:split"; ValueError naming how to build it if it is not."""
  from sapnet_jax.data import pipeline  # deferred: only built datasets need TFDS and grain
  return len(pipeline.Source(pipeline.parse_specs(spec, data_dir)[0]))


def check_sets(ev, data_dir: str | None = None) -> None:
  """Raises ValueError naming `config.eval.sets.NAME` unless every eval set can be scored: its
  folders exist and pair up (or `skip_bad`), or its dataset is built, with at least one image.
  Training calls it before step 1, so a bad set fails the run there, not at a validation."""
  for name, spec in ev.sets.items():
    field = f"config.eval.sets.{name}"
    try:
      if isinstance(spec, str):
        count = dataset_size(spec, data_dir)
      else:
        loaders, problems, _ = set_samples(name, spec, data_dir)
        check_problems(problems, ev.skip_bad)
        count = len(loaders)
    except (OSError, ValueError, PairError) as e:
      raise ValueError(f"{field}: {e}") from None
    if count == 0:
      raise ValueError(f"{field}: no images in {spec}")


def evaluate_sets(derainer: Callable, ev, out_root: str, meta: dict, data_dir: str | None = None,
                  progress: bool = True) -> dict[str, dict]:
  """Scores `derainer` on every set of the eval config block `ev`; writes
  OUT_ROOT/<set>/metrics.{json,csv} and grid.png. Training's validation calls this too."""
  results = {}
  for name, spec in ev.sets.items():
    loaders, problems, set_meta = set_samples(name, spec, data_dir)
    check_problems(problems, ev.skip_bad)
    out = fileio.join(out_root, name)
    reports = Reports(fileio.join(out, "metrics.json"), fileio.join(out, "metrics.csv"),
                      {**meta, **set_meta, "quantize": ev.quantize, "crop_border": ev.crop_border})
    reports.skipped.extend(problems)
    grid = GridCollector(ev.grid_count)
    try:
      results[name] = score_samples(derainer, loaders, reports, tile=ev.tile or None,
                                    overlap=ev.overlap, quantize_mode=ev.quantize,
                                    border=ev.crop_border, skip_bad=ev.skip_bad, grid=grid,
                                    progress=progress)
    finally:
      grid.write(fileio.join(out, "grid.png"))
  return results


def evaluate_workdir(config, workdir: str) -> dict[str, dict]:
  """Scores the checkpoint of `config.eval.step` (-1: latest) in WORKDIR/checkpoints on every
  set of `config.eval.sets`; writes WORKDIR/eval/step_<N>/<set>/metrics.{json,csv} and grid.png.
  With `config.eval.weights` (a pretrained name or weights path) those weights are scored
  instead, into WORKDIR/eval/weights_<name>/: no checkpoint is needed.
  """
  ev = config.eval
  data_dir = config.data.get("data_dir") if "data" in config else None
  check_sets(ev, data_dir)
  if ev.get("weights"):
    model = registry.load(ev.weights, **eval_overrides(config.model))
    label = "weights_" + "".join(c if c.isalnum() or c in "-_." else "_"
                                 for c in registry.display_name(ev.weights))
    meta = {"weights": ev.weights}
  else:
    path = model_files.step_dir(fileio.join(workdir, "checkpoints"),
                               None if ev.step < 0 else ev.step)
    step = fileio.basename(path)
    model = model_files.load_model(path, **eval_overrides(config.model))
    label, meta = f"step_{step}", {"checkpoint": path, "step": int(step)}
  # impl=None: the kernel set the config asked for, as resolved when the weights were loaded.
  results = evaluate_sets(infer.Derainer(model, impl=None), ev,
                          fileio.join(workdir, "eval", label), meta, data_dir)
  for name, summary in results.items():
    print(f"[{name}] {label}\n{format_table(summary)}")
  return results


def eval_overrides(model_cfg) -> dict:
  """The fields of a model config that may differ from the checkpoint's: how it computes."""
  return {k: model_cfg[k] for k in models.COMPUTE_FIELDS if k in model_cfg}


def format_table(summary: dict) -> str:
  lines = [f"{'metric':<15} {'mean':>10}  convention"]
  for key, value in summary["means"].items():
    lines.append(f"{key:<15} {value:>10.4f}  {summary['conventions'][key]}")
  lines.append(f"{summary['count']} images, {len(summary['skipped'])} skipped, "
               f"{summary.get('images_per_second', 0):.3f} images/s")
  return "\n".join(lines)
