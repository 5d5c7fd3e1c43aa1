"""Cost of each loss term per training step: forward + backward w.r.t. the de-rained image.

    python benchmarks/bench_losses.py [--batch 12] [--size 100] [--repeats 3]
        [--variants fp32,bf16,fp32_remat] [--terms ssim,pcl,lpips,seg] [--shared ../shared]

Prints one JSON line: seconds per step (median of --repeats after one compile run) for each
term and variant, the compile seconds, and the device. The ResNet-101 of the seg term is
random (no ImageNet weights here); its cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from sapnet_jax.losses import frozen_nets, sapnet
from sapnet_jax.runtime import xla_options

VARIANTS = {"fp32": dict(perceptual_dtype="float32", remat=False),
            "bf16": dict(perceptual_dtype="bfloat16", remat=False),
            "fp32_remat": dict(perceptual_dtype="float32", remat=True)}
ONLY = {"ssim": dict(contrast="none", lpips_weight=0.0, seg_weight=0.0),
        "pcl": dict(ssim_weight=0.0, lpips_weight=0.0, seg_weight=0.0),
        "lpips": dict(ssim_weight=0.0, contrast="none", seg_weight=0.0),
        "seg": dict(ssim_weight=0.0, contrast="none", lpips_weight=0.0, seg_start_epoch=0)}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=12)
  parser.add_argument("--size", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--variants", default="fp32,bf16,fp32_remat")
  parser.add_argument("--terms", default="ssim,pcl,lpips,seg")
  parser.add_argument("--shared", type=Path,
                      default=Path(__file__).resolve().parents[1].parent / "shared")
  args = parser.parse_args()
  w = args.shared / "weights"
  rng = np.random.default_rng(0)
  shape = (args.batch, args.size, args.size, 3)
  clean = jnp.asarray(rng.uniform(size=shape), jnp.float32)
  rainy = jnp.clip(clean + jnp.asarray(rng.uniform(0, 0.3, shape), jnp.float32), 0, 1)
  derained = 0.5 * (clean + rainy)
  result = {"bench": "losses", "device": str(jax.devices()[0].device_kind),
            "backend": jax.default_backend(), "batch": args.batch, "size": args.size,
            "seconds_per_step": {}, "compile_seconds": {}}
  for variant in args.variants.split(","):
    for term in args.terms.split(","):
      if term == "ssim" and variant != "fp32":
        continue  # no frozen net involved
      cfg = default.get_config().loss
      cfg.update(dict(vgg_weights=str(w / "vgg16_imagenet/vgg16_features_hwio.npz"),
                      alexnet_weights=str(w / "alexnet_imagenet/alexnet_features_hwio.npz"),
                      lpips_weights=str(w / "lpips/alex_v0.1.pth")))
      cfg.update(VARIANTS[variant])
      cfg.update(ONLY[term])
      frozen = frozen_nets.build_frozen_nets(cfg)

      @jax.jit
      def step(frozen, d):
        return jax.value_and_grad(
            lambda d: sapnet.total_loss(cfg, frozen, d, clean, rainy, epoch=100)[0])(d)

      t0 = time.perf_counter()
      jax.block_until_ready(step(frozen, derained))
      key = f"{term}/{variant}"
      result["compile_seconds"][key] = round(time.perf_counter() - t0, 2)
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(frozen, derained))
        times.append(time.perf_counter() - t0)
      result["seconds_per_step"][key] = round(statistics.median(times), 4)
  result["cpu"] = xla_options.cpu_description()
  print(json.dumps(result))


if __name__ == "__main__":
  main()
