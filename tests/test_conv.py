"""3x3 convolutions: the matrix-product weight gradient equals XLA's, and the helpers for bias
and channel sums equal plain autodiff."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sapnet_jax.models import conv, pdu


@pytest.mark.parametrize("dilation", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("shape,cin,cout", [((2, 13, 17), 5, 7), ((1, 24, 31), 6, 12)])
def test_gradients_match_xla(dilation, shape, cin, cout):
  x = jax.random.normal(jax.random.key(0), shape + (cin,))
  k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))

  def grads(fn):
    return jax.grad(lambda x, k: jnp.sum(jnp.sin(fn(x, k, dilation))), argnums=(0, 1))(x, k)

  (dx_ref, dk_ref), (dx, dk) = grads(conv.conv3x3_xla), grads(conv.conv3x3_matmul_wgrad)
  np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=0)  # same XLA input gradient
  assert float(jnp.abs(dk - dk_ref).max() / jnp.abs(dk_ref).max()) < 1e-5
  np.testing.assert_array_equal(conv.conv3x3_matmul_wgrad(x, k, dilation),
                                conv.conv3x3_xla(x, k, dilation))


def test_network_gradients_do_not_depend_on_wgrad_mode():
  cfg = pdu.PDUConfig(channels=8, reduction=4, stages=2)
  x = jax.random.uniform(jax.random.key(0), (2, 15, 12, 3))
  out = []
  for mode in conv.WGRADS:
    model = pdu.PDUNet(dataclasses.replace(cfg, conv_wgrad=mode), rngs=nnx.Rngs(0))
    out.append(jax.tree.leaves(nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)))
  for other in out[1:]:
    for a, b in zip(out[0], other):
      assert float(jnp.abs(a - b).max()) <= 1e-5 * max(float(jnp.abs(a).max()), 1e-6)


def test_bad_mode():
  with pytest.raises(ValueError, match="model.conv_wgrad"):
    pdu.PDUConfig(conv_wgrad="fast")


@pytest.mark.parametrize("backend,want", [("cpu", "xla"), ("gpu", "matmul"), ("tpu", "xla")])
def test_auto_picks_the_measured_faster_form(backend, want):
  assert conv.resolve_wgrad("auto", backend) == want
  assert conv.resolve_wgrad("xla", backend) == "xla"
  assert conv.resolve_wgrad("matmul", backend) == "matmul"


@pytest.mark.parametrize("dilation", [1, 4])
def test_materialized_conv_is_the_xla_conv(dilation):
  x = jax.random.normal(jax.random.key(0), (2, 11, 13, 6))
  k = jax.random.normal(jax.random.key(1), (3, 3, 6, 5))

  def loss(fn):
    return lambda x, k: jnp.sum(jnp.sin(fn(x, k, dilation)))

  np.testing.assert_array_equal(conv.conv3x3_materialized(x, k, dilation),
                                conv.conv3x3_xla(x, k, dilation))
  ref = jax.grad(loss(conv.conv3x3_xla), argnums=(0, 1))(x, k)
  got = jax.grad(loss(conv.conv3x3_materialized), argnums=(0, 1))(x, k)
  for a, b in zip(got, ref):  # the boundary is exact; only XLA's fusion choices may differ
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # The differentiated forward passes x through a conditional; the plain forward does not.
  vjp_eqns = str(jax.make_jaxpr(lambda x, k: jax.vjp(lambda x_: conv.conv3x3_materialized(
      x_, k, dilation), x)[0])(x, k))
  assert "cond" in vjp_eqns
  assert "cond" not in str(jax.make_jaxpr(
      lambda x, k: conv.conv3x3_materialized(x, k, dilation))(x, k))


@pytest.mark.parametrize("shape", [(3, 4, 6, 5), (2, 3, 3, 7)])  # pixels divisible by 8 or not
def test_channel_sum_is_the_sum(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_allclose(conv.channel_sum(x), jnp.sum(x, (0, 1, 2)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(conv.channel_sum(x, keep_batch=True), jnp.sum(x, (1, 2)),
                             rtol=1e-5, atol=1e-5)
  # bfloat16 inputs are accumulated in float32: 4096 ones sum to 4096 exactly, not 256.
  ones = jnp.ones((1, 64, 64, 2), jnp.bfloat16)
  np.testing.assert_array_equal(conv.channel_sum(ones), [4096.0, 4096.0])


def test_add_bias_gradient_is_the_channel_sum():
  y = jax.random.normal(jax.random.key(0), (2, 5, 8, 3))
  b = jax.random.normal(jax.random.key(1), (3,))

  def loss(add):
    return lambda y, b: jnp.sum(jnp.sin(add(y, b)))

  np.testing.assert_array_equal(conv.add_bias(y, b), y + b)
  got = jax.grad(loss(conv.add_bias), argnums=(0, 1))(y, b)
  ref = jax.grad(loss(lambda y, b: y + b), argnums=(0, 1))(y, b)
  for a, r in zip(got, ref):
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first", [0.5, np.nan, np.inf])
def test_materialize_is_the_identity(first):
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5)).at[0, 0, 0, 0].set(first)
  np.testing.assert_array_equal(jax.jit(conv.materialize)(x), x)
  # XLA keeps the boundary: the compiled step still holds the conditional.
  assert "conditional" in jax.jit(lambda v: conv.materialize(v * 2) + 1).lower(x).compile().as_text()
