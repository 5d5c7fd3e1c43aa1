"""The ops layer: every kernel set computes the same function as the reference set (plain
jax.numpy and autodiff), forward and gradients; "auto" resolves by platform, outside modules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sapnet_jax import models
from sapnet_jax.models import msnet, ops, pdu

REF = ops.KERNELS["reference"]
OTHERS = [k for k in ops.IMPLS if k != "reference"]


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("dilation", [1, 2, 16])
@pytest.mark.parametrize("shape,cin,cout", [((2, 13, 17), 5, 7), ((1, 24, 31), 6, 12)])
def test_conv_and_its_gradients_equal_the_reference(impl, dilation, shape, cin, cout):
  x = jax.random.normal(jax.random.key(0), shape + (cin,))
  k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
  fn = ops.kernels(impl).conv3x3

  def grads(f):
    return jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k, dilation))), argnums=(0, 1))(x, k)

  np.testing.assert_array_equal(fn(x, k, dilation), REF.conv3x3(x, k, dilation))
  for got, want in zip(grads(fn), grads(REF.conv3x3)):
    # float32 sums in another order (nine matmuls, or another fusion): relative 1e-5.
    assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) < 1e-5


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("shape", [(3, 4, 6, 5), (2, 3, 3, 7)])  # pixels divisible by 8 or not
def test_elementwise_and_reduction_kernels_equal_the_reference(impl, shape):
  kern = ops.kernels(impl)
  x = jax.random.normal(jax.random.key(0), shape)
  b = jax.random.normal(jax.random.key(1), shape[-1:])
  s = jax.random.uniform(jax.random.key(2), (shape[0], shape[-1]))
  cases = {"add_bias": ((x, b), kern.add_bias, REF.add_bias),
           "scale_channels": ((x, s), kern.scale_channels, REF.scale_channels),
           "channel_mean": ((x,), kern.channel_mean, REF.channel_mean),
           "stage_boundary": ((x,), kern.stage_boundary, REF.stage_boundary)}
  for name, (args, got_fn, ref_fn) in cases.items():
    np.testing.assert_allclose(got_fn(*args), ref_fn(*args), rtol=1e-6, atol=1e-6, err_msg=name)
    argnums = tuple(range(len(args)))
    got = jax.grad(lambda *a: jnp.sum(jnp.sin(got_fn(*a))), argnums)(*args)
    ref = jax.grad(lambda *a: jnp.sum(jnp.sin(ref_fn(*a))), argnums)(*args)
    for g, r in zip(got, ref):
      assert g.dtype == r.dtype, name
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("impl", ops.IMPLS)
def test_reductions_accumulate_bfloat16_in_float32(impl):
  # 4096 ones sum to 4096 exactly in float32, to 256 in bfloat16.
  ones = jnp.ones((1, 64, 64, 2), jnp.bfloat16)
  np.testing.assert_array_equal(ops.kernels(impl).channel_mean(ones).astype(jnp.float32), 1.0)
  np.testing.assert_array_equal(ops.channel_sum(ones), [4096.0, 4096.0])


@pytest.mark.parametrize("first", [0.5, np.nan, np.inf])
def test_materialize_is_the_identity_and_survives_compilation(first):
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5)).at[0, 0, 0, 0].set(first)
  np.testing.assert_array_equal(jax.jit(ops.materialize)(x), x)
  # XLA keeps the boundary: the compiled function still holds the conditional.
  assert "conditional" in jax.jit(lambda v: ops.materialize(v * 2) + 1).lower(x).compile().as_text()


def test_the_cpu_set_materializes_only_what_is_differentiated():
  x = jax.random.normal(jax.random.key(0), (2, 11, 13, 6))
  k = jax.random.normal(jax.random.key(1), (3, 3, 6, 5))
  conv = ops.kernels("cpu").conv3x3
  vjp = str(jax.make_jaxpr(lambda x, k: jax.vjp(lambda x_: conv(x_, k, 2), x)[0])(x, k))
  assert "cond" in vjp
  assert "cond" not in str(jax.make_jaxpr(lambda x, k: conv(x, k, 2))(x, k))
  assert "cond" not in str(jax.make_jaxpr(jax.grad(
      lambda x, k: jnp.sum(REF.conv3x3(x, k, 2))))(x, k))


@pytest.mark.parametrize("family_cfg", [
    pdu.PDUConfig(channels=8, reduction=4, stages=2),
    pdu.PDUConfig(channels=8, attention="none", dilation=False, stages=2),
    msnet.MSNetConfig(units=2, channels=8, cclb_depth=2)], ids=["sapnet", "prenet", "msnet"])
def test_networks_compute_the_same_function_with_every_kernel_set(family_cfg):
  x = jax.random.uniform(jax.random.key(0), (2, 15, 12, 3))
  outs, grads = {}, {}
  for impl in ops.IMPLS:
    model = models.build(dataclasses.replace(family_cfg, impl=impl), nnx.Rngs(0))
    outs[impl] = model(x)
    grads[impl] = jax.tree.leaves(nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))
  for impl in OTHERS:
    np.testing.assert_allclose(outs[impl], outs["reference"], rtol=0, atol=1e-6)
    for a, b in zip(grads["reference"], grads[impl]):
      assert float(jnp.abs(a - b).max()) <= 1e-5 * max(float(jnp.abs(a).max()), 1e-6)


@pytest.mark.parametrize("platform,want", [("cpu", "cpu"), ("gpu", "gpu"), ("tpu", "reference"),
                                           ("METAL", "reference")])
def test_auto_resolves_by_platform_and_explicit_choices_stay(platform, want):
  assert ops.resolve("auto", platform) == want
  for impl in ops.IMPLS:
    assert ops.resolve(impl, platform) == impl
  cfg = models.resolve_impl(pdu.PDUConfig(impl="auto"), platform)
  assert cfg.impl == want and cfg == pdu.PDUConfig(impl=want)


def test_unresolved_or_unknown_impl_is_named():
  with pytest.raises(ValueError, match="model.impl"):
    pdu.PDUConfig(impl="fast")
  with pytest.raises(ValueError, match="model.impl"):
    msnet.MSNetConfig(impl="fast")
  with pytest.raises(ValueError, match="resolved"):  # modules never pick a platform themselves
    pdu.PDUNet(pdu.PDUConfig(impl="auto", channels=8, reduction=4), rngs=nnx.Rngs(0))


def test_with_config_keeps_the_weights_and_old_checkpoint_fields_are_ignored():
  model = pdu.PDUNet(pdu.PDUConfig(channels=8, reduction=4, stages=2), rngs=nnx.Rngs(1))
  cpu = models.with_config(model, impl="cpu")
  assert cpu.cfg.impl == "cpu" and models.with_config(model, impl="reference") is model
  x = jax.random.uniform(jax.random.key(0), (1, 9, 10, 3))
  np.testing.assert_allclose(cpu(x), model(x), atol=1e-6)
  d = {**models.config_to_dict(model.cfg), "conv_wgrad": "matmul"}  # saved before `impl`
  assert models.config_from_dict(d) == model.cfg
