"""MSNet: the semi-supervised multi-scale de-raining network of Qiu et al. (2022).

    f_0 = matching(image)                        # feature_layers x (3x3 conv + ReLU), 3 -> C
    u_1 = f_0;  u_k = fuse_k(concat[f_0, o_1, ..., o_{k-1}])       # dense 1x1, k >= 2
    o_k = u_k + sum_i up_i(CCLB_ki(maxpool_i(u_k)))  for i = 1..scales  # paper §3.2
    out = image + conv3x3(fuse_out(concat[f_0, o_1, ..., o_units]))     # C -> 3

The matching network's output f_0 is what the paper's matching loss compares between
synthetic and real inputs (`sapnet_jax.losses.msnet`); it is shared by both, so the caller
runs the same model on each and asks for `return_features=True`.

maxpool_i has kernel and stride 2^(i-1) (i = 1 is the identity). Sizes not divisible by
2^(i-1) pool in "ceil mode": the bottom/right windows that run past the border take the
maximum over the pixels they do cover (padding is -inf). up_i is bilinear (half-pixel
centres, PyTorch's align_corners=False) by exactly 2^(i-1), then cropped to the unit's
input size, so the grid of every scale stays aligned with the top-left corner and any H x W
comes back at H x W.

A CCLB (Cascade Convolution Learning Block) is `cclb_depth` 3x3 conv + ReLU layers whose
first and last outputs are summed (the local residual). The paper's figure of it is not
available; the depth and the placement of the skip are our choice (docs/fidelity.md, MSNet).
Layout is NHWC; outputs are not clamped.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sapnet_jax.models import ops
from sapnet_jax.models.conv import Conv3x3


@dataclasses.dataclass(frozen=True)
class MSNetConfig:
  """Architecture of MSNet (paper §4.1: 3 scales, 32 channels; the rest is our choice)."""

  # Multi-scale de-raining units, densely connected (paper: "multiple"; not given).
  units: int = 4
  # Scales per unit; scale i max-pools by 2^(i-1) (paper: n = 3).
  scales: int = 3
  # 3x3 conv + ReLU layers per CCLB (paper: not given).
  cclb_depth: int = 3
  # Feature channels everywhere (paper: 32).
  channels: int = 32
  # 3x3 conv + ReLU layers of the matching network, whose output the matching loss compares.
  feature_layers: int = 2
  # Computation dtype; parameters stay float32 (float64 needs jax_enable_x64).
  dtype: str = "float32"
  # Recompute each unit's activations in the backward pass instead of storing them.
  remat: bool = False
  # Kernel set computing the network (models/ops.py), as PDUConfig.impl.
  impl: str = "reference"
  # Start the output conv at zero, so the untrained network returns its input. With random
  # output weights the features summed through the dense units make the initial residual
  # ~1 (std over pixels, seeds 0 and 2): the net starts at ~7 dB and spends its first
  # hundreds of steps undoing that (docs/fidelity.md, MSNet). Initialisation only.
  zero_init_output: bool = True

  def __post_init__(self):
    for name in ("units", "scales", "cclb_depth", "channels", "feature_layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
    if self.impl not in ops.CHOICES:
      raise ValueError(f"model.impl must be one of {ops.CHOICES}, got {self.impl!r}")
    if self.dtype not in ("float32", "bfloat16", "float64"):
      raise ValueError(
          f"model.dtype must be 'float32', 'bfloat16' or 'float64', got {self.dtype!r}")

  @property
  def pool_sizes(self) -> tuple[int, ...]:
    return tuple(2**i for i in range(self.scales))


MSNET = MSNetConfig()


def _conv(cfg: MSNetConfig, cin: int, cout: int, rngs: nnx.Rngs) -> Conv3x3:
  return Conv3x3(cin, cout, 1, dtype=jnp.dtype(cfg.dtype), ops=ops.kernels(cfg.impl), rngs=rngs)


def _conv1x1(cfg: MSNetConfig, cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
  # A 1x1 convolution is a Linear over the channel axis of an NHWC array.
  return nnx.Linear(cin, cout, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32, rngs=rngs)


def max_pool_ceil(x: jax.Array, k: int) -> jax.Array:
  """k x k max-pool with stride k; partial windows at the bottom/right are kept (ceil mode)."""
  if k == 1:
    return x
  _, h, w, _ = x.shape
  pad_h, pad_w = -h % k, -w % k
  # reduce_window pads with its init value, -inf, so padding never wins the max.
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1),
                               (1, k, k, 1), ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def upsample_crop(x: jax.Array, k: int, h: int, w: int) -> jax.Array:
  """Bilinear upsampling by exactly k, cropped to h x w (inverse grid of `max_pool_ceil`)."""
  if k == 1:
    return x
  n, _, _, c = x.shape
  # Equal to resizing to (hp * k, wp * k) and cropping, but straight to (h, w): with symbolic
  # sizes (jax.export) the crop's result could not be shown to be h x w.
  scale = jnp.full((2,), k, jnp.float32)
  return jax.image.scale_and_translate(x, (n, h, w, c), (1, 2), scale, jnp.zeros((2,), jnp.float32),
                                       method="linear", antialias=False)


class CCLB(nnx.Module):
  """Cascade Convolution Learning Block: depth x (3x3 conv + ReLU), first + last output."""

  def __init__(self, cfg: MSNetConfig, rngs: nnx.Rngs):
    c = cfg.channels
    self.convs = nnx.List([_conv(cfg, c, c, rngs) for _ in range(cfg.cclb_depth)])

  def __call__(self, x: jax.Array) -> jax.Array:
    first = y = jax.nn.relu(self.convs[0](x))
    for conv in self.convs[1:]:
      y = jax.nn.relu(conv(y))
    # The skip starts after the first conv, not at the block input: the unit already adds its
    # own input once (o_k = u_k + ...), and an identity skip in every scale would add n more
    # copies of it per unit, growing the features n+1-fold per unit at initialisation.
    return y + first if len(self.convs) > 1 else y


class MultiScaleUnit(nnx.Module):
  """o = u + sum_i up_i(CCLB_i(maxpool_i(u))) (paper §3.2; the unit residual is `u +`)."""

  def __init__(self, cfg: MSNetConfig, rngs: nnx.Rngs):
    self.pool_sizes = cfg.pool_sizes
    self.blocks = nnx.List([CCLB(cfg, rngs) for _ in self.pool_sizes])

  def __call__(self, u: jax.Array) -> jax.Array:
    _, h, w, _ = u.shape
    out = u
    for k, block in zip(self.pool_sizes, self.blocks):
      out = out + upsample_crop(block(max_pool_ceil(u, k)), k, h, w)
    return out


class MSNet(nnx.Module):
  """Matching network + densely connected multi-scale units; maps rainy NHWC images to clean."""

  def __init__(self, cfg: MSNetConfig = MSNET, *, rngs: nnx.Rngs):
    self.cfg = cfg
    c = cfg.channels
    self.matching = nnx.List([_conv(cfg, 3 if i == 0 else c, c, rngs)
                              for i in range(cfg.feature_layers)])
    self.units = nnx.List([MultiScaleUnit(cfg, rngs) for _ in range(cfg.units)])
    # fuses[k - 1] feeds unit k + 1 from f_0, o_1..o_k; the first unit takes f_0 as it is.
    self.fuses = nnx.List([_conv1x1(cfg, (k + 1) * c, c, rngs) for k in range(1, cfg.units)])
    self.fuse_out = _conv1x1(cfg, (cfg.units + 1) * c, c, rngs)
    self.out = _conv(cfg, c, 3, rngs)
    if cfg.zero_init_output:
      self.out.kernel[...] = jnp.zeros_like(self.out.kernel[...])

  def features(self, image: jax.Array) -> jax.Array:
    """The matching network's features (N, H, W, C) in the computation dtype."""
    x = image.astype(jnp.dtype(self.cfg.dtype))
    for conv in self.matching:
      x = jax.nn.relu(conv(x))
    return x

  def __call__(self, image: jax.Array, return_features: bool = False):
    """De-rains `image` (N, H, W, 3), values in [0, 1], any H, W >= 1.

    Returns the de-rained image (N, H, W, 3), or (image, features) with the matching
    network's features (N, H, W, channels) when `return_features` is true.
    """
    if image.ndim != 4 or image.shape[-1] != 3:
      raise ValueError(f"expected images of shape (N, H, W, 3), got {image.shape}")
    dtype = jnp.dtype(self.cfg.dtype)
    image = image.astype(dtype)
    feats = self.features(image)
    outputs = [feats]
    for k, unit in enumerate(self.units):
      u = feats if k == 0 else self.fuses[k - 1](jnp.concatenate(outputs, axis=-1))
      outputs.append(jax.checkpoint(unit)(u) if self.cfg.remat else unit(u))
    residual = self.out(self.fuse_out(jnp.concatenate(outputs, axis=-1)))
    out_dtype = jnp.promote_types(dtype, jnp.float32)  # float32, or float64 when computing in it
    derained = (image + residual).astype(out_dtype)
    if return_features:
      return derained, feats.astype(out_dtype)
    return derained

