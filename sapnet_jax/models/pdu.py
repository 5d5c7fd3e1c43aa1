"""PDU networks: SAPNet, PReNet and PRN as one module family, named for the SAPNet paper's
"progressive dilated unit" (PDU, §3.2), the stage that all three repeat (PReNet's and PRN's
without dilation).

One stage (paper §3.1, Fig. 2), weights shared by all stages:

    x = relu(conv0(concat[input, x]))                 # 6 -> C
    i, f, g, o = gates(concat[x, h])                  # ConvLSTM, if recurrent
    c = f * c + i * g;  h = o * tanh(c);  x = h
    x = relu(block_d(x) + x)  for d in dilations      # 5 residual blocks
    x = out(x) + input                                # C -> 3

SAPNet is attention "cra" with dilations 1,2,4,8,16; PReNet is attention "none" without
dilation; PRN is PReNet without the ConvLSTM. Layout is NHWC; outputs are not clamped.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from sapnet_jax.models import ops
from sapnet_jax.models.conv import Conv3x3

Attention = Literal["cra", "ca", "se", "none"]
ATTENTIONS = ("cra", "ca", "se", "none")


@dataclasses.dataclass(frozen=True)
class PDUConfig:
  """Architecture of a PDU (progressive dilated unit) network (defaults: official SAPNet)."""

  attention: Attention = "cra"
  reduction: int = 16
  dilation: bool = True
  recurrent: bool = True
  stages: int = 6
  channels: int = 32
  num_blocks: int = 5
  # Forward form: a Python loop over stages, or one jax.lax.scan step reused `stages` times.
  scan: bool = False
  # Computation dtype; parameters stay float32 (float64 needs jax_enable_x64: for numerics checks).
  dtype: str = "float32"
  # Recompute each stage's activations in the backward pass instead of storing them: less
  # memory in training, about one more forward pass of compute.
  remat: bool = False
  # Kernel set computing the network (models/ops.py): "reference", "cpu", "gpu", or "auto",
  # which the caller resolves for its platform before building (models.resolve_impl).
  impl: str = "reference"

  def __post_init__(self):
    if self.attention not in ATTENTIONS:
      raise ValueError(f"model.attention must be one of {ATTENTIONS}, got {self.attention!r}")
    for name in ("stages", "channels", "num_blocks", "reduction"):
      if getattr(self, name) < 1:
        raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
    if self.attention != "none" and self.channels // self.reduction < 1:
      raise ValueError(
          f"model.channels ({self.channels}) // model.reduction ({self.reduction}) must be >= 1")
    if self.impl not in ops.CHOICES:
      raise ValueError(f"model.impl must be one of {ops.CHOICES}, got {self.impl!r}")
    if self.dtype not in ("float32", "bfloat16", "float64"):
      raise ValueError(f"model.dtype must be 'float32', 'bfloat16' or 'float64', got {self.dtype!r}")

  @property
  def dilations(self) -> tuple[int, ...]:
    return tuple(2**k if self.dilation else 1 for k in range(self.num_blocks))

  @property
  def receptive_radius(self) -> int:
    """Pixels a final output pixel can see on each side (ignoring global attention pooling)."""
    per_stage = 1 + (1 if self.recurrent else 0) + 2 * sum(self.dilations) + 1
    return self.stages * per_stage


SAPNET = PDUConfig()
PRENET = PDUConfig(attention="none", dilation=False)
PRN = PDUConfig(attention="none", dilation=False, recurrent=False)
PRESETS = {"sapnet": SAPNET, "prenet": PRENET, "prn": PRN}


def _conv(cfg: PDUConfig, cin: int, cout: int, dilation: int, rngs: nnx.Rngs) -> Conv3x3:
  return Conv3x3(cin, cout, dilation, dtype=jnp.dtype(cfg.dtype), ops=ops.kernels(cfg.impl),
                 rngs=rngs)


class ChannelAttention(nnx.Module):
  """Channel gating from the global average pool: CRA, CA or SE (paper Fig. 3).

  cra: sigmoid(W2 relu(W1 y) + R y)   (official CRALayer: no biases, 1x1 residual R)
  ca:  sigmoid(W2 relu(W1 y + b1) + b2) (official CALayer, with biases)
  se:  sigmoid(W2 relu(W1 y))          (official SELayer, no biases)
  """

  def __init__(self, kind: Attention, channels: int, reduction: int, dtype, kernels: ops.Kernels,
               rngs: nnx.Rngs):
    self.kind, self.ops = kind, kernels
    hidden = channels // reduction
    bias = kind == "ca"
    self.down = nnx.Linear(channels, hidden, use_bias=bias, dtype=dtype, rngs=rngs)
    self.up = nnx.Linear(hidden, channels, use_bias=bias, dtype=dtype, rngs=rngs)
    self.residual = (nnx.Linear(channels, channels, use_bias=False, dtype=dtype, rngs=rngs)
                     if kind == "cra" else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.ops.channel_mean(x)
    z = self.up(jax.nn.relu(self.down(y)))
    if self.residual is not None:
      z = z + self.residual(y)
    return self.ops.scale_channels(x, jax.nn.sigmoid(z))


class ResidualBlock(nnx.Module):
  """conv -> attention -> relu -> conv -> attention -> relu; the skip is added by the caller."""

  def __init__(self, cfg: PDUConfig, dilation: int, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    c = cfg.channels
    self.conv1 = _conv(cfg, c, c, dilation, rngs)
    self.conv2 = _conv(cfg, c, c, dilation, rngs)
    if cfg.attention == "none":
      self.att1 = self.att2 = None
    else:
      kernels = ops.kernels(cfg.impl)
      self.att1 = ChannelAttention(cfg.attention, c, cfg.reduction, dtype, kernels, rngs)
      self.att2 = ChannelAttention(cfg.attention, c, cfg.reduction, dtype, kernels, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv, att in ((self.conv1, self.att1), (self.conv2, self.att2)):
      x = conv(x)
      x = jax.nn.relu(x if att is None else att(x))
    return x


class PDUNet(nnx.Module):
  """The recurrent de-raining network; `__call__` maps rainy NHWC images to de-rained ones."""

  def __init__(self, cfg: PDUConfig = SAPNET, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.ops = ops.kernels(cfg.impl)
    c = cfg.channels
    self.conv0 = _conv(cfg, 6, c, 1, rngs)
    # The four ConvLSTM gates (i, f, g, o) as one convolution: one 2C -> 4C conv runs faster
    # than four 2C -> C ones and is the same function (the converter concatenates kernels).
    self.gates = _conv(cfg, 2 * c, 4 * c, 1, rngs) if cfg.recurrent else None
    self.blocks = nnx.List([ResidualBlock(cfg, d, rngs) for d in cfg.dilations])
    self.out = _conv(cfg, c, 3, 1, rngs)

  def _gates(self, x, h, first):
    if not first:
      return self.gates(jnp.concatenate([x, h], axis=-1))
    # First stage: h = 0, so only the x half of the gate kernel contributes. Skipping the
    # other half saves 1/12 of all gate FLOPs (the gates are ~45% of the network's).
    return self.gates.leading_inputs(x)

  def _stage(self, image, x, h, c, first=False):
    x = jax.nn.relu(self.conv0(jnp.concatenate([image, x], axis=-1)))
    if self.gates is not None:
      i, f, g, o = jnp.split(self._gates(x, h, first), 4, axis=-1)
      c = jax.nn.sigmoid(i) * jnp.tanh(g) + (0 if first else jax.nn.sigmoid(f) * c)
      c = self.ops.stage_boundary(c)  # the only state carried between stages elementwise
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      x = h
    for block in self.blocks:
      x = jax.nn.relu(block(x) + x)
    return self.out(x) + image, h, c

  def __call__(self, image: jax.Array, return_stages: bool = False):
    """De-rains `image` (N, H, W, 3), values in [0, 1].

    Returns the last stage's output, or (output, stages) with stages of shape
    (num_stages, N, H, W, 3) when `return_stages` is true.
    """
    if image.ndim != 4 or image.shape[-1] != 3:
      raise ValueError(f"expected images of shape (N, H, W, 3), got {image.shape}")
    dtype = jnp.dtype(self.cfg.dtype)
    image = image.astype(dtype)
    h = c = jnp.zeros(image.shape[:3] + (self.cfg.channels,), dtype)
    stage = jax.checkpoint(self._stage, static_argnums=(4,)) if self.cfg.remat else self._stage
    x, h, c = stage(image, image, h, c, True)
    first_output = x
    if self.cfg.scan:
      def step(carry, _):
        x, h, c = stage(image, *carry, False)
        return (x, h, c), x if return_stages else None
      (x, _, _), rest = jax.lax.scan(step, (x, h, c), length=self.cfg.stages - 1)
      stages = jnp.concatenate([first_output[None], rest]) if return_stages else None
    else:
      outputs = [first_output]
      for _ in range(self.cfg.stages - 1):
        x, h, c = stage(image, x, h, c, False)
        outputs.append(x)
      stages = jnp.stack(outputs) if return_stages else None
    out_dtype = jnp.promote_types(dtype, jnp.float32)  # float32, or float64 when computing in it
    if return_stages:
      return x.astype(out_dtype), stages.astype(out_dtype)
    return x.astype(out_dtype)

