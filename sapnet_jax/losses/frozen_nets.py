"""The frozen networks the training losses run: VGG-16, AlexNet and the LPIPS heads, and the
ResNet-FPN of the segmentation-aware loss, built and loaded from config.loss.

sapnet_jax.losses.sapnet computes the terms from arrays and these modules; loading weights
(weights.backbones, weights.model_files) happens here, once, outside jit:

    frozen = frozen_nets.build_frozen_nets(config.loss)   # logs what is random
    total, terms = sapnet.total_loss(config.loss, frozen, derained, clean, rainy, epoch=epoch)
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sapnet_jax.losses import sapnet
from sapnet_jax.losses.sapnet import LossConfigError, field
from sapnet_jax.models import alexnet, resnet_fpn, vgg
from sapnet_jax.weights import backbones, model_files, torch_layout

log = logging.getLogger(__name__)


class LPIPSHeads(nnx.Module):
  """The five LPIPS v0.1 linear layers (1x1 convs without bias), as channel weight vectors."""

  def __init__(self, weights: Mapping[str, np.ndarray]):
    for k in range(5):
      setattr(self, f"lin{k}", nnx.Param(jnp.asarray(weights[f"lin{k}"], jnp.float32)))

  def as_dict(self) -> dict[str, jax.Array]:
    return {f"lin{k}": getattr(self, f"lin{k}")[...] for k in range(5)}


class FrozenNets(nnx.Module):
  """The networks the losses run but never train; a field is None when no term needs it."""

  def __init__(self, vgg: nnx.Module | None = None, alexnet: nnx.Module | None = None,
               lpips_heads: LPIPSHeads | None = None, seg: nnx.Module | None = None,
               notes: tuple[str, ...] = ()):
    # nnx.data: these attributes may be None, which NNX would otherwise mark static.
    self.vgg, self.alexnet = nnx.data(vgg), nnx.data(alexnet)
    self.lpips_heads, self.seg = nnx.data(lpips_heads), nnx.data(seg)
    self.notes = notes  # what is random or missing, for logs and run metadata


def _weights_path(cfg, name: str, needed_by: str, hint: str, notes: list[str] | None = None
                  ) -> str | None:
  """`config.loss.<name>`; when unset, an error naming it, or (with `notes`, the
  `random_missing` case) None and a note that the network stays random."""
  path = field(cfg, name)
  if not path and notes is not None:
    notes.append(f"config.loss.{name} is None: not loaded, random or uniform (random_missing)")
    return None
  if not path:
    raise LossConfigError(
        f"config.loss.{name} is None, but {needed_by} needs these weights. {hint} "
        f"Or set its weight to 0 to train without the term.")
  return str(path)


def _trunk(module_fn, path: str | None, kind: str) -> nnx.Module:
  """The frozen trunk built by `module_fn(rngs)`, its weights read from `path`; random when
  `path` is None."""
  if path is None:
    return module_fn(nnx.Rngs(0))
  module = nnx.eval_shape(lambda: module_fn(nnx.Rngs(0)))
  flat = backbones.load_backbone(path, kind)
  present = set(model_files.flatten(nnx.to_pure_dict(nnx.state(module))))
  flat = {k: v for k, v in flat.items() if k in present}  # deeper layers than needed: unused
  return model_files.fill_params(module, flat, path, variables=...)


def build_seg_net(cfg: resnet_fpn.ResNetFPNConfig, encoder_weights: str | None = None,
                  seed: int = 0) -> nnx.Module:
  """The frozen UBS network: decoder N(0, std) from `seed`; encoder converted or random."""
  flat = resnet_fpn.random_weights(cfg, seed)
  source = f"random ResNetFPN weights (seed {seed})"
  if encoder_weights:
    encoder = backbones.load_backbone(encoder_weights, "resnet101")
    if not any(k.startswith("resnet/") for k in encoder):  # an encoder alone
      encoder = {f"resnet/{k}": v for k, v in encoder.items()}
    unknown = sorted(k for k in encoder if k not in flat)
    missing = sorted(k for k in flat if k.startswith("resnet/") and k not in encoder)
    if unknown or missing:
      raise torch_layout.ConversionError(
          f"{encoder_weights}: encoder does not fit ResNet depths {cfg.depths} "
          f"(missing: {missing[:6]}, unexpected: {unknown[:6]})")
    flat.update(encoder)
    source = encoder_weights
  net = nnx.eval_shape(lambda: resnet_fpn.ResNetFPN(cfg, rngs=nnx.Rngs(0)))
  return model_files.fill_params(net, flat, source, variables=...)  # BatchNorm statistics too


def build_frozen_nets(cfg: Any, random_missing: bool = False) -> FrozenNets:
  """Builds and loads the networks that the enabled terms of `cfg` (config.loss) need.

  Missing VGG/AlexNet/LPIPS weights raise LossConfigError naming the config field; a missing
  ResNet encoder leaves the segmentation net random but fixed (seeded), logged as a warning.
  `random_missing`: missing VGG/AlexNet/LPIPS weights are random too (noted), for benchmarks
  on machines without the weight files: the same networks cost the same time.
  """
  needs = sapnet.needed_nets(cfg)
  dtype = field(cfg, "perceptual_dtype")
  notes = []
  missing_ok = notes if random_missing else None
  trunk_vgg = trunk_alex = heads = seg = None
  if needs["pcl"] or needs["lpips_vgg"]:
    who = " and ".join(n for n, on in (("the perceptual contrastive loss", needs["pcl"]),
                                       ("LPIPS-VGG", needs["lpips_vgg"])) if on)
    layers = (vgg.LPIPS_LAYERS if needs["lpips_vgg"] else ()) + (
        tuple(field(cfg, "pcl_layers")) if needs["pcl"] else ())
    last = max(layers, key=vgg.LAYERS.index)
    path = _weights_path(cfg, "vgg_weights", who,
                         "Convert them: python -m sapnet_jax.convert --download vgg16 "
                         "--out vgg16.npz.", missing_ok)
    trunk_vgg = _trunk(lambda r: vgg.VGG16Features(last=last, dtype=dtype, rngs=r), path, "vgg16")
  if needs["lpips_alex"]:
    path = _weights_path(cfg, "alexnet_weights", "LPIPS-Alex",
                         "Convert them: python -m sapnet_jax.convert --download alexnet "
                         "--out alexnet.npz.", missing_ok)
    trunk_alex = _trunk(lambda r: alexnet.AlexNetFeatures(dtype=dtype, rngs=r), path, "alexnet")
  if needs["lpips_vgg"] or needs["lpips_alex"]:
    net = field(cfg, "lpips_net")
    channels = vgg.WIDTHS if net == "vgg" else alexnet.WIDTHS
    path = _weights_path(cfg, "lpips_weights", f"LPIPS-{net}",
                         f"Use the lpips package's weights/v0.1/{net}.pth or "
                         f"python -m sapnet_jax.convert --download lpips_{net} "
                         f"--out lpips_{net}.npz.", missing_ok)
    if path is None:  # uniform heads: the same work as trained ones
      flat = {f"lin{k}": np.full((c,), 1.0 / c, np.float32) for k, c in enumerate(channels)}
    else:
      flat = backbones.load_backbone(path, f"lpips_{net}")
    for k, c in enumerate(channels):
      if np.shape(flat.get(f"lin{k}")) != (c,):
        raise LossConfigError(f"{path}: lin{k} has shape {np.shape(flat.get(f'lin{k}'))}, "
                              f"LPIPS-{net} needs ({c},); config.loss.lpips_weights does not "
                              f"match config.loss.lpips_net")
    heads = LPIPSHeads(flat)
  if needs["seg"]:
    depth = field(cfg, "seg_resnet_depth")
    if depth not in resnet_fpn.RESNET_DEPTHS:
      raise LossConfigError(f"config.loss.seg_resnet_depth must be one of "
                            f"{sorted(resnet_fpn.RESNET_DEPTHS)}, got {depth}")
    seg_cfg = resnet_fpn.ResNetFPNConfig(
        depths=resnet_fpn.RESNET_DEPTHS[depth], num_classes=field(cfg, "seg_num_classes"),
        decoder_init_std=field(cfg, "seg_decoder_init_std"), dtype=dtype)
    encoder = field(cfg, "seg_encoder_weights")
    seg = build_seg_net(seg_cfg, encoder, field(cfg, "seg_seed"))
    if not encoder:
      notes.append(f"seg: config.loss.seg_encoder_weights is None, so the ResNet-{depth} "
                   f"encoder is random (seed {field(cfg, 'seg_seed')}), fixed for the whole run")
  for note in notes:
    log.warning(note)
  return FrozenNets(trunk_vgg, trunk_alex, heads, seg, tuple(notes))
