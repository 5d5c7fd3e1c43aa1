"""Scoring every run of a table on the same sets, with evaluation's loop and reports.

Sets with ground truth get the six full-reference numbers plus LPIPS-Alex (the lpips package's
defaults: whole image in [-1, 1]); real photos get NIQE and BRISQUE of the output (the input's
own scores are the same for every run, so they are computed once, as the "rainy input" row).
Reports go to RUN/scores/SET/metrics.json in `python -m sapnet_jax.evaluate`'s format.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from sapnet_jax import infer
from sapnet_jax.evaluation import scoring
from sapnet_jax.losses import frozen_nets, sapnet
from sapnet_jax.utils import fileio
from sapnet_jax.weights import model_files

Metric = Callable[[np.ndarray, np.ndarray], dict]


def lpips_alex(alexnet_weights: str, lpips_weights: str) -> Metric:
  """LPIPS-Alex of an output against its clean image, from the AlexNet features' weights and
  the LPIPS v0.1 linear layers for AlexNet (files as config.loss takes them)."""
  cfg = ml_collections.ConfigDict(dict(
      contrast="none", lpips_weight=1.0, lpips_net="alex", seg_weight=0.0,
      perceptual_dtype="float32", alexnet_weights=alexnet_weights, lpips_weights=lpips_weights))
  nets = frozen_nets.build_frozen_nets(cfg)
  trunk, heads = nets.alexnet, nets.lpips_heads.as_dict()
  distance = jax.jit(lambda x, y: sapnet.lpips(trunk, heads, x, y, net="alex", size=None))

  def metric(out: np.ndarray, clean: np.ndarray) -> dict:
    return {"lpips_alex": float(distance(out[None], clean[None])[0])}

  return metric


def score(derainer: Callable, sets: dict[str, Any], out_dir: str, meta: dict,
          limit: int | None = None, extra: Metric | None = None, score_input: bool = False,
          data_dir: str | None = None) -> dict[str, dict]:
  """Scores `derainer` on the first `limit` images of each set (folder pairs, a photo folder
  or a built "name:split"); returns {set: summary} and writes OUT_DIR/SET/metrics.json."""
  results = {}
  for name, spec in sets.items():
    loaders, problems, set_meta = scoring.set_samples(name, spec, data_dir)
    scoring.check_problems(problems, skip_bad=False)
    if limit is not None:
      loaders = list(itertools.islice(loaders, limit))
    path = fileio.join(out_dir, name, "metrics.json")
    reports = scoring.Reports(path, None, {**meta, **set_meta, "limit": limit,
                                              "quantize": "round"})
    results[name] = scoring.score_samples(derainer, loaders, reports, extra=extra,
                                          score_input=score_input, progress=False)
  return results


def score_run(run_dir: str, sets: dict[str, Any], limit: int | None, extra: Metric | None,
              data_dir: str | None = None) -> dict[str, dict]:
  """Scores the final weights of a training run (its checkpoint's params: the EMA when on)."""
  path = model_files.step_dir(fileio.join(run_dir, "checkpoints"))
  derainer = infer.Derainer(model_files.load_model(path))
  return score(derainer, sets, fileio.join(run_dir, "scores"),
               {"checkpoint": path, "step": int(fileio.basename(path))}, limit, extra,
               data_dir=data_dir)


def finished_scores(out_dir: str, sets: dict, limit: int | None) -> dict | None:
  results = {}
  for name in sets:
    path = fileio.join(out_dir, name, "metrics.json")
    if not fileio.exists(path):
      return None
    summary = json.loads(fileio.read_text(path))
    if not summary.get("complete") or summary.get("limit") != limit:
      return None
    results[name] = summary
  return results
