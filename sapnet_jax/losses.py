"""SAPNet's training losses (paper §3.5; the official code's differences: docs/fidelity.md):
negative SSIM, perceptual contrastive loss (PCL) or its L1 ablation, differentiable LPIPS, and
the segmentation-aware focal loss.

Interface for the trainer (all images NHWC float32, nominally in [0, 1]):

    frozen = losses.build_frozen_nets(config.loss)      # once, outside jit; logs what is random
    def loss_fn(model):                                  # differentiated w.r.t. `model` only
      derained = model(rainy)
      return losses.total_loss(config.loss, frozen, derained, clean, rainy, epoch=epoch)
    (total, terms), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    losses.check_finite(terms)                           # on the host, e.g. at each log step

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
config.loss.contrast), `lpips`, `seg`, and `total` = sum of weight x term (= the first
element, so that `jax.value_and_grad(..., has_aux=True)` works directly). Terms whose weight is 0 are neither computed nor reported.
Values out of [0, 1]: the de-rained image is used as it is (the network's outputs are not
clamped during training, as in the official code); `clean` and `rainy` are clipped to [0, 1]
under jit, and raise a ValueError naming the argument when called eagerly. Shapes and channel
counts are checked when tracing.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sapnet_jax import checkpoint, convert
from sapnet_jax.models import alexnet, resnet_fpn, vgg

log = logging.getLogger(__name__)

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


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or infinite; the message names the term."""


def _field(cfg: Any, name: str) -> Any:
  try:
    return cfg[name]
  except (KeyError, AttributeError, TypeError):
    raise LossConfigError(f"config.loss.{name} is missing") from None


# --- SSIM -----------------------------------------------------------------------------------

def _gaussian(size: int, sigma: float) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-(x**2) / (2 * sigma**2))
  return g / g.sum()


def _at_least_f32(x: jax.Array) -> jax.DTypeLike:
  # Losses reduce in float32, or in float64 when the images are (numerics checks, x64 mode).
  return jnp.promote_types(x.dtype, jnp.float32)


def _blur_matrix(size: int, taps: np.ndarray) -> np.ndarray:
  """(size, size) B with (v @ B)[j] = sum_k taps[k] v[j + k - len(taps) // 2], zeros outside v:
  PReNet's zero-padded ("same") correlation along one axis as a matrix product."""
  pad = len(taps) // 2
  b = np.zeros((size, size))
  for j in range(size):
    for k, t in enumerate(taps):
      if 0 <= j + k - pad < size:
        b[j + k - pad, j] = t
  return b


def ssim(x: jax.Array, y: jax.Array, window: int = 11, sigma: float = 1.5) -> jax.Array:
  """Mean SSIM as PReNet's SSIM.py: Gaussian window, per channel, zero padding ("same").

  The 2-d window is outer(g, g), so the blur is two matrix products with banded matrices, one
  along each image axis (images as N, C, H, W, then N, C, W, H; the mean ignores the order):
  an order of magnitude quicker on a CPU than shifted-slice sums or XLA:CPU's depthwise
  convolutions, to the same values (docs/benchmarks.md)."""
  dtype = _at_least_f32(x)
  g = _gaussian(window, sigma)
  x, y = (jnp.transpose(a.astype(dtype), (0, 3, 1, 2)) for a in (x, y))
  maps = jnp.concatenate([x, y, x * x, y * y, x * y], axis=1)
  # HIGHEST: float32 products on GPU/TPU too (their default may round operands to TF32/bf16).
  blur = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  maps = blur(maps, jnp.asarray(_blur_matrix(maps.shape[3], g), dtype))
  maps = blur(jnp.swapaxes(maps, 2, 3), jnp.asarray(_blur_matrix(maps.shape[2], g), dtype))
  mu1, mu2, e11, e22, e12 = jnp.split(maps, 5, axis=1)
  s11, s22, s12 = e11 - mu1 * mu1, e22 - mu2 * mu2, e12 - mu1 * mu2
  c1, c2 = 0.01**2, 0.03**2
  num = (2 * mu1 * mu2 + c1) * (2 * s12 + c2)
  den = (mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2)
  return jnp.mean(num / den)


