"""The per-jit XLA options: Eigen convolutions on CPU, same results, nothing elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sapnet_jax import xla_options
from sapnet_jax.models import conv


def test_other_backends_get_no_options():
  assert xla_options.compiler_options("gpu") == {}
  assert xla_options.compiler_options("tpu") == {}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU options")
def test_cpu_options_compile_and_keep_results():
  opts = xla_options.compiler_options()
  assert opts in ({}, xla_options.CPU_OPTIONS)  # {} only for an XLA without the option
  x = jax.random.normal(jax.random.key(0), (2, 20, 24, 8))
  k = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))

  def f(x, k):
    return jax.grad(lambda k: jnp.sum(jnp.tanh(conv.conv3x3_xla(x, k, 2))))(k)

  with_opts = jax.jit(f, compiler_options=opts)
  if "__ynn_fusion" in jax.jit(f).lower(x, k).compile().as_text():
    # This XLA fuses convolutions into YNNPACK by default: the probe must have found the option,
    # and the option must remove those fusions.
    assert opts == xla_options.CPU_OPTIONS
    assert "__ynn_fusion" not in with_opts.lower(x, k).compile().as_text()
  np.testing.assert_allclose(with_opts(x, k), jax.jit(f)(x, k), rtol=1e-5, atol=1e-5)
