"""SAPNet's training losses (paper §3.5; the official code's differences: docs/fidelity.md):
negative SSIM, perceptual contrastive loss (PCL) or its L1 ablation, differentiable LPIPS, and
the segmentation-aware focal loss.

Pure functions of arrays and modules: the frozen networks are built and loaded by
sapnet_jax.losses.frozen_nets. Interface for the trainer (all images NHWC float32, nominally in
[0, 1]):

    frozen = frozen_nets.build_frozen_nets(config.loss)  # once, outside jit
    def loss_fn(model):                                  # differentiated w.r.t. `model` only
      derained = model(rainy)
      return losses.total_loss(config.loss, frozen, derained, clean, rainy, epoch=epoch)
    (total, terms), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)

`total_loss` is pure and jit-able: close over `config.loss` (a ConfigDict is not hashable);
`epoch` may be a Python int (the seg term is then skipped, not computed, before its start
epoch) or a traced scalar (the term sits behind `lax.cond`). `frozen` is an nnx.Module holding
VGG-16 / AlexNet / the LPIPS heads / the ResNet-FPN. NNX modules are JAX pytrees, so `frozen`
goes through `jax.jit` (and `jax.tree.map` for shardings) as an ordinary argument, as
train.py passes it; `nnx.jit` works too. Its weights go through `stop_gradient` inside every
term, so no gradient reaches them even if they are differentiated, and they are never part of
the optimizer: build `nnx.Optimizer(model, tx, wrt=nnx.Param)` over the de-raining model only.

`total_loss` returns `(total, terms)`: `terms` holds every computed term unweighted, by name:
`ssim` (the loss −SSIM, so it is negative), `pcl` or `l1_cl` (the contrastive term chosen by
config.loss.contrast), `lpips`, `seg`; `total` is the sum of weight x term (the trainer logs
it as "total"). Terms whose weight is 0 are neither computed nor reported.
Values out of [0, 1]: the de-rained image is used as it is (the network's outputs are not
clamped during training, as in the official code); `clean` and `rainy` are clipped to [0, 1]
under jit, and raise a ValueError naming the argument when called eagerly. Shapes and channel
counts are checked when tracing.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sapnet_jax.metrics import full_reference
from sapnet_jax.models import alexnet, vgg
from sapnet_jax.utils import config_field

# LPIPS v0.1 input scaling (lpips.ScalingLayer), applied to images in [-1, 1].
LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
LPIPS_TAPS = {"vgg": vgg.LPIPS_LAYERS, "alex": alexnet.LAYERS}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CONTRASTS = ("pcl", "l1", "none")
# "first": the official LpisLoss returns inside its loop over the batch, after image 0.
LPIPS_REDUCTIONS = ("mean", "sum", "first")


class LossConfigError(ValueError):
  """A `config.loss` field that is missing, invalid, or names weights that cannot be used."""


# A config.loss field; a missing one raises LossConfigError naming it.
field = functools.partial(config_field.field, where="config.loss", error=LossConfigError)


# --- SSIM, L1 -------------------------------------------------------------------------------

def _at_least_f32(x: jax.Array) -> jax.DTypeLike:
  # Losses reduce in float32, or in float64 when the images are (numerics checks, x64 mode).
  return jnp.promote_types(x.dtype, jnp.float32)


def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean SSIM as PReNet's SSIM.py: 11x11 Gaussian window (sigma 1.5), per channel, zero
  padding ("same"); full_reference.ssim with padding="same", in float32 at least."""
  dtype = _at_least_f32(x)
  return jnp.mean(full_reference.ssim(x.astype(dtype), y.astype(dtype), padding="same"))


