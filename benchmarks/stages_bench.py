"""The speed/quality dial: Rain100H scores of a progressive network after each of its stages,
and the time of a de-raining at each `--stages N`. Writes JSON and prints a markdown table.

    python benchmarks/stages_bench.py [--weights sapnet-rain100h] [--limit 100] [--out FILE]

Every stage's output is the result `--stages N` gives (stages share weights and a stage never
looks ahead), so one 6-stage pass per image with `return_stages` scores all of N = 1..6: all
six conventions (full_reference.score_pair) on the 8-bit rounded result, as `evaluate` scores. Time:
`infer.Derainer(model, stages=N)` on the first image, median of 5 calls after a compile, on
this machine's CPU (named in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sapnet_jax import infer, models, pretrained  # noqa: E402
from sapnet_jax.evaluation import scoring
from sapnet_jax.metrics import full_reference
from sapnet_jax.runtime import xla_options
from sapnet_jax.models import ops  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data", "rain100h")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", default=pretrained.DEFAULT)
  parser.add_argument("--limit", type=int, default=100, help="first N pairs")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  if not os.path.isdir(DATA):
    raise SystemExit(f"{DATA}: Rain100H is not there (../shared beside the repo)")
  model = pretrained.load(args.weights)
  model = models.with_config(model, impl=ops.resolve("auto", jax.devices()[0].platform))
  stages = model.cfg.stages
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x, return_stages=True)[1])
  loaders, problems = scoring.folder_samples(os.path.join(DATA, "rainy"),
                                                os.path.join(DATA, "clean"))
  if problems:
    raise SystemExit("\n".join(problems))
  loaders = loaders[:args.limit]
  per_stage = [[] for _ in range(stages)]
  first = None
  for i, load in enumerate(loaders):
    sample = load()
    first = sample if first is None else first
    outs = np.asarray(forward(state, jnp.asarray(sample.rainy[None])))[:, 0]
    for n in range(stages):
      per_stage[n].append(full_reference.score_pair(scoring.quantize(outs[n], "round"),
                                             sample.clean))
    if (i + 1) % 10 == 0:
      print(f"{i + 1} images", file=sys.stderr, flush=True)
  rows = []
  for n in range(1, stages + 1):
    derainer = infer.Derainer(pretrained.load(args.weights), stages=n)
    np.asarray(derainer.batch(first.rainy[None]))
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      np.asarray(derainer.batch(first.rainy[None]))
      times.append(time.perf_counter() - start)
    means = {k: float(np.mean([s[k] for s in per_stage[n - 1]])) for k in per_stage[0][0]}
    rows.append({"stages": n, **means, "seconds": float(np.median(times)),
                 "image": f"{first.rainy.shape[1]}x{first.rainy.shape[0]}"})
  result = {"cpu": xla_options.cpu_description(), "weights": args.weights,
            "images": len(loaders), "rows": rows,
            "command": "python benchmarks/stages_bench.py " + " ".join(sys.argv[1:])}
  full = rows[-1]["seconds"]
  print("| stages | psnr_rgb | ssim_rgb | psnr_y | ssim_y | seconds per image | of 6 stages |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['stages']} | {r['psnr_rgb']:.2f} | {r['ssim_rgb']:.4f} | {r['psnr_y']:.2f} | "
          f"{r['ssim_y']:.4f} | {r['seconds']:.2f} | {r['seconds'] / full:.0%} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
