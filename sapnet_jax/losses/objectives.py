"""What training minimises, per model family: a loss function and the frozen nets it runs.

`build(config)` returns `(loss_fn, frozen)`: `frozen` is the state (a pytree) of the networks
the loss runs but never trains, passed to the jitted step as an argument so that it is neither
differentiated nor baked into the compiled program as constants; `loss_fn(model, frozen, batch,
epoch)` returns the scalar to minimise and a dict of every term for logging (train.LossFn).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from sapnet_jax.losses import frozen_nets, msnet, sapnet


def build(config: Any, random_missing: bool = False) -> tuple[Callable, Any]:
  """`random_missing`: frozen_nets.build_frozen_nets's (benchmarks without weight files)."""
  family = config.model.family
  if family == "pdu":
    return _pdu_objective(config.loss, random_missing)
  if family == "msnet":
    return _msnet_objective(config.loss, bool(config.data.get("real_dataset"))), None
  raise ValueError(f"config.model.family={family!r}: no training objective; known: pdu, msnet")


def _pdu_objective(loss_cfg: Any, random_missing: bool = False) -> tuple[Callable, Any]:
  """SAPNet/PReNet: -SSIM plus the perceptual, LPIPS and segmentation terms of config.loss."""
  graphdef, frozen = nnx.split(frozen_nets.build_frozen_nets(loss_cfg, random_missing))

  def loss_fn(model: nnx.Module, frozen_state: Any, batch: dict, epoch: jax.Array):
    derained = model(batch["rainy"])
    nets = nnx.merge(graphdef, jax.lax.stop_gradient(frozen_state))
    return sapnet.total_loss(loss_cfg, nets, derained, batch["clean"], batch["rainy"],
                             epoch=epoch)

  return loss_fn, frozen


def _msnet_objective(loss_cfg: Any, has_real: bool) -> Callable:
  """MSNet: the supervised loss on the synthetic pairs plus ω times the matching loss between
  the matching network's features of the synthetic and of the real (unlabelled) batch."""
  weight = float(loss_cfg.matching_weight)
  if weight and not has_real:
    raise ValueError(f"config.loss.matching_weight={weight} needs unlabelled real images: set "
                     "config.data.real_dataset (or matching_weight=0 for supervised training)")

  def loss_fn(model: nnx.Module, frozen_state: Any, batch: dict, epoch: jax.Array):
    del frozen_state, epoch
    derained, feat_syn = model(batch["rainy"], return_features=True)
    total, terms = msnet.supervised_loss(derained, batch["clean"], loss_cfg)
    if weight:
      match, parts = msnet.matching_loss(
          feat_syn, model.features(batch["real"]), squared=bool(loss_cfg.matching_squared),
          cov_norm=str(loss_cfg.matching_cov_norm))
      total = total + weight * match
      terms = {**terms, "match_mean": parts["mean"], "match_cov": parts["cov"]}
    return total, terms

  return loss_fn
