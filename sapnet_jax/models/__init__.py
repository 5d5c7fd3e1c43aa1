"""Flax NNX networks: the de-raining families (`pdu`, the SAPNet/PReNet/PRN "progressive dilated
unit" family; `msnet`), the frozen nets of the losses (`vgg`, `alexnet`, `resnet_fpn`) and the
kernel sets of `ops`.

May import: nothing else from the package (what a network computes depends on no other part).

A model's architecture is a frozen config dataclass; `config_to_dict`/`config_from_dict`
give the JSON form that checkpoints store beside the weights. Its `impl` field picks the
kernel set (models/ops.py); "auto" is resolved by whoever builds the model, for the platform
it runs on (`resolve_impl`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from sapnet_jax.models import msnet, ops, pdu

FAMILIES = {"pdu": (pdu.PDUConfig, pdu.PDUNet), "msnet": (msnet.MSNetConfig, msnet.MSNet)}
# Config fields that change how a network computes, not what it is: a checkpoint may be
# resumed, fine-tuned or evaluated with other values.
COMPUTE_FIELDS = ("scan", "dtype", "remat", "impl")
# Fields that only choose how fresh weights are drawn: any value fits trained weights.
INIT_FIELDS = ("zero_init_output",)
# Compute fields of older checkpoints, ignored when read (`impl` replaced `conv_wgrad`).
_RETIRED_FIELDS = ("conv_wgrad",)


def config_to_dict(cfg: Any) -> dict[str, Any]:
  for family, (config_cls, _) in FAMILIES.items():
    if isinstance(cfg, config_cls):
      return {"family": family, **dataclasses.asdict(cfg)}
  raise TypeError(f"not a model config: {type(cfg).__name__}")


def config_from_dict(d: dict[str, Any]) -> Any:
  d = {k: v for k, v in d.items() if k not in _RETIRED_FIELDS}
  family = d.pop("family", None)
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
  config_cls = FAMILIES[family][0]
  fields = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f"unknown {family} model config fields: {unknown}")
  return config_cls(**d)


def architecture(config: dict[str, Any]) -> dict[str, Any]:
  """A config dict without its compute fields: what must match for weights to fit."""
  return {k: v for k, v in config.items()
          if k not in COMPUTE_FIELDS + INIT_FIELDS + _RETIRED_FIELDS}


def preset_name(cfg: Any) -> str | None:
  """The name users know a config by: its family ("msnet"), or the PDU preset ("sapnet",
  "prenet", "prn") whose architecture it has; None for a PDU config of no preset."""
  config = config_to_dict(cfg)
  if config["family"] != "pdu":
    return config["family"]
  for name, preset in pdu.PRESETS.items():
    if architecture(config_to_dict(preset)) == architecture(config):
      return name
  return None


def resolve_impl(cfg: Any, platform: str) -> Any:
  """`cfg` with its `impl` resolved for a JAX platform ("cpu", "gpu", "tpu")."""
  return dataclasses.replace(cfg, impl=ops.resolve(cfg.impl, platform))


def build(cfg: Any, rngs: nnx.Rngs) -> nnx.Module:
  for config_cls, model_cls in FAMILIES.values():
    if isinstance(cfg, config_cls):
      return model_cls(cfg, rngs=rngs)
  raise TypeError(f"not a model config: {type(cfg).__name__}")


def with_config(model: nnx.Module, **fields) -> nnx.Module:
  """The same weights in a model whose config has `fields` replaced (compute fields only: the
  parameters must keep their names and shapes)."""
  cfg = dataclasses.replace(model.cfg, **fields)
  if cfg == model.cfg:
    return model
  new = nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0)))
  nnx.update(new, nnx.state(model))
  return new


def count_params(model: nnx.Module) -> int:
  return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
