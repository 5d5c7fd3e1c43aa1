"""XLA compiler options for the jitted network functions (the train step, inference).

On CPU, XLA (jaxlib 0.10) hands convolutions to YNNPACK by default; the option
`xla_cpu_experimental_ynn_fusion_type=""` keeps them in Eigen. Which is faster depends on the
CPU and on the work: on an AVX-512 Xeon Eigen trains SAPNet about 1.5x faster, on an AMD EPYC
without AVX-512 YNNPACK infers about 8% faster (docs/benchmarks.md), and on an AVX-512 EPYC
YNNPACK de-rains a 512x512 image 7-16% faster but a batch of 20 128x128 crops 1.9-2x slower. So
the choice is measured once per machine and workload ("train": forward and gradients;
"infer_image": the forward pass of one photo or tile; "infer_batch": of many small crops in
one call, as `auto`'s thumbnails): a few jitted convolutions of the networks' channels at the
workload's shape under each setting, alternated, the faster kept. The
result is cached in $SAPNET_JAX_CACHE/xla_cpu_convs.json under the CPU model, its vector
extensions, core count and jaxlib version; deleting the file measures again (a measurement
taken while the machine was busy may be off). SAPNET_JAX_CPU_CONVS=eigen|default skips the
measurement. The options go to each `jax.jit`, so nothing else in the process changes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time

import jax
import jax.numpy as jnp
import jaxlib

from sapnet_jax.models import ops
from sapnet_jax.utils import fileio

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
CHOICES = {"eigen": CPU_OPTIONS, "default": {}}
# The workloads, each with the batch and image shape of its probe.
PROBE_SHAPES = {"train": (4, 100, 100), "infer_image": (1, 512, 512),
                "infer_batch": (16, 128, 128)}
WORKLOADS = tuple(PROBE_SHAPES)
ENV = "SAPNET_JAX_CPU_CONVS"
CACHE_FILE = "xla_cpu_convs.json"
_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
               "amx_tile", "asimd", "sve", "sve2")


def cpu_description() -> dict:
  """The CPU model, its vector extensions (of those that matter to convolution kernels) and
  the number of cores this process may use."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and model in ("", platform.machine(), "x86_64"):
          model = value.strip()
        elif key in ("flags", "Features"):
          flags |= set(value.split())
  except OSError:  # not Linux: the model string is what we have
    pass
  return {"model": model, "vector_extensions": [e for e in _EXTENSIONS if e in flags],
          "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count()}


def _machine_key() -> str:
  cpu = cpu_description()
  extensions = "+".join(cpu["vector_extensions"])
  return f"{cpu['model']}|{extensions}|{cpu['cores']}|jaxlib {jaxlib.__version__}"


def _probe(workload: str):
  """Convolutions as the networks have them: 32 -> 32 at dilations 1 and 4, the ConvLSTM's
  64 -> 128 gates, at PROBE_SHAPES; with gradients for "train" (a 12 x 100x100 batch's worth of
  pixels / 3)."""
  shape = PROBE_SHAPES[workload]
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], shape + (32,))
  ks = [jax.random.normal(k, s) * 0.1 for k, s in zip(
      keys[1:], [(3, 3, 32, 32), (3, 3, 32, 32), (3, 3, 64, 128)])]

  def forward(x, ks):
    y = jax.nn.relu(ops.conv3x3(x, ks[0], 1))
    y = jax.nn.relu(ops.conv3x3(y, ks[1], 4))
    return jnp.sum(jnp.tanh(ops.conv3x3(jnp.concatenate([y, x], -1), ks[2], 1)))

  fn = jax.grad(forward, argnums=(0, 1)) if workload == "train" else forward
  return fn, (x, ks)


def measure(workload: str, rounds: int = 3) -> dict[str, float]:
  """Seconds per call of the probe under each setting (the fastest of `rounds`, alternated)."""
  fn, args = _probe(workload)
  compiled = {name: jax.jit(fn, compiler_options=opts).lower(*args).compile()
              for name, opts in CHOICES.items()}
  best = {name: float("inf") for name in CHOICES}
  for name, c in compiled.items():  # warm up
    jax.block_until_ready(c(*args))
  for _ in range(rounds):
    for name, c in compiled.items():
      t = time.perf_counter()
      jax.block_until_ready(c(*args))
      best[name] = min(best[name], time.perf_counter() - t)
  return best


def _read_cache(path: str) -> dict:
  try:
    return json.loads(fileio.read_text(path))
  except (OSError, ValueError):  # absent or damaged: measured again
    return {}


def cpu_choice(workload: str) -> str:
  """"eigen" or "default" for `workload` on this machine: the environment's, the cached, or
  a new measurement (stored)."""
  if workload not in WORKLOADS:
    raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
  forced = os.environ.get(ENV, "")
  if forced:
    if forced not in CHOICES:
      raise ValueError(f"${ENV}={forced!r}: must be one of {sorted(CHOICES)}")
    return forced
  path, key = os.path.join(fileio.cache_dir(), CACHE_FILE), _machine_key()
  entry = _read_cache(path).get(key, {}).get(workload)
  if entry in CHOICES:
    return entry
  seconds = measure(workload)
  choice = min(seconds, key=seconds.get)
  logging.info("XLA:CPU convolutions for %s on this machine: %s (%s)", workload, choice,
               ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()))
  cache = _read_cache(path)  # again: another process may have added its own
  cache.setdefault(key, {})[workload] = choice
  cache[key][f"{workload}_seconds"] = seconds
  fileio.makedirs(fileio.cache_dir())
  with fileio.atomic_write(path) as f:
    f.write(json.dumps(cache, indent=1, sort_keys=True).encode())
  return choice


@functools.cache
def _supported() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.zeros(())).compile()
  except jax.errors.JaxRuntimeError:  # an XLA without the option (older or newer)
    return False
  return True


@functools.cache
def compiler_options(platform_name: str, workload: str) -> dict[str, str]:
  """The options for `jax.jit(..., compiler_options=...)` of `workload` on a JAX platform."""
  if platform_name != "cpu" or not _supported():
    return {}
  return dict(CHOICES[cpu_choice(workload)])
