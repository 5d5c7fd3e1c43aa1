"""Flax NNX networks. Nothing here imports the rest of the package.

A model's architecture is a frozen config dataclass; `config_to_dict`/`config_from_dict`
give the JSON form that checkpoints store beside the weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from sapnet_jax.models import msnet, pdu

FAMILIES = {"pdu": (pdu.PDUConfig, pdu.PDUNet), "msnet": (msnet.MSNetConfig, msnet.MSNet)}


def config_to_dict(cfg: Any) -> dict[str, Any]:
  for family, (config_cls, _) in FAMILIES.items():
    if isinstance(cfg, config_cls):
      return {"family": family, **dataclasses.asdict(cfg)}
  raise TypeError(f"not a model config: {type(cfg).__name__}")


def config_from_dict(d: dict[str, Any]) -> Any:
  d = dict(d)
  family = d.pop("family", None)
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
  config_cls = FAMILIES[family][0]
  fields = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f"unknown {family} model config fields: {unknown}")
  return config_cls(**d)


def build(cfg: Any, rngs: nnx.Rngs) -> nnx.Module:
  for config_cls, model_cls in FAMILIES.values():
    if isinstance(cfg, config_cls):
      return model_cls(cfg, rngs=rngs)
  raise TypeError(f"not a model config: {type(cfg).__name__}")