def ssim_loss(derained: jax.Array, clean: jax.Array) -> jax.Array:
  """−SSIM(derained, clean): the paper's negative SSIM loss."""
  return -ssim(derained, clean)


# --- running a frozen net -------------------------------------------------------------------

def _run(module: nnx.Module, x: jax.Array, *, remat: bool = False, **kwargs):
  """Calls a frozen `module` with its weights behind stop_gradient (optionally rematerialised)."""
  graphdef, state = nnx.split(module)
  state = jax.lax.stop_gradient(state)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, **kwargs)

  return (jax.checkpoint(forward) if remat else forward)(state, x)


def _l1(a: jax.Array, b: jax.Array) -> jax.Array:
  dtype = _at_least_f32(a)
  return jnp.mean(jnp.abs(a.astype(dtype) - b.astype(dtype)))


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
    total = total + w * _l1(fd[name], pos) / (_l1(fd[name], neg) + eps)
  return total


def l1_contrastive(derained: jax.Array, clean: jax.Array, rainy: jax.Array,
                   eps: float = 1e-7) -> jax.Array:
  """The paper's L1-CL ablation (official ContrastLoss on pixels): L1(D,G) / (L1(D,R) + eps)."""
  return _l1(derained, clean) / (_l1(derained, rainy) + eps)


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


# --- the frozen networks --------------------------------------------------------------------

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


def _needs(cfg) -> dict[str, bool]:
  contrast = _field(cfg, "contrast")
  if contrast not in CONTRASTS:
    raise LossConfigError(f"config.loss.contrast must be one of {CONTRASTS}, got {contrast!r}")
  lpips_on = _field(cfg, "lpips_weight") != 0
  net = _field(cfg, "lpips_net")
  if lpips_on and net not in LPIPS_TAPS:
    raise LossConfigError(f"config.loss.lpips_net must be 'vgg' or 'alex', got {net!r}")
  return {"pcl": contrast == "pcl" and _field(cfg, "contrast_weight") != 0,
          "lpips_vgg": lpips_on and net == "vgg", "lpips_alex": lpips_on and net == "alex",
          "seg": _field(cfg, "seg_weight") != 0}


def _weights_path(cfg, field: str, needed_by: str, hint: str) -> str:
  path = _field(cfg, field)
  if not path:
    raise LossConfigError(
        f"config.loss.{field} is None, but {needed_by} needs these weights. {hint} "
        f"Or set its weight to 0 to train without the term.")
  return str(path)


def _load_trunk(module_fn, path: str, kind: str) -> nnx.Module:
  module = nnx.eval_shape(lambda: module_fn(nnx.Rngs(0)))
  flat = convert.load_backbone(path, kind)
  present = set(checkpoint.flatten(nnx.to_pure_dict(nnx.state(module))))
  flat = {k: v for k, v in flat.items() if k in present}  # deeper layers than needed: unused
  return convert.fill_module(module, flat, path)


def build_seg_net(cfg: resnet_fpn.ResNetFPNConfig, encoder_weights: str | None = None,
                  seed: int = 0) -> nnx.Module:
  """The frozen UBS network: decoder N(0, std) from `seed`; encoder converted or random."""
  flat = resnet_fpn.random_weights(cfg, seed)
  source = f"random ResNetFPN weights (seed {seed})"
  if encoder_weights:
    encoder = convert.load_backbone(encoder_weights, "resnet101")
    if not any(k.startswith("resnet/") for k in encoder):  # an encoder alone
      encoder = {f"resnet/{k}": v for k, v in encoder.items()}
    unknown = sorted(k for k in encoder if k not in flat)
    missing = sorted(k for k in flat if k.startswith("resnet/") and k not in encoder)
    if unknown or missing:
      raise convert.ConversionError(
          f"{encoder_weights}: encoder does not fit ResNet depths {cfg.depths} "
          f"(missing: {missing[:6]}, unexpected: {unknown[:6]})")
    flat.update(encoder)
    source = encoder_weights
  net = nnx.eval_shape(lambda: resnet_fpn.ResNetFPN(cfg, rngs=nnx.Rngs(0)))
  return convert.fill_module(net, flat, source)


