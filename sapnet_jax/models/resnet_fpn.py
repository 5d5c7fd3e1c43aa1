"""The segmentation network of SAPNet's UBS loss: ResNet encoder + FPN decoder (paper §3.4), NHWC.

Encoder: torchvision's ResNet (Bottleneck blocks, stride in the 3x3 conv, "v1.5"), returning
c2..c5 (strides 4, 8, 16, 32). Its BatchNorms run in inference mode (running statistics): the
network is frozen, so batch statistics would only make the loss depend on the batch.
Decoder (official `Modeling/fpn.py`, no activations or norms between its convs):

    p5 = top(c5);  p4 = up(p5) + lat1(c4);  p3 = up(p4) + lat2(c3);  p2 = up(p3) + lat3(c2)
    p_k = smooth_k_2(smooth_k_1(p_k))              # two 3x3 convs per stair, 256 -> 256 -> 128
    logits = classify(concat[up(p5), up(p4), up(p3), p2])   # 3x3 conv, 512 -> classes

`up` is bilinear with half-pixel centres (align_corners=False): the official code calls
`F.upsample(..., mode='bilinear')`, whose default has been align_corners=False since PyTorch 0.4.
Logits are at 1/4 of the input resolution (the official loss uses them there). Parameter names mirror torchvision (`layer3/5/conv2`) and the
official decoder (`smooth2_1`) so that converters stay a table.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclasses.dataclass(frozen=True)
class ResNetFPNConfig:
  """Architecture of the segmentation net (defaults: official, ResNet-101, 21 VOC classes)."""

  depths: tuple[int, ...] = RESNET_DEPTHS[101]
  width: int = 64  # stem width; stage k has width * 2**k bottleneck channels, x4 at its output
  fpn_channels: int = 256
  smooth_channels: int = 128
  num_classes: int = 21
  # Official code: N(0, 0.01) for every decoder conv, biases 0; the paper says N(0, 0.05).
  decoder_init_std: float = 0.01
  dtype: str = "float32"

  def __post_init__(self):
    if len(self.depths) != 4 or min(self.depths) < 1:
      raise ValueError(f"depths must be 4 positive block counts, got {self.depths}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")


_KAIMING = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's init


def _conv(cin, cout, k, stride=1, *, bias=False, init=_KAIMING, dtype, rngs):
  p = k // 2
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
                  use_bias=bias, kernel_init=init, dtype=dtype, rngs=rngs)


def _bn(c, dtype, rngs):
  # PyTorch BatchNorm2d: eps 1e-5; inference mode uses the running mean/var.
  return nnx.BatchNorm(c, use_running_average=True, epsilon=1e-5, dtype=dtype, rngs=rngs)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (stride) -> 1x1 (x4) with BN; projection shortcut when the shape changes."""

  def __init__(self, cin: int, planes: int, stride: int, dtype, rngs: nnx.Rngs):
    cout = planes * 4
    self.conv1, self.bn1 = _conv(cin, planes, 1, dtype=dtype, rngs=rngs), _bn(planes, dtype, rngs)
    self.conv2 = _conv(planes, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(planes, dtype, rngs)
    self.conv3, self.bn3 = _conv(planes, cout, 1, dtype=dtype, rngs=rngs), _bn(cout, dtype, rngs)
    if stride != 1 or cin != cout:
      self.down_conv = _conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs)
      self.down_bn = _bn(cout, dtype, rngs)
    else:
      self.down_conv = self.down_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.down_conv is None else self.down_bn(self.down_conv(x))
    return jax.nn.relu(y + shortcut)


