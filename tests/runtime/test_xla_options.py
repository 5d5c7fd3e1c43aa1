"""The per-jit XLA options: on CPU, Eigen or XLA's default convolutions, whichever measured
faster on this machine for the workload (cached per machine); nothing on other platforms."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sapnet_jax.models import ops
from sapnet_jax.runtime import xla_options


def test_other_platforms_get_no_options():
  assert xla_options.compiler_options("gpu", "train") == {}
  assert xla_options.compiler_options("tpu", "infer_image") == {}


def test_cpu_description_names_the_model_and_extensions():
  cpu = xla_options.cpu_description()
  assert cpu["model"] and cpu["cores"] >= 1
  assert set(cpu["vector_extensions"]) <= set(xla_options._EXTENSIONS)
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags = set(f.read().split())
    assert set(cpu["vector_extensions"]) == {e for e in xla_options._EXTENSIONS if e in flags}


@pytest.mark.parametrize("forced,want", [("eigen", xla_options.CPU_OPTIONS), ("default", {})])
def test_environment_choice_skips_the_measurement(monkeypatch, tmp_path, forced, want):
  monkeypatch.setenv("SAPNET_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv(xla_options.ENV, forced)
  assert xla_options.cpu_choice("train") == forced
  # What the train step's jit gets (uncached: other tests may have filled the cache).
  supported = xla_options._supported()
  assert xla_options.compiler_options.__wrapped__("cpu", "train") == (want if supported else {})
  assert not (tmp_path / xla_options.CACHE_FILE).exists()
  monkeypatch.setenv(xla_options.ENV, "mkl")
  with pytest.raises(ValueError, match=xla_options.ENV):
    xla_options.cpu_choice("train")
  with pytest.raises(ValueError, match="workload"):
    xla_options.cpu_choice("serve")


def test_measured_once_per_machine_and_workload(monkeypatch, tmp_path):
  monkeypatch.setenv("SAPNET_JAX_CACHE", str(tmp_path))
  monkeypatch.delenv(xla_options.ENV, raising=False)
  calls = []
  real = xla_options.measure

  def counted(workload, rounds=1):
    calls.append(workload)
    return real(workload, rounds=1)

  monkeypatch.setattr(xla_options, "measure", counted)
  first = xla_options.cpu_choice("infer_image")
  assert first in xla_options.CHOICES and calls == ["infer_image"]
  cache = json.loads((tmp_path / xla_options.CACHE_FILE).read_text())
  (entry,) = cache.values()
  assert entry["infer_image"] == first
  assert min(entry["infer_image_seconds"], key=entry["infer_image_seconds"].get) == first
  # From the cache:
  assert xla_options.cpu_choice("infer_image") == first and calls == ["infer_image"]
  (tmp_path / xla_options.CACHE_FILE).write_text("{not json")  # damaged: measured again
  assert xla_options.cpu_choice("infer_image") in xla_options.CHOICES
  assert calls == ["infer_image", "infer_image"]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU options")
def test_eigen_option_compiles_and_keeps_results():
  if not xla_options._supported():
    pytest.skip("this XLA does not know the option: no choice to make")
  x = jax.random.normal(jax.random.key(0), (2, 20, 24, 8))
  k = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))

  def f(x, k):
    return jax.grad(lambda k: jnp.sum(jnp.tanh(ops.conv3x3(x, k, 2))))(k)

  eigen = jax.jit(f, compiler_options=xla_options.CPU_OPTIONS)
  if "__ynn_fusion" in jax.jit(f).lower(x, k).compile().as_text():
    # This XLA fuses convolutions into YNNPACK by default: the option must remove those fusions.
    assert "__ynn_fusion" not in eigen.lower(x, k).compile().as_text()
  np.testing.assert_allclose(eigen(x, k), jax.jit(f)(x, k), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU options")
def test_derainer_runs_one_image_and_batches_under_their_own_choices(monkeypatch, tmp_path):
  if not xla_options._supported():
    pytest.skip("this XLA does not know the option: no choice to make")
  from flax import nnx

  from sapnet_jax import infer
  from sapnet_jax.models import pdu

  monkeypatch.setenv("SAPNET_JAX_CACHE", str(tmp_path))
  monkeypatch.delenv(xla_options.ENV, raising=False)
  (tmp_path / xla_options.CACHE_FILE).write_text(json.dumps({xla_options._machine_key(): {
      "infer_image": "default", "infer_batch": "eigen"}}))
  monkeypatch.setattr(xla_options, "compiler_options", xla_options.compiler_options.__wrapped__)
  derainer = infer.Derainer(pdu.PDUNet(pdu.PDUConfig(stages=1, num_blocks=1, channels=16),
                                       rngs=nnx.Rngs(0)), impl=None)
  one, two = np.zeros((1, 16, 16, 3), np.float32), np.zeros((2, 16, 16, 3), np.float32)
  asked = []
  jitted = derainer._jitted
  monkeypatch.setattr(derainer, "_jitted", lambda workload: asked.append(workload) or
                      jitted(workload))
  derainer.batch(one)
  assert asked == ["infer_image"] and list(derainer._forward) == ["infer_image"]  # on first use
  derainer.batch(two)
  assert asked == ["infer_image", "infer_batch"]
  if "__ynn_fusion" not in jitted("infer_image").lower(derainer._state, one).compile().as_text():
    pytest.skip("this XLA does not fuse these convolutions into YNNPACK: nothing to tell apart")
  assert "__ynn_fusion" not in jitted("infer_batch").lower(derainer._state, two).compile().as_text()
