"""3x3 convolutions with a choice of how their weight gradient is computed.

The weight gradient of a 3x3 convolution is, for each of the nine taps (i, j),

    dW[i, j] = sum over positions p of  x_pad[p + offset(i, j)]^T  dY[p]

Laying dY out on the padded grid (zeros in the padding) and flattening both images makes
every shifted operand a contiguous slice of one array, so the gradient is nine plain
(C_in x P) @ (P x C_out) matrix products (`wgrad="matmul"`); the forward pass and the input
gradient stay XLA's. `wgrad="xla"` keeps XLA's own weight gradient; `"auto"` picks what
measured fastest (benchmarks/bench_train.py, SAPNet, 12 x 100x100, -SSIM): on one H100 matmul
(0.041 s/step vs 0.222 s xla: cuDNN's dilated weight gradients are slow); on a 2-core CPU,
with Eigen's convolutions (xla_options.py), XLA for every layer: 6.7 s/step vs 15.3 with
matmul everywhere (before the materialization below: 9.2 s, and 10.7 with matmul for the
ConvLSTM gates only). TPU is not measured: xla.

On CPU, XLA computes the weight gradient as a convolution over transposed copies of x and dY,
and fuses the elementwise chain that produced x (the residual stream: up to ten adds, ReLUs
and attention scalings) into the transpose, recomputing it in a cache-hostile order: ~2 s of a
9.2 s step. `conv3x3_materialized`, what "xla" means on CPU, passes x through `materialize`
before the conv, a boundary XLA does not fuse across, so that the transposes read x from
memory (9.2 -> 7.0 s/step). Only the differentiated forward pays for it; inference runs the
plain conv.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

WGRADS = ("xla", "matmul", "auto")


def resolve_wgrad(wgrad: str, backend: str | None = None) -> str:
  """The weight-gradient form: `wgrad`, or for "auto" the measured faster one on `backend`
  (default: JAX's default backend at model construction)."""
  if wgrad not in WGRADS:
    raise ValueError(f"model.conv_wgrad must be one of {WGRADS}, got {wgrad!r}")
  if wgrad != "auto":
    return wgrad
  return "matmul" if (backend or jax.default_backend()) == "gpu" else "xla"


def conv3x3_xla(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
  """NHWC 3x3 convolution, stride 1, zero padding = dilation (PyTorch's padding=d, dilation=d)."""
  d = dilation
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def weight_grad_matmul(x: jax.Array, dy: jax.Array, dilation: int) -> jax.Array:
  """d(conv3x3(x, W))/dW contracted with dy, as nine matrix products."""
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
  return conv3x3_xla(x, kernel, dilation)


def _fwd(x, kernel, dilation):
  return conv3x3_xla(x, kernel, dilation), (x, kernel)


def _bwd(dilation, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x_: conv3x3_xla(x_, kernel, dilation), x)[1](dy)[0]
  return dx, weight_grad_matmul(x, dy, dilation).astype(kernel.dtype)


conv3x3_matmul_wgrad.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_materialized(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
  """conv3x3_xla whose differentiated forward keeps x as a buffer of its own (module docstring)."""
  return conv3x3_xla(x, kernel, dilation)


def materialize(x: jax.Array) -> jax.Array:
  """x as a buffer of its own: XLA fuses it neither into x's consumers nor with x's producers.

  The value is the taken branch of a conditional whose predicate XLA cannot fold (x0 == x0 or
  isnan(x0): always true), so it is x exactly. XLA:CPU drops optimization barriers before
  fusion; the earlier form, x @ I (XLA does not fuse into matrix products either), cost a
  product per call: train step 6.69/6.55 s with it vs 6.55/6.47 s (alternated twice)."""
  first = x.reshape(-1)[0]
  return jax.lax.cond((first == first) | jnp.isnan(first), lambda v: v, lambda v: v + 1, x)


def _fwd_materialized(x, kernel, dilation):
  x = materialize(x)
  return conv3x3_xla(x, kernel, dilation), (x, kernel)


def _bwd_materialized(dilation, residuals, dy):
  x, kernel = residuals
  return jax.vjp(lambda x_, k_: conv3x3_xla(x_, k_, dilation), x, kernel)[1](dy)


conv3x3_materialized.defvjp(_fwd_materialized, _bwd_materialized)


def channel_sum(x: jax.Array, keep_batch: bool = False) -> jax.Array:
  """Sum over all axes but the last (and the first if `keep_batch`), accumulated in at least
  float32. Rows of 8 pixels at a time are summed first: XLA:CPU splits a plain sum over a
  (P, C) array into tiled reduce-windows, several times slower for C = 32."""
  acc = jnp.promote_types(x.dtype, jnp.float32)
  c = x.shape[-1]
  rows = x.reshape(x.shape[0] if keep_batch else 1, -1, c)
  k = 8 if rows.shape[1] % 8 == 0 else 1
  total = jnp.sum(rows.reshape(rows.shape[0], -1, k * c), 1, dtype=acc)
  total = total.reshape(-1, k, c).sum(1)
  return total if keep_batch else total[0]


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, jnp.zeros((), bias.dtype)  # the bias's dtype, for its gradient


def _add_bias_bwd(bias_dtype, g):
  return g, channel_sum(g).astype(bias_dtype.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv3x3(nnx.Module):
  """3x3 conv with bias; parameters `kernel` (3, 3, in, out) and `bias` like nnx.Conv."""

  def __init__(self, cin: int, cout: int, dilation: int = 1, *, dtype=jnp.float32,
               wgrad: str = "xla", rngs: nnx.Rngs):
    self.dilation, self.dtype, self.wgrad = dilation, dtype, resolve_wgrad(wgrad)
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (3, 3, cin, cout), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x: jax.Array, kernel: jax.Array | None = None,
               with_bias: bool = True) -> jax.Array:
    """`kernel` replaces the parameter (e.g. a slice of it); `with_bias=False` leaves the bias
    to the caller."""
    kernel = (self.kernel[...] if kernel is None else kernel).astype(self.dtype)
    if self.wgrad == "matmul":
      conv = conv3x3_matmul_wgrad
    else:  # only XLA:CPU transposes x for the weight gradient (module docstring)
      conv = conv3x3_materialized if jax.default_backend() == "cpu" else conv3x3_xla
    y = conv(x.astype(self.dtype), kernel, self.dilation)
    return add_bias(y, self.bias[...].astype(self.dtype)) if with_bias else y