def build_frozen_nets(cfg: Any) -> FrozenNets:
  """Builds and loads the networks that the enabled terms of `cfg` (config.loss) need.

  Missing VGG/AlexNet/LPIPS weights raise LossConfigError naming the config field; a missing
  ResNet encoder leaves the segmentation net random but fixed (seeded), logged as a warning.
  """
  needs = _needs(cfg)
  dtype = _field(cfg, "perceptual_dtype")
  notes = []
  trunk_vgg = trunk_alex = heads = seg = None
  if needs["pcl"] or needs["lpips_vgg"]:
    who = " and ".join(n for n, on in (("the perceptual contrastive loss", needs["pcl"]),
                                       ("LPIPS-VGG", needs["lpips_vgg"])) if on)
    path = _weights_path(cfg, "vgg_weights", who,
                         "Convert them: python -m sapnet_jax.convert --download vgg16 --out vgg16.npz.")
    layers = (vgg.LPIPS_LAYERS if needs["lpips_vgg"] else ()) + (
        tuple(_field(cfg, "pcl_layers")) if needs["pcl"] else ())
    last = max(layers, key=vgg.LAYERS.index)
    trunk_vgg = _load_trunk(lambda r: vgg.VGG16Features(last=last, dtype=dtype, rngs=r),
                            path, "vgg16")
  if needs["lpips_alex"]:
    path = _weights_path(cfg, "alexnet_weights", "LPIPS-Alex",
                         "Convert them: python -m sapnet_jax.convert --download alexnet --out alexnet.npz.")
    trunk_alex = _load_trunk(lambda r: alexnet.AlexNetFeatures(dtype=dtype, rngs=r),
                             path, "alexnet")
  if needs["lpips_vgg"] or needs["lpips_alex"]:
    net = _field(cfg, "lpips_net")
    path = _weights_path(cfg, "lpips_weights", f"LPIPS-{net}",
                         f"Use the lpips package's weights/v0.1/{net}.pth or "
                         f"python -m sapnet_jax.convert --download lpips_{net} --out lpips_{net}.npz.")
    flat = convert.load_backbone(path, f"lpips_{net}")
    channels = vgg.WIDTHS if net == "vgg" else alexnet.WIDTHS
    for k, c in enumerate(channels):
      if np.shape(flat.get(f"lin{k}")) != (c,):
        raise LossConfigError(f"{path}: lin{k} has shape {np.shape(flat.get(f'lin{k}'))}, "
                              f"LPIPS-{net} needs ({c},); config.loss.lpips_weights does not "
                              f"match config.loss.lpips_net")
    heads = LPIPSHeads(flat)
  if needs["seg"]:
    depth = _field(cfg, "seg_resnet_depth")
    if depth not in resnet_fpn.RESNET_DEPTHS:
      raise LossConfigError(f"config.loss.seg_resnet_depth must be one of "
                            f"{sorted(resnet_fpn.RESNET_DEPTHS)}, got {depth}")
    seg_cfg = resnet_fpn.ResNetFPNConfig(
        depths=resnet_fpn.RESNET_DEPTHS[depth], num_classes=_field(cfg, "seg_num_classes"),
        decoder_init_std=_field(cfg, "seg_decoder_init_std"), dtype=dtype)
    encoder = _field(cfg, "seg_encoder_weights")
    seg = build_seg_net(seg_cfg, encoder, _field(cfg, "seg_seed"))
    if not encoder:
      notes.append(f"seg: config.loss.seg_encoder_weights is None, so the ResNet-{depth} "
                   f"encoder is random (seed {_field(cfg, 'seg_seed')}), fixed for the whole run")
  for note in notes:
    log.warning(note)
  return FrozenNets(trunk_vgg, trunk_alex, heads, seg, tuple(notes))


# --- the total ------------------------------------------------------------------------------

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


