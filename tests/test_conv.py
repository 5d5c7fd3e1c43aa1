"""The matrix-product weight gradient equals XLA's convolution gradient."""

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


@pytest.mark.parametrize("backend,cin,cout,want", [
    ("cpu", 64, 128, "matmul"),  # the ConvLSTM gates: matmul measured 2.7x faster on CPU
    ("cpu", 32, 32, "xla"), ("cpu", 6, 32, "xla"), ("cpu", 32, 3, "xla"),
    ("gpu", 32, 32, "matmul"), ("gpu", 6, 32, "matmul"), ("tpu", 64, 128, "xla")])
def test_auto_picks_the_measured_faster_form(backend, cin, cout, want):
  assert conv.resolve_wgrad("auto", cin, cout, backend) == want
  assert conv.resolve_wgrad("xla", cin, cout, backend) == "xla"
  assert conv.resolve_wgrad("matmul", cin, cout, backend) == "matmul"


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU rule of conv_wgrad=auto")
def test_auto_sapnet_trains_its_gates_with_matmul_on_cpu():
  model = pdu.PDUNet(pdu.PDUConfig(conv_wgrad="auto"), rngs=nnx.Rngs(0))
  assert model.gates.wgrad == "matmul"
  assert {b.conv1.wgrad for b in model.blocks} == {"xla"} and model.conv0.wgrad == "xla"
