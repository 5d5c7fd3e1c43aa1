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

from sapnet_jax import losses


def build(config: Any) -> tuple[Callable, Any]:
  family = config.model.family
  if family == "pdu":
    return _pdu_objective(config.loss)
  raise ValueError(f"config.model.family={family!r}: no training objective; known: pdu")


def _pdu_objective(loss_cfg: Any) -> tuple[Callable, Any]:
  """SAPNet/PReNet: -SSIM plus the perceptual, LPIPS and segmentation terms of config.loss."""
  graphdef, frozen = nnx.split(losses.build_frozen_nets(loss_cfg))

  def loss_fn(model: nnx.Module, frozen_state: Any, batch: dict, epoch: jax.Array):
    derained = model(batch["rainy"])
    nets = nnx.merge(graphdef, jax.lax.stop_gradient(frozen_state))
    return losses.total_loss(loss_cfg, nets, derained, batch["clean"], batch["rainy"],
                             epoch=epoch)

  return loss_fn, frozen
