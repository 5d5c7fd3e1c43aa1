"""XLA compiler options for the jitted network functions (the train step, inference).

On CPU, XLA (jaxlib 0.10) hands convolutions to YNNPACK by default. For this project's
shapes Eigen's convolutions, which `xla_cpu_experimental_ynn_fusion_type=""` restores,
measured faster on a 2-core AVX-512 CPU (12 x 100x100, YNNPACK vs Eigen): 32->32 forward 22.7
vs 16.6 ms, forward + both gradients 96 vs 72 ms; ConvLSTM gates 64->128 forward + gradients
908 vs 373 ms; SAPNet train step (-SSIM) 10.2 vs 7.0 s, with the full loss 14.3 vs 9.9 s.
The option is passed per `jax.jit`, so nothing else in the process changes; an XLA that does
not know it keeps its defaults.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options(backend: str | None = None) -> dict[str, str]:
  """The options for `jax.jit(..., compiler_options=...)` on `backend` (default: JAX's)."""
  if (backend or jax.default_backend()) != "cpu":
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.zeros(())).compile()
  except jax.errors.JaxRuntimeError:  # an XLA without the option (older or newer)
    return {}
  return dict(CPU_OPTIONS)
