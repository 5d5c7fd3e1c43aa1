"""VGG-16 convolutional trunk (torchvision `vgg16().features`), NHWC, returning named activations.

Used frozen by the perceptual contrastive loss (relu1_2, relu2_2, relu3_3, relu4_3) and by
LPIPS-VGG (relu1_2 ... relu5_3). Parameter names (`conv1_1/kernel` ... `conv5_3/bias`, HWIO)
are those of the converted ImageNet weights, so a flat weight file fills the module directly.
Only the layers up to the deepest requested activation are run.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Convolutions per block; a 2x2 max pool (floor mode) precedes every block but the first.
BLOCKS = (2, 2, 3, 3, 3)
WIDTHS = (64, 128, 256, 512, 512)
LAYERS = tuple(f"relu{b + 1}_{i + 1}" for b, n in enumerate(BLOCKS) for i in range(n))
PCL_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """PyTorch MaxPool2d(window, stride) without padding (floor mode) on NHWC."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), "VALID")


class VGG16Features(nnx.Module):
  """VGG-16 up to `last` (a name in LAYERS); `widths` other than the default are for tests."""

  def __init__(self, *, last: str = "relu5_3", widths: Sequence[int] = WIDTHS,
               dtype: str = "float32", rngs: nnx.Rngs):
    if last not in LAYERS:
      raise ValueError(f"unknown VGG-16 layer {last!r}; known: {LAYERS}")
    self.last = last
    self.dtype = dtype
    cin = 3
    for b, n in enumerate(BLOCKS):
      for i in range(n):
        name = f"conv{b + 1}_{i + 1}"
        setattr(self, name, nnx.Conv(cin, widths[b], (3, 3), padding=((1, 1), (1, 1)),
                                     dtype=jnp.dtype(dtype), rngs=rngs))
        cin = widths[b]
        if f"relu{b + 1}_{i + 1}" == last:
          return

  def __call__(self, x: jax.Array, outputs: Sequence[str] = PCL_LAYERS) -> dict[str, jax.Array]:
    """Activations named in `outputs` for images `x` (N, H, W, 3); no input normalisation."""
    unknown = [o for o in outputs if o not in LAYERS[: LAYERS.index(self.last) + 1]]
    if unknown:
      raise ValueError(f"VGG16Features(last={self.last!r}) cannot return {unknown}")
    deepest = max(LAYERS.index(o) for o in outputs)
    x = x.astype(jnp.dtype(self.dtype))
    feats = {}
    for b, n in enumerate(BLOCKS):
      if b > 0:
        x = max_pool(x, 2, 2)
      for i in range(n):
        name = f"relu{b + 1}_{i + 1}"
        x = jax.nn.relu(getattr(self, f"conv{b + 1}_{i + 1}")(x))
        if name in outputs:
          feats[name] = x
        if LAYERS.index(name) == deepest:
          return feats
    return feats
