"""Planning a table's runs: per (row, seed) the config spec, the flags its scale adds and its
step count, and the sets every run is scored on; importable, so tests and tools can plan
without running anything."""

from __future__ import annotations

import os
from typing import Sequence

from sapnet_jax.data import prepare
from sapnet_jax.experiments import runner, tables
from sapnet_jax.training import loop


def scoring_sets(rain100h: str | None, real: str | None) -> dict:
  sets = {"synthetic_val": tables.SYNTHETIC_VAL}
  if rain100h:
    sets["rain100h"] = rain100h if ":" in rain100h and not os.path.isdir(rain100h) else {
        "rainy": os.path.join(rain100h, "rainy"), "clean": os.path.join(rain100h, "clean")}
  if real:
    sets["real"] = {"rainy": real}
  return sets


def plan(table: tables.Table, scale: str, seeds: Sequence[int], workdir: str, configs_dir: str,
         weight_files: dict[str, str | None], data_dir: str | None
         ) -> tuple[list[runner.Run], dict]:
  """The runs of the table, and per row its config spec and the flags the scale adds;
  `weight_files` (loss field -> file) fill the frozen nets' fields a config leaves unset."""
  runs, rows = [], {}
  for row in table.rows:
    spec = f"{configs_dir}/{row.config}:{row.variant_at(scale)}"
    try:
      rows[row.name], flags, steps = _plan_row(row, spec, scale, configs_dir, weight_files,
                                               data_dir)
    except (OSError, ValueError) as e:
      raise ValueError(f"{spec} (row {row.name}): {e}") from None
    for seed in seeds:
      workdir_s = runner.run_dir(workdir, row.name, seed)
      args = (f"--config={spec}", f"--workdir={workdir_s}", f"--config.seed={seed}",
              f"--config.data.seed={seed}", *flags)
      runs.append(runner.Run(row.name, seed, workdir_s, args, steps))
  return runs, rows


def _plan_row(row: tables.Row, spec: str, scale: str, configs_dir: str,
              weight_files: dict[str, str | None], data_dir: str | None
              ) -> tuple[dict, list[str], int]:
  config = tables.load_config(configs_dir, row, scale)
  if data_dir:
    config.data.data_dir = data_dir

  def per_epoch(cfg) -> int:  # builds a dataset the config builds on first use (idempotent)
    if cfg.data.get("prepare"):
      prepare.build(cfg.data.dataset, data_dir=cfg.data.get("data_dir"),
                    manual_dir=cfg.data.get("manual_dir"))
    return loop.steps_per_epoch(cfg)

  overrides = {**tables.scale_overrides(config, scale, per_epoch),
               **tables.weight_overrides(config, weight_files)}
  if data_dir:
    overrides["data.data_dir"] = data_dir
  tables.apply(config, overrides)
  steps = loop.total_steps(config, per_epoch(config))
  flags = [tables.flag(k, v) for k, v in overrides.items()]
  info = {"config": spec, "args": flags, "runs": {}, "curve_set": next(iter(config.eval.sets))}
  return info, flags, steps
