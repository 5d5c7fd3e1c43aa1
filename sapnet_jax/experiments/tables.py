"""The papers' ablation tables: which config file is each row, and how each scale shrinks it.

A row is an existing config file and variant (configs/attention_ablation.py:se, ...), so a table
and the configs cannot drift apart. A scale changes only size and length (model width, stages,
patch and batch, steps, the frozen nets' input size, how many images are scored) and maps the
config's epoch schedule (lr milestones, the seg term's start) onto the shorter run at the same
fractions of training; it never changes what a row means (its attention, losses, data pairing).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys
from typing import Any, Callable

import ml_collections

from sapnet_jax.utils import fileio


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  config: str  # file name under the configs folder
  variant: str
  # The paper's figures for this row (Rain100H, RGB PSNR "sklearn" / SSIM: the papers' tables).
  paper: dict[str, float] = dataclasses.field(default_factory=dict)
  # Variant per scale where the config file has its own (configs/msnet_semi.py:demo).
  scale_variants: dict[str, str] = dataclasses.field(default_factory=dict)

  def variant_at(self, scale: str) -> str:
    return self.scale_variants.get(scale, self.variant)


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  rows: tuple[Row, ...]
  paper_source: str
  reference: str  # the paper's full model, which every other row is compared with


def _p(psnr: float, ssim: float) -> dict[str, float]:
  return {"rain100h/psnr_rgb": psnr, "rain100h/ssim_rgb": ssim}


_MSNET = {"demo": "demo", "smoke": "demo"}
TABLES = {t.name: t for t in (
    Table("attention", "SAPNet with SE, CA, CRA or no attention (SAPNet paper, Table 2)", (
        Row("se", "attention_ablation.py", "se", _p(28.74, 0.890)),
        Row("ca", "attention_ablation.py", "ca", _p(28.89, 0.892)),
        Row("cra", "attention_ablation.py", "cra", _p(29.46, 0.897)),
        Row("conv", "attention_ablation.py", "conv"),  # in the text, not in the table
    ), "Zheng et al. 2022, Table 2 (Rain100H)", "cra"),
    Table("contrast", "SAPNet without a contrastive loss, with L1-CL or with PCL "
          "(SAPNet paper, Table 3)", (
              Row("no_cl", "contrast_ablation.py", "no_cl", _p(28.96, 0.888)),
              Row("l1_cl", "contrast_ablation.py", "l1_cl", _p(26.84, 0.853)),
              Row("pcl", "contrast_ablation.py", "pcl", _p(29.46, 0.897)),
          ), "Zheng et al. 2022, Table 3 (Rain100H, 100 % of the training images)", "pcl"),
    Table("components", "SAPNet built up component by component (SAPNet paper, Table 4)", (
        Row("m1", "components_ablation.py", "m1", _p(27.94, 0.882)),
        Row("m2", "components_ablation.py", "m2", _p(28.34, 0.886)),
        Row("m3", "components_ablation.py", "m3", _p(28.56, 0.887)),
        Row("m4", "components_ablation.py", "m4", _p(28.93, 0.891)),
        Row("m5", "components_ablation.py", "m5", _p(29.36, 0.896)),
        Row("ours", "components_ablation.py", "ours", _p(29.46, 0.897)),
    ), "Zheng et al. 2022, Table 4 (Rain100H)", "ours"),
    Table("msnet", "MSNet semi-supervised against supervised only (Qiu et al. 2022)", (
        Row("semi", "msnet_semi.py", "paper", _p(30.68, 0.93), _MSNET),
        Row("supervised", "msnet_supervised.py", "paper", {}, _MSNET),
    ), "Qiu et al. 2022, Table 1 (Rain100H; the paper has no supervised-only row)", "semi"),
)}
SCALES = ("smoke", "demo", "paper")

# The demo's data: synthetic rain over the photos shipped in the package (configs/demo.py).
DEMO_DATA = dict(dataset="synthetic_rain/shipped", prepare=True, patch_mode="random")
SYNTHETIC_VAL = "synthetic_rain/shipped:validation"
# Size and length per scale and model family; None: the config's own value.
_PDU = {
    "smoke": dict(model=dict(channels=8, stages=2, reduction=4),
                  data=dict(DEMO_DATA, patch_size=32, global_batch_size=2),
                  loss=dict(lpips_size=32, seg_resnet_depth=50), steps=6, validations=2),
    "demo": dict(model=dict(channels=16, stages=4, reduction=4),
                 data=dict(DEMO_DATA, patch_size=64, global_batch_size=8),
                 loss=dict(lpips_size=64, seg_resnet_depth=50), steps=240, validations=4),
}
_MSNET_SCALE = {  # on top of the config's own demo variant
    "smoke": dict(model=dict(channels=8, units=2), data=dict(patch_size=32, global_batch_size=2),
                  steps=6, validations=2),
    "demo": dict(),
}
# How many images of each scoring set a scale scores (None: all).
SCORE_LIMIT = {"smoke": 2, "demo": None, "paper": None}


def load_config(configs_dir: str, row: Row, scale: str) -> ml_collections.ConfigDict:
  """The row's config as `python -m sapnet_jax.main --config=DIR/FILE:VARIANT` builds it."""
  path = f"{configs_dir}/{row.config}"
  parent = str(pathlib.Path(configs_dir).resolve().parent)
  if parent not in sys.path:  # config files import their siblings as `configs.default`
    sys.path.insert(0, parent)
  spec = importlib.util.spec_from_file_location(f"_experiment_config_{row.config[:-3]}", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"{path}: no such config file (--configs_dir)")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(row.variant_at(scale))