def ssim_loss(derained: jax.Array, clean: jax.Array) -> jax.Array:
  """−SSIM(derained, clean): the paper's negative SSIM loss."""
  return -ssim(derained, clean)


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute difference, in float32 at least: the pixel term of both families' losses
  and the distance inside the contrastive losses."""
  dtype = _at_least_f32(a)
  return jnp.mean(jnp.abs(a.astype(dtype) - b.astype(dtype)))


# --- running a frozen net -------------------------------------------------------------------

def _run(module: nnx.Module, x: jax.Array, *, remat: bool = False, **kwargs):
  """Calls a frozen `module` with its weights behind stop_gradient (optionally rematerialised)."""
  graphdef, state = nnx.split(module)
  state = jax.lax.stop_gradient(state)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, **kwargs)

  return (jax.checkpoint(forward) if remat else forward)(state, x)


# --- contrastive losses ---------------------------------------------------------------------

def pcl(vgg_net: nnx.Module, derained: jax.Array, clean: jax.Array, rainy: jax.Array, *,
        layers=vgg.PCL_LAYERS, weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4), eps: float = 1e-7,
        imagenet_norm: bool = False, remat: bool = False) -> jax.Array:
  """Perceptual contrastive loss: sum_i w_i L1(V_i(D), V_i(G)) / (L1(V_i(D), V_i(R)) + eps).

  V = VGG-16 activations; the official code feeds [0, 1] images without ImageNet normalisation.
  G and R pass the network once together and carry no gradient.
  """
  if len(layers) != len(weights):
    raise LossConfigError(f"config.loss.pcl_layers ({len(layers)}) and "
                          f"config.loss.pcl_layer_weights ({len(weights)}) differ in length")

  def prep(x):
    return (x - IMAGENET_MEAN) / IMAGENET_STD if imagenet_norm else x

  fd = _run(vgg_net, prep(derained), remat=remat, outputs=tuple(layers))
  fgr = _run(vgg_net, jax.lax.stop_gradient(prep(jnp.concatenate([clean, rainy]))),
             outputs=tuple(layers))
  n = derained.shape[0]
  total = 0.0
  for name, w in zip(layers, weights):
    pos, neg = fgr[name][:n], fgr[name][n:]
    total = total + w * l1(fd[name], pos) / (l1(fd[name], neg) + eps)
  return total


def l1_contrastive(derained: jax.Array, clean: jax.Array, rainy: jax.Array,
                   eps: float = 1e-7) -> jax.Array:
  """The paper's L1-CL ablation (official ContrastLoss on pixels): L1(D,G) / (L1(D,R) + eps)."""
  return l1(derained, clean) / (l1(derained, rainy) + eps)


# --- LPIPS ----------------------------------------------------------------------------------

def _unit_normalize(f: jax.Array) -> jax.Array:
  # lpips.normalize_tensor is f / (||f|| + 1e-10). The 1e-20 under the root keeps the gradient
  # finite where a feature vector is exactly zero (sqrt'(0) = inf); values move by < 1e-10.
  f = f.astype(jnp.float32)
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True) + 1e-20) + 1e-10)


def lpips(trunk: nnx.Module, heads: Mapping[str, jax.Array], x: jax.Array, y: jax.Array, *,
          net: str, size: int | None = 256, preprocess: str = "standard",
          remat: bool = False) -> jax.Array:
  """LPIPS v0.1 distance per image, shape (N,), between images x and y in [0, 1].

  `size`: both images are resized (bilinear, half-pixel, antialiased when shrinking) to
  size x size first, the paper's whole-image LPISL; None keeps them as they are.
  `preprocess`: "standard" maps [0, 1] to [-1, 1] as the lpips package expects;
  "official" is the official train.py: each batch min-max inverted, (max - x) / (max - min),
  and fed in [0, 1]. y carries no gradient.
  """
  if net not in LPIPS_TAPS:
    raise LossConfigError(f"config.loss.lpips_net must be 'vgg' or 'alex', got {net!r}")

  def prep(z):
    if preprocess == "official":
      lo, hi = jnp.min(z), jnp.max(z)
      z = (hi - z) / jnp.maximum(hi - lo, 1e-12)
    elif preprocess == "standard":
      z = 2 * z - 1
    else:
      raise LossConfigError(
          f"config.loss.lpips_preprocess must be 'standard' or 'official', got {preprocess!r}")
    if size is not None and z.shape[1:3] != (size, size):
      z = jax.image.resize(z, (z.shape[0], size, size, z.shape[3]), "bilinear")
    return (z - LPIPS_SHIFT) / LPIPS_SCALE

  taps = LPIPS_TAPS[net]
  fx = _run(trunk, prep(x), remat=remat, outputs=taps)
  fy = _run(trunk, jax.lax.stop_gradient(prep(y)), outputs=taps)
  heads = jax.lax.stop_gradient(heads)
  dist = jnp.zeros((x.shape[0],), jnp.float32)
  for k, name in enumerate(taps):
    d2 = (_unit_normalize(fx[name]) - _unit_normalize(fy[name])) ** 2
    dist = dist + jnp.mean(jnp.einsum("nhwc,c->nhw", d2, heads[f"lin{k}"]), axis=(1, 2))
  return dist


