"""The ops layer: how the networks' few primitive operations are computed.

Modules say what they compute through a `Kernels` set (a 3x3 convolution, a bias add, a
per-channel mean, a per-channel scaling, the boundary between recurrent stages); which set
runs is the model config field `impl`, resolved once by the caller for the platform it runs
on (`resolve`), never inside a module. Every set computes the same function; they differ in
the graph handed to XLA, and so in speed.

- "reference": plain jax.numpy and autodiff. Parity tests and TPU use it.
- "cpu": what measured faster on XLA:CPU (benchmarks/bench_train.py; docs/benchmarks.md).
  XLA:CPU computes a convolution's weight gradient over transposed copies of its input and
  fuses the elementwise chain that produced the input into that transpose, recomputing it in
  a cache-hostile order; `materialize` gives the input a buffer of its own first. Its plain
  reductions over (P, C) arrays become slow tiled reduce-windows; `channel_sum` sums rows of
  8 pixels first. The ConvLSTM cell state is carried between stages by elementwise ops alone,
  so without a boundary XLA fuses its whole backward chain into every stage's gradient.
- "gpu": weight gradients as nine matrix products (`weight_grad_matmul`); cuDNN's dilated
  weight gradients measured slow (one H100).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

IMPLS = ("reference", "cpu", "gpu")
CHOICES = IMPLS + ("auto",)


def resolve(impl: str, platform: str) -> str:
  """The kernel set for `impl` on a JAX platform ("cpu", "gpu", "tpu", ...): "auto" is the
  measured faster set where one was measured, else "reference"."""
  if impl not in CHOICES:
    raise ValueError(f"model.impl must be one of {CHOICES}, got {impl!r}")
  if impl != "auto":
    return impl
  return platform if platform in IMPLS else "reference"


# --- reference -----------------------------------------------------------------------------

def conv3x3(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
  """NHWC 3x3 convolution, stride 1, zero padding = dilation (PyTorch's padding=d, dilation=d)."""
  d = dilation
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _accumulator(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def channel_mean(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, C), accumulated in at least float32."""
  return jnp.mean(x, axis=(1, 2), dtype=_accumulator(x.dtype)).astype(x.dtype)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  return y + bias


def scale_channels(x: jax.Array, s: jax.Array) -> jax.Array:
  """x (N, H, W, C) times s (N, C)."""
  return x * s[:, None, None, :]


def identity(x: jax.Array) -> jax.Array:
  return x


# --- cpu -----------------------------------------------------------------------------------

def materialize(x: jax.Array) -> jax.Array:
  """x as a buffer of its own: XLA fuses it neither into x's consumers nor with x's producers.

  The taken branch of a conditional whose predicate XLA cannot fold (x0 == x0 or isnan(x0):
  always true), so it is x exactly. XLA:CPU drops optimization barriers before fusion."""
  first = x.reshape(-1)[0]
  return jax.lax.cond((first == first) | jnp.isnan(first), lambda v: v, lambda v: v + 1, x)


def channel_sum(x: jax.Array, keep_batch: bool = False) -> jax.Array:
  """Sum over all axes but the last (and the first if `keep_batch`), accumulated in at least
  float32, rows of 8 pixels at a time first."""
  c = x.shape[-1]
  rows = x.reshape(x.shape[0] if keep_batch else 1, -1, c)
  k = 8 if rows.shape[1] % 8 == 0 else 1
  total = jnp.sum(rows.reshape(rows.shape[0], -1, k * c), 1, dtype=_accumulator(x.dtype))
  total = total.reshape(-1, k, c).sum(1)
  return total if keep_batch else total[0]


def channel_mean_cpu(x: jax.Array) -> jax.Array:
  return (channel_sum(x, keep_batch=True) / (x.shape[1] * x.shape[2])).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_materialized(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
  """conv3x3 whose differentiated forward keeps x as a buffer of its own; inference runs the
  plain convolution."""
  return conv3x3(x, kernel, dilation)


def _materialized_fwd(x, kernel, dilation):
  x = materialize(x)
  return conv3x3(x, kernel, dilation), (x, kernel)


def _materialized_bwd(dilation, residuals, dy):
  x, kernel = residuals
  return jax.vjp(lambda x_, k_: conv3x3(x_, k_, dilation), x, kernel)[1](dy)


conv3x3_materialized.defvjp(_materialized_fwd, _materialized_bwd)


@jax.custom_vjp
def add_bias_cpu(y: jax.Array, bias: jax.Array) -> jax.Array:
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, jnp.zeros((), bias.dtype)  # the bias's dtype, for its gradient


def _add_bias_bwd(bias_dtype, g):
  return g, channel_sum(g).astype(bias_dtype.dtype)


add_bias_cpu.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def scale_channels_cpu(x: jax.Array, s: jax.Array) -> jax.Array:
  return scale_channels(x, s)


def _scale_fwd(x, s):
  return scale_channels(x, s), (x, s)


def _scale_bwd(res, g):
  x, s = res
  return scale_channels(g, s), channel_sum(g * x, keep_batch=True).astype(s.dtype)


scale_channels_cpu.defvjp(_scale_fwd, _scale_bwd)


@jax.custom_vjp
def stage_boundary(x: jax.Array) -> jax.Array:
  """Identity that keeps `x` and its gradient as buffers of their own."""
  return materialize(x)


def _boundary_fwd(x):
  return materialize(x), None


def _boundary_bwd(_, g):
  return (materialize(g),)


stage_boundary.defvjp(_boundary_fwd, _boundary_bwd)


# --- gpu -----------------------------------------------------------------------------------

def weight_grad_matmul(x: jax.Array, dy: jax.Array, dilation: int) -> jax.Array:
  """d(conv3x3(x, W))/dW contracted with dy, as nine matrix products.

  With dy laid out on the padded grid (zeros in the padding) and both images flattened, every
  tap's shifted operand is a contiguous slice of one array."""
  d = dilation
  n, h, w, cin = x.shape
  cout = dy.shape[-1]
  wp = w + 2 * d
  flat_x = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0))).reshape(-1, cin)
  length = flat_x.shape[0]
  # Room for the largest offset past the last image; those rows meet zeros of dy.
  flat_x = jnp.pad(flat_x, ((0, 2 * d * wp + 2 * d), (0, 0)))
  flat_dy = jnp.pad(dy, ((0, 0), (0, 2 * d), (0, 2 * d), (0, 0))).reshape(-1, cout)
  taps = []
  for i in range(3):
    for j in range(3):
      start = i * d * wp + j * d
      taps.append(jax.lax.dot_general(flat_x[start:start + length], flat_dy,
                                      (((0,), (0,)), ((), ()))))
  return jnp.stack(taps).reshape(3, 3, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_matmul_wgrad(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
  return conv3x3(x, kernel, dilation)


def _matmul_fwd(x, kernel, dilation):
  return conv3x3(x, kernel, dilation), (x, kernel)


def _matmul_bwd(dilation, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x_: conv3x3(x_, kernel, dilation), x)[1](dy)[0]
  return dx, weight_grad_matmul(x, dy, dilation).astype(kernel.dtype)


conv3x3_matmul_wgrad.defvjp(_matmul_fwd, _matmul_bwd)


# --- the sets ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Kernels:
  """One implementation of each primitive the networks use."""

  name: str
  conv3x3: Callable[[jax.Array, jax.Array, int], jax.Array]  # (x, kernel, dilation) -> y
  add_bias: Callable[[jax.Array, jax.Array], jax.Array]  # (N, H, W, C) + (C,)
  channel_mean: Callable[[jax.Array], jax.Array]  # (N, H, W, C) -> (N, C)
  scale_channels: Callable[[jax.Array, jax.Array], jax.Array]  # (N, H, W, C) * (N, C)
  stage_boundary: Callable[[jax.Array], jax.Array]  # identity between recurrent stages


KERNELS = {
    "reference": Kernels("reference", conv3x3, add_bias, channel_mean, scale_channels, identity),
    "cpu": Kernels("cpu", conv3x3_materialized, add_bias_cpu, channel_mean_cpu,
                   scale_channels_cpu, stage_boundary),
    "gpu": Kernels("gpu", conv3x3_matmul_wgrad, add_bias, channel_mean, scale_channels, identity),
}


def kernels(impl: str) -> Kernels:
  """The kernel set of a resolved `impl` ("auto" is resolved by the caller: `resolve`)."""
  if impl == "auto":
    raise ValueError("model.impl='auto' must be resolved for a platform before the model is "
                     "built (sapnet_jax.models.resolve_impl)")
  if impl not in KERNELS:
    raise ValueError(f"model.impl must be one of {CHOICES}, got {impl!r}")
  return KERNELS[impl]
