"""AlexNet convolutional trunk (torchvision `alexnet().features`), NHWC, for LPIPS-Alex.

Activations relu1 ... relu5 are the five LPIPS taps. Parameter names `conv1` ... `conv5`
(HWIO) match the converted ImageNet weights.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sapnet_jax.models.vgg import max_pool

LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")
WIDTHS = (64, 192, 384, 256, 256)
# (kernel, stride, padding) of conv1..conv5; a 3x3 stride-2 max pool follows relu1 and relu2.
_GEOMETRY = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))


class AlexNetFeatures(nnx.Module):
  """AlexNet up to relu5; `widths` other than the default are for tests."""

  def __init__(self, *, widths: Sequence[int] = WIDTHS, dtype: str = "float32",
               rngs: nnx.Rngs):
    self.dtype = dtype
    cin = 3
    for k, (width, (size, stride, pad)) in enumerate(zip(widths, _GEOMETRY)):
      setattr(self, f"conv{k + 1}", nnx.Conv(
          cin, width, (size, size), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
          dtype=jnp.dtype(dtype), rngs=rngs))
      cin = width

  def __call__(self, x: jax.Array, outputs: Sequence[str] = LAYERS) -> dict[str, jax.Array]:
    """Activations named in `outputs` for images `x` (N, H, W, 3); no input normalisation."""
    unknown = [o for o in outputs if o not in LAYERS]
    if unknown:
      raise ValueError(f"AlexNetFeatures cannot return {unknown}; known: {LAYERS}")
    deepest = max(LAYERS.index(o) for o in outputs)
    x = x.astype(jnp.dtype(self.dtype))
    feats = {}
    for k, name in enumerate(LAYERS[: deepest + 1]):
      if k in (1, 2):
        x = max_pool(x, 3, 2)
      x = jax.nn.relu(getattr(self, f"conv{k + 1}")(x))
      if name in outputs:
        feats[name] = x
    return feats