def scale_overrides(config: Any, scale: str, steps_per_epoch: Callable[[Any], int] | None = None
                    ) -> dict[str, Any]:
  """Config fields ("train.num_steps" -> value) that size `config` for `scale`.

  `steps_per_epoch(config)` (train.steps_per_epoch; it reads the built dataset) converts the
  schedule's epochs into the same fractions of the shorter run; None leaves them as they are.
  """
  if scale not in SCALES:
    raise ValueError(f"--scale={scale!r}: unknown; known: {', '.join(SCALES)}")
  if scale == "paper":
    return {}
  family = config.model.family
  plan = (_PDU if family == "pdu" else _MSNET_SCALE)[scale]
  out = {f"{block}.{k}": v for block in ("model", "data", "loss")
         for k, v in plan.get(block, {}).items()}
  # Validation during training (the curves) on the held-out synthetic pairs; the table scores
  # Rain100H and the real photos once, at the end.
  out["eval.sets"] = {"synthetic_val": SYNTHETIC_VAL}
  if "steps" not in plan:
    return out
  steps = plan["steps"]
  every = max(1, steps // plan["validations"])
  out.update({"train.num_steps": steps, "train.eval_every": every, "train.save_every": every,
              "train.log_every": every})
  if steps_per_epoch is not None:
    epochs = (config.train.num_steps / steps_per_epoch(config) if config.train.num_steps
              else float(config.train.num_epochs))
    scaled = ml_collections.ConfigDict(config.to_dict())
    apply(scaled, {k: v for k, v in out.items() if k.startswith("data.")})
    run_epochs = steps / steps_per_epoch(scaled)
    out["optim.milestones"] = tuple(round(m / epochs * run_epochs, 4)
                                    for m in config.optim.milestones)
    if family == "pdu":
      out["loss.seg_start_epoch"] = round(config.loss.seg_start_epoch / epochs * run_epochs, 4)
  return out


def weight_overrides(config: Any, weight_files: dict[str, str | None]) -> dict[str, Any]:
  """The frozen nets' weight files (loss field name -> file, None: not given) for the loss
  fields a config leaves unset; a field with no file stays unset and training names it."""
  if config.model.family != "pdu":
    return {}
  out = {f"loss.{k}": path for k, path in weight_files.items() if path and not config.loss[k]}
  for key, path in out.items():
    if not fileio.exists(path):
      raise FileNotFoundError(f"{path}: no such weights file (for config.{key}; "
                              f"--{key.split('.')[-1]} or --weights_dir names another)")
  return out


def apply(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """Sets each dotted field of `overrides` in `config` (as the command-line flags do)."""
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[last] = value


def flag(key: str, value: Any) -> str:
  """`--config.KEY=VALUE` as ml_collections' config flags parse it."""
  if isinstance(value, tuple):
    value = "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  elif isinstance(value, dict):
    value = json.dumps(value)
  return f"--config.{key}={value}"