class ResNet(nnx.Module):
  """ResNet encoder returning (c2, c3, c4, c5)."""

  def __init__(self, cfg: ResNetFPNConfig, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.conv1 = _conv(3, cfg.width, 7, 2, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(cfg.width, dtype, rngs)
    cin = cfg.width
    for k, depth in enumerate(cfg.depths):
      planes = cfg.width * 2**k
      blocks = []
      for b in range(depth):
        blocks.append(Bottleneck(cin, planes, 2 if (b == 0 and k > 0) else 1, dtype, rngs))
        cin = planes * 4
      setattr(self, f"layer{k + 1}", nnx.List(blocks))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    # MaxPool2d(3, 2, padding=1): padding with -inf never wins the max.
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                              ((0, 0), (1, 1), (1, 1), (0, 0)))
    outs = []
    for k in range(4):
      for block in getattr(self, f"layer{k + 1}"):
        x = block(x)
      outs.append(x)
    return tuple(outs)


def _interp_matrix(n_in: int, n_out: int, align_corners: bool = False) -> np.ndarray:
  """(n_out, n_in) weights of PyTorch's 1-d linear interpolation to a given size."""
  if align_corners:
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
  else:  # half-pixel centres; PyTorch clamps source positions below 0 to 0
    pos = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
  lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), lo), 1 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool = False
                    ) -> jax.Array:
  """PyTorch F.interpolate(x, size, mode="bilinear", align_corners=...) on NHWC.

  Two small interpolation matmuls: exact PyTorch semantics for any size ratio, and cheaper on
  CPU than a gather."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x
  mh = jnp.asarray(_interp_matrix(h, size[0], align_corners), x.dtype)
  mw = jnp.asarray(_interp_matrix(w, size[1], align_corners), x.dtype)
  return jnp.einsum("ph,nhwc,qw->npqc", mh, x, mw)


class FPNDecoder(nnx.Module):
  """The official FPN head: lateral 1x1 convs, top-down sum, 2 smooth convs per level, classify."""

  def __init__(self, cfg: ResNetFPNConfig, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    init = jax.nn.initializers.normal(cfg.decoder_init_std)
    f, s = cfg.fpn_channels, cfg.smooth_channels
    c2, c3, c4, c5 = (cfg.width * 4 * 2**k for k in range(4))

    def conv(cin, cout, k):
      return _conv(cin, cout, k, bias=True, init=init, dtype=dtype, rngs=rngs)

    self.toplayer = conv(c5, f, 1)
    self.latlayer1, self.latlayer2, self.latlayer3 = conv(c4, f, 1), conv(c3, f, 1), conv(c2, f, 1)
    for k in range(1, 5):
      setattr(self, f"smooth{k}_1", conv(f, f, 3))
      setattr(self, f"smooth{k}_2", conv(f, s, 3))
    self.classify = conv(4 * s, cfg.num_classes, 3)

  def __call__(self, c2, c3, c4, c5) -> jax.Array:
    up = resize_bilinear
    p5 = self.toplayer(c5)
    p4 = up(p5, c4.shape[1:3]) + self.latlayer1(c4)
    p3 = up(p4, c3.shape[1:3]) + self.latlayer2(c3)
    p2 = up(p3, c2.shape[1:3]) + self.latlayer3(c2)
    levels = [getattr(self, f"smooth{k}_2")(getattr(self, f"smooth{k}_1")(p))
              for k, p in enumerate((p5, p4, p3, p2), start=1)]
    size = c2.shape[1:3]
    return self.classify(jnp.concatenate([up(p, size) for p in levels], axis=-1))


class ResNetFPN(nnx.Module):
  """Segmentation logits (N, ceil(H/4), ceil(W/4), classes) for images (N, H, W, 3)."""

  def __init__(self, cfg: ResNetFPNConfig = ResNetFPNConfig(), *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.resnet = ResNet(cfg, rngs)
    self.fpn = FPNDecoder(cfg, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected images of shape (N, H, W, 3), got {x.shape}")
    return self.fpn(*self.resnet(x.astype(jnp.dtype(self.cfg.dtype)))).astype(jnp.float32)


def random_weights(cfg: ResNetFPNConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Flat initial weights drawn with NumPy: the same distributions as the modules' initializers
  (torchvision's kaiming fan-out normal for the encoder, N(0, decoder_init_std) for the
  decoder, zero biases, identity BatchNorm), without compiling one XLA program per shape as
  jax.random does eagerly (minutes for ResNet-101 on a small CPU)."""
  model = nnx.eval_shape(lambda: ResNetFPN(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in sorted(_flat_state(model).items()):
    name = path.rsplit("/", 1)[-1]
    if name == "kernel":
      h, w, _, cout = leaf.shape
      std = cfg.decoder_init_std if path.startswith("fpn/") else np.sqrt(2.0 / (h * w * cout))
      out[path] = (rng.standard_normal(leaf.shape, np.float32) * np.float32(std))
    elif name in ("scale", "var"):
      out[path] = np.ones(leaf.shape, np.float32)
    else:  # bias, mean
      out[path] = np.zeros(leaf.shape, np.float32)
  return out


def _flat_state(model: nnx.Module) -> dict:
  def walk(tree, prefix):
    for k, v in tree.items():
      if isinstance(v, dict):
        yield from walk(v, f"{prefix}{k}/")
      else:
        yield f"{prefix}{k}", v
  return dict(walk(nnx.to_pure_dict(nnx.state(model)), ""))
