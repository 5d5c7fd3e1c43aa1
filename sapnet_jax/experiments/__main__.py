"""The papers' ablation tables as one command: seeded runs, scores, intervals and curves.

    python -m sapnet_jax.experiments --table attention|contrast|components|msnet \
        --scale smoke|demo|paper --seeds N --workdir W

Every (row, seed) is one `python -m sapnet_jax.main` run of the row's own config file in
W/ROW/seed_S (seeds 0..N-1 set both `config.seed` and `config.data.seed`), one run at a time,
each using every local device. Run again after a kill: finished runs are skipped, a killed run
resumes from its checkpoint, finished scores are kept. Then every run's final weights are
scored on the same sets: the held-out synthetic pairs, Rain100H (--rain100h: a folder with
rainy/ and clean/, or a built "rain100h:test") and the real photos (--real: NIQE, BRISQUE),
with LPIPS-Alex wherever there is a clean image. Writes W/table.json, W/table.md and
W/curves.png. Scales: sapnet_jax/experiments/tables.py; results: docs/experiments.md.
Run from the repository root (the configs folder is ./configs unless --configs_dir says).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from sapnet_jax.evaluation import scoring
from sapnet_jax.experiments import plan, report, runner, score_runs, tables
from sapnet_jax.utils import fileio, flags

SHARED = os.path.join("..", "shared")
# The frozen nets' weight files, by the config.loss field each fills (for the configs that
# leave it unset): what it is, and where it lies inside --weights_dir (the layout of the
# project's ../shared/weights).
FROZEN_WEIGHTS = {
    "vgg_weights": ("VGG-16 features (PCL)", "vgg16_imagenet/vgg16_features_hwio.npz"),
    "alexnet_weights": ("AlexNet features (LPIPS-Alex, also of every table's scores)",
                        "alexnet_imagenet/alexnet_features_hwio.npz"),
    "lpips_weights": ("LPIPS v0.1 linear layers for AlexNet (likewise)", "lpips/alex_v0.1.pth"),
}


def _default(path: str) -> str | None:
  return path if os.path.exists(path) else None


def main(argv: Sequence[str] | None = None) -> int:
  parser = flags.command_parser("sapnet_jax.experiments", __doc__)
  parser.add_argument("--table", required=True, choices=sorted(tables.TABLES))
  parser.add_argument("--scale", default="demo", choices=tables.SCALES)
  parser.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1")
  parser.add_argument("--workdir", required=True, metavar="W", help="a local folder")
  parser.add_argument("--configs_dir", default="configs", metavar="DIR")
  parser.add_argument("--weights_dir", default=_default(os.path.join(SHARED, "weights")),
                      metavar="DIR", help="VGG-16, AlexNet and LPIPS weights laid out as the "
                      "project's ../shared/weights (default: that folder if it exists)")
  for field, (what, place) in FROZEN_WEIGHTS.items():
    parser.add_argument(f"--{field}", metavar="PATH", help=f"{what} for the configs that leave "
                        f"config.loss.{field} unset (default: --weights_dir's {place})")
  parser.add_argument("--rain100h", default=_default(os.path.join(SHARED, "data", "rain100h")),
                      metavar="DIR|NAME:SPLIT", help="Rain100H test pairs (rainy/, clean/) or a "
                      "built split; default ../shared/data/rain100h if it exists")
  parser.add_argument("--real", default=_default(os.path.join(SHARED, "data", "real_rainy")),
                      metavar="DIR", help="real rainy photos (NIQE, BRISQUE); default "
                      "../shared/data/real_rainy if it exists")
  parser.add_argument("--data_dir", metavar="DIR", help="TFDS data_dir of the built datasets")
  args = parser.parse_args(argv)
  if fileio.is_remote(args.workdir):
    parser.error(f"--workdir={args.workdir}: must be a local folder (runs log into it)")
  if args.seeds < 1:
    parser.error("--seeds must be at least 1")
  workdir = os.path.abspath(args.workdir)
  table, seeds = tables.TABLES[args.table], list(range(args.seeds))
  files = weight_files(args)
  for field in ("alexnet_weights", "lpips_weights"):  # every table is scored with LPIPS-Alex
    if files[field] and not fileio.exists(files[field]):
      parser.error(f"--{field}: {files[field]}: no such file")
  try:
    runs, rows = plan.plan(table, args.scale, seeds, workdir, args.configs_dir, files,
                           args.data_dir)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  cwd = os.path.dirname(os.path.abspath(args.configs_dir))
  env = dict(os.environ)
  # Seeds of a row compile the same programs: XLA's persistent cache compiles them once.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, ".jax_cache"))
  fileio.makedirs(workdir)
  durations = []
  for k, run in enumerate(runs, 1):
    record = runner.info(run)
    if record is None:
      print(f"[{k}/{len(runs)}] {table.name}/{run.row} seed {run.seed}: training "
            f"({run.steps} steps) in {run.workdir}", flush=True)
      try:
        record = runner.train(run, cwd, env)
      except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
      if not record.get("adopted"):
        durations.append(record["wall_s"])
    curve = runner.validation_curve(run.workdir, rows[run.row]["curve_set"])
    left = [r for r in runs[k:] if runner.info(r) is None]
    eta = (f"; about {len(left) * sum(durations) / len(durations) / 60:.1f} min left"
           if durations and left else "")
    last = f", last validation {list(curve.values())[-1]:.2f} dB" if curve else ""
    took = "adopted" if record.get("adopted") else f"{record.get('wall_s', 0):.0f} s"
    print(f"[{k}/{len(runs)}] {table.name}/{run.row} seed {run.seed}: done ({took}{last})"
          f"{eta}", flush=True)
    rows[run.row]["runs"][run.seed] = {"run": record, "curve": curve}

  limit = tables.SCORE_LIMIT[args.scale]
  sets = plan.scoring_sets(args.rain100h, args.real)
  lpips_files = files["alexnet_weights"], files["lpips_weights"]
  metric = score_runs.lpips_alex(*lpips_files) if all(lpips_files) else None
  print(f"scoring {len(runs)} runs on {', '.join(sets)}"
        + (f" (first {limit} images of each)" if limit else ""), flush=True)
  for run in runs:
    out = fileio.join(run.workdir, "scores")
    results = score_runs.finished_scores(out, sets, limit)
    if results is None:
      t0 = time.time()
      results = score_runs.score_run(run.workdir, sets, limit, metric, args.data_dir)
      print(f"  {run.row} seed {run.seed}: scored in {time.time() - t0:.0f} s", flush=True)
    rows[run.row]["runs"][run.seed]["scores"] = report.flatten_scores(results)
  base_dir = fileio.join(workdir, "rainy_input")
  baseline = score_runs.finished_scores(base_dir, sets, limit) or score_runs.score(
      scoring.identity, sets, base_dir, {"weights": "identity"}, limit, metric,
      data_dir=args.data_dir)
  data = report.build(table, args.scale, seeds, rows, report.flatten_scores(baseline))
  report.write(data, workdir)
  print(report.markdown(data))
  print(f"wrote {workdir}/table.json, table.md, curves.png")
  return 0


def weight_files(args: argparse.Namespace) -> dict[str, str | None]:
  """Each frozen net's file (absolute, as runs start in another folder): its own flag, else
  its place inside --weights_dir, else None (a config that needs it then names its field)."""
  files = {}
  for field, (_, place) in FROZEN_WEIGHTS.items():
    path = getattr(args, field) or (
        fileio.join(args.weights_dir, *place.split("/")) if args.weights_dir else None)
    files[field] = fileio.absolute(path) if path else None
  return files


if __name__ == "__main__":
  sys.exit(main())