def total_loss(cfg: Any, frozen: FrozenNets, derained: jax.Array, clean: jax.Array,
               rainy: jax.Array, *, epoch: int | jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the enabled terms and a dict of every term (see the module docstring)."""
  _check_images(derained, clean, rainy)
  clean, rainy = jnp.clip(clean, 0, 1), jnp.clip(rainy, 0, 1)
  needs = _needs(cfg)
  remat = bool(_field(cfg, "remat"))
  terms, weights = {}, {}
  if _field(cfg, "ssim_weight") != 0:
    terms["ssim"], weights["ssim"] = ssim_loss(derained, clean), _field(cfg, "ssim_weight")
  if _field(cfg, "l1_weight") != 0:  # not in SAPNet; SSIM alone leaves brightness loose
    terms["l1"], weights["l1"] = _l1(derained, clean), _field(cfg, "l1_weight")
  contrast = _field(cfg, "contrast")
  if contrast != "none" and _field(cfg, "contrast_weight") != 0:
    eps = _field(cfg, "contrast_eps")
    if contrast == "pcl":
      _require(frozen.vgg, "vgg", "config.loss.contrast='pcl'")
      terms["pcl"] = pcl(frozen.vgg, derained, clean, rainy, layers=tuple(_field(cfg, "pcl_layers")),
                              weights=tuple(_field(cfg, "pcl_layer_weights")), eps=eps,
                              imagenet_norm=_field(cfg, "pcl_imagenet_norm"), remat=remat)
    else:
      terms["l1_cl"] = l1_contrastive(derained, clean, rainy, eps)
    weights["pcl" if contrast == "pcl" else "l1_cl"] = _field(cfg, "contrast_weight")
  if needs["lpips_vgg"] or needs["lpips_alex"]:
    net = _field(cfg, "lpips_net")
    trunk = frozen.vgg if net == "vgg" else frozen.alexnet
    _require(trunk, "vgg" if net == "vgg" else "alexnet", f"config.loss.lpips_net={net!r}")
    _require(frozen.lpips_heads, "lpips_heads", "config.loss.lpips_weight != 0")
    per_image = lpips(trunk, frozen.lpips_heads.as_dict(), derained, clean, net=net,
                      size=_field(cfg, "lpips_size"), preprocess=_field(cfg, "lpips_preprocess"),
                      remat=remat)
    reduction = _field(cfg, "lpips_reduction")
    if reduction not in LPIPS_REDUCTIONS:
      raise LossConfigError(f"config.loss.lpips_reduction must be one of {LPIPS_REDUCTIONS}, "
                            f"got {reduction!r}")
    terms["lpips"] = {"mean": jnp.mean, "sum": jnp.sum, "first": lambda v: v[0]}[reduction](per_image)
    weights["lpips"] = _field(cfg, "lpips_weight")
  if needs["seg"]:
    _require(frozen.seg, "seg", "config.loss.seg_weight != 0")
    terms["seg"] = _seg_term(cfg, frozen.seg, derained, epoch, remat)
    weights["seg"] = _field(cfg, "seg_weight")
  total = sum(weights[k] * terms[k] for k in terms) if terms else jnp.float32(0)
  terms["total"] = total
  return total, terms


def _require(net, name: str, why: str) -> None:
  if net is None:
    raise LossConfigError(f"{why} needs frozen.{name}, but build_frozen_nets was given a config "
                          "without it; build the frozen nets from the same config.loss")


def _seg_term(cfg, seg_net, derained, epoch, remat) -> jax.Array:
  start = _field(cfg, "seg_start_epoch")

  def term(x):
    return seg_focal(seg_net, x, alpha=_field(cfg, "seg_alpha"), gamma=_field(cfg, "seg_gamma"),
                     eps=_field(cfg, "seg_eps"), imagenet_norm=_field(cfg, "seg_imagenet_norm"),
                     remat=remat)

  if start <= 0:
    return term(derained)
  if epoch is None:
    raise LossConfigError(f"config.loss.seg_start_epoch={start}: total_loss needs epoch=")
  if isinstance(epoch, (int, np.integer)):
    return term(derained) if epoch >= start else jnp.float32(0)
  return jax.lax.cond(epoch >= start, term, lambda x: jnp.float32(0), derained)


def check_finite(terms: Mapping[str, Any]) -> None:
  """Raises NonFiniteLossError naming every term that is NaN or infinite (call on the host)."""
  bad = {k: float(v) for k, v in terms.items() if not np.isfinite(float(v))}
  if bad:
    raise NonFiniteLossError("non-finite loss terms: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
