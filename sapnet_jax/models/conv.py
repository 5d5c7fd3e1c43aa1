"""The 3x3 convolution layer shared by the networks (parameters laid out like nnx.Conv)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sapnet_jax.models.ops import Kernels


class Conv3x3(nnx.Module):
  """3x3 conv with bias, stride 1, padding = dilation; parameters `kernel` (3, 3, in, out) and
  `bias` (out,). `ops` computes it (sapnet_jax.models.ops)."""

  def __init__(self, cin: int, cout: int, dilation: int = 1, *, dtype=jnp.float32,
               ops: Kernels, rngs: nnx.Rngs):
    self.dilation, self.dtype, self.ops = dilation, dtype, ops
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (3, 3, cin, cout), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self._apply(x, self.kernel[...])

  def leading_inputs(self, x: jax.Array) -> jax.Array:
    """The conv of concat[x, 0]: only the kernel's first x.shape[-1] input channels meet
    non-zero input, so the rest is skipped."""
    return self._apply(x, self.kernel[:, :, : x.shape[-1]])

  def _apply(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    y = self.ops.conv3x3(x.astype(self.dtype), kernel.astype(self.dtype), self.dilation)
    return self.ops.add_bias(y, self.bias[...].astype(self.dtype))