# --- segmentation-aware loss ----------------------------------------------------------------

def seg_focal(seg_net: nnx.Module, derained: jax.Array, *, alpha: float = 1.0,
              gamma: float = 2.0, eps: float = 1e-7, imagenet_norm: bool = False,
              remat: bool = False) -> jax.Array:
  """UBS loss: mean over pixels of −α (1−p)^γ log p, p = max softmax probability of the frozen
  FPN (the official FocalLoss against its own argmax, p clamped to [eps, 1−eps])."""
  x = (derained - IMAGENET_MEAN) / IMAGENET_STD if imagenet_norm else derained
  logits = _run(seg_net, x, remat=remat)
  logp = jnp.max(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
  logp = jnp.clip(logp, math.log(eps), math.log1p(-eps))
  return jnp.mean(-alpha * (1 - jnp.exp(logp)) ** gamma * logp)


# --- the total ------------------------------------------------------------------------------

def needed_nets(cfg: Any) -> dict[str, bool]:
  """Which frozen networks the enabled terms of `cfg` (config.loss) run, by role."""
  contrast = field(cfg, "contrast")
  if contrast not in CONTRASTS:
    raise LossConfigError(f"config.loss.contrast must be one of {CONTRASTS}, got {contrast!r}")
  lpips_on = field(cfg, "lpips_weight") != 0
  net = field(cfg, "lpips_net")
  if lpips_on and net not in LPIPS_TAPS:
    raise LossConfigError(f"config.loss.lpips_net must be 'vgg' or 'alex', got {net!r}")
  return {"pcl": contrast == "pcl" and field(cfg, "contrast_weight") != 0,
          "lpips_vgg": lpips_on and net == "vgg", "lpips_alex": lpips_on and net == "alex",
          "seg": field(cfg, "seg_weight") != 0}


def _check_images(derained, clean, rainy) -> None:
  for name, x in (("derained", derained), ("clean", clean), ("rainy", rainy)):
    if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
      raise ValueError(f"total_loss: {name} must have shape (N, H, W, 3), got "
                       f"{getattr(x, 'shape', type(x).__name__)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"total_loss: {name} must be a float array in [0, 1], got {x.dtype}")
    if x.shape != derained.shape:
      raise ValueError(f"total_loss: {name} has shape {x.shape}, derained has {derained.shape}")
  for name, x in (("clean", clean), ("rainy", rainy)):
    if not isinstance(x, jax.core.Tracer):
      lo, hi = float(np.min(np.asarray(x))), float(np.max(np.asarray(x)))
      if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise ValueError(f"total_loss: {name} has values in [{lo}, {hi}], expected [0, 1] "
                         "(images scaled by 1/255?)")
  if not isinstance(derained, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(derained))):
    raise ValueError("total_loss: derained contains NaN or infinite values")


def total_loss(cfg: Any, frozen: Any, derained: jax.Array, clean: jax.Array,
               rainy: jax.Array, *, epoch: int | jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the enabled terms and a dict of every term (see the module docstring);
  `frozen` is a frozen_nets.FrozenNets built from the same `cfg`."""
  _check_images(derained, clean, rainy)
  clean, rainy = jnp.clip(clean, 0, 1), jnp.clip(rainy, 0, 1)
  needs = needed_nets(cfg)
  remat = bool(field(cfg, "remat"))
  terms, weights = {}, {}
  if field(cfg, "ssim_weight") != 0:
    terms["ssim"], weights["ssim"] = ssim_loss(derained, clean), field(cfg, "ssim_weight")
  if field(cfg, "l1_weight") != 0:  # not in SAPNet; SSIM alone leaves brightness loose
    terms["l1"], weights["l1"] = l1(derained, clean), field(cfg, "l1_weight")
  contrast = field(cfg, "contrast")
  if contrast != "none" and field(cfg, "contrast_weight") != 0:
    eps = field(cfg, "contrast_eps")
    if contrast == "pcl":
      _require(frozen.vgg, "vgg", "config.loss.contrast='pcl'")
      terms["pcl"] = pcl(frozen.vgg, derained, clean, rainy, layers=tuple(field(cfg, "pcl_layers")),
                              weights=tuple(field(cfg, "pcl_layer_weights")), eps=eps,
                              imagenet_norm=field(cfg, "pcl_imagenet_norm"), remat=remat)
    else:
      terms["l1_cl"] = l1_contrastive(derained, clean, rainy, eps)
    weights["pcl" if contrast == "pcl" else "l1_cl"] = field(cfg, "contrast_weight")
  if needs["lpips_vgg"] or needs["lpips_alex"]:
    net = field(cfg, "lpips_net")
    trunk = frozen.vgg if net == "vgg" else frozen.alexnet
    _require(trunk, "vgg" if net == "vgg" else "alexnet", f"config.loss.lpips_net={net!r}")
    _require(frozen.lpips_heads, "lpips_heads", "config.loss.lpips_weight != 0")
    per_image = lpips(trunk, frozen.lpips_heads.as_dict(), derained, clean, net=net,
                      size=field(cfg, "lpips_size"), preprocess=field(cfg, "lpips_preprocess"),
                      remat=remat)
    reduction = field(cfg, "lpips_reduction")
    if reduction not in LPIPS_REDUCTIONS:
      raise LossConfigError(f"config.loss.lpips_reduction must be one of {LPIPS_REDUCTIONS}, "
                            f"got {reduction!r}")
    terms["lpips"] = {"mean": jnp.mean, "sum": jnp.sum, "first": lambda v: v[0]}[reduction](per_image)
    weights["lpips"] = field(cfg, "lpips_weight")
  if needs["seg"]:
    _require(frozen.seg, "seg", "config.loss.seg_weight != 0")
    terms["seg"] = _seg_term(cfg, frozen.seg, derained, epoch, remat)
    weights["seg"] = field(cfg, "seg_weight")
  total = sum(weights[k] * terms[k] for k in terms) if terms else jnp.float32(0)
  return total, terms


def _require(net, name: str, why: str) -> None:
  if net is None:
    raise LossConfigError(f"{why} needs frozen.{name}, but frozen_nets.build_frozen_nets was "
                          "given a config without it; build the frozen nets from the same "
                          "config.loss")


def _seg_term(cfg, seg_net, derained, epoch, remat) -> jax.Array:
  start = field(cfg, "seg_start_epoch")

  def term(x):
    return seg_focal(seg_net, x, alpha=field(cfg, "seg_alpha"), gamma=field(cfg, "seg_gamma"),
                     eps=field(cfg, "seg_eps"), imagenet_norm=field(cfg, "seg_imagenet_norm"),
                     remat=remat)

  if start <= 0:
    return term(derained)
  if epoch is None:
    raise LossConfigError(f"config.loss.seg_start_epoch={start}: total_loss needs epoch=")
  if isinstance(epoch, (int, np.integer)):
    return term(derained) if epoch >= start else jnp.float32(0)
  return jax.lax.cond(epoch >= start, term, lambda x: jnp.float32(0), derained)

