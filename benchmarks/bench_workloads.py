"""Inference workloads on the CPU under each XLA convolution setting (runtime/xla_options.py),
the probes that choose between them, and PNG encoding of a 12-megapixel result.

    python benchmarks/bench_workloads.py [--out benchmarks/results/workloads_cpu.json]

For each setting ("eigen", "default" = YNNPACK) a worker process (SAPNET_JAX_CPU_CONVS set)
times the shipped SAPNet's forward pass through `infer.Derainer.batch` on the shapes below
(fastest of 2 after a compile; random pixels: the work does not depend on them) and the probe
of each workload (`xla_options.measure`). The main process times `imageio.encode_image` at
zlib levels 1, 3 and 6 and JPEG quality 95 on a 4000x3000 image (a clean photo enlarged, so
it compresses like one). Seconds are this machine's, named in the JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bench_infer  # noqa: E402  (beside this file)

# (batch, height, width): auto's thumbnails, small images one by one and batched, a Rain100H
# image, a 512 tile, the tiles of a 4000x3000 photo de-rained at 1/2 (2000x1500) and whole.
SHAPES = [(20, 128, 128), (1, 128, 128), (4, 256, 256), (1, 256, 256), (1, 321, 481),
          (1, 512, 512), (1, 782, 710), (1, 782, 1032), (1, 1043, 1048)]


def worker() -> dict:
  from sapnet_jax import infer, pretrained
  from sapnet_jax.runtime import xla_options
  derainer = infer.Derainer(pretrained.load())
  forward = {}
  for shape in SHAPES:
    images = np.random.default_rng(0).random(shape + (3,), np.float32)
    run = lambda: np.asarray(derainer.batch(images))  # noqa: E731
    run()  # the compile
    forward["x".join(map(str, shape))] = min(bench_infer._timed(run) for _ in range(2))
  probes = {w: xla_options.measure(w) for w in xla_options.WORKLOADS if w != "train"}
  return {"forward_s": forward, "probe_s": probes}


def png_levels() -> dict:
  from PIL import Image

  import scale_bench
  from sapnet_jax.data import imageio
  with Image.open(os.path.join(scale_bench.POOL, scale_bench.pool_files()[3])) as im:
    big = np.asarray(im.convert("RGB").resize((4000, 3000), Image.LANCZOS))
  picture, out = Image.fromarray(big), {}
  settings = {"png level 1": ("PNG", {"compress_level": 1}),
              "png level 3": ("PNG", {"compress_level": 3}),
              "png level 6": ("PNG", {"compress_level": 6}),
              "jpeg quality 95": ("JPEG", {"quality": 95})}
  for label, (kind, options) in settings.items():
    buffer = io.BytesIO()
    seconds = bench_infer._timed(lambda: picture.save(buffer, format=kind, **options))
    out[label] = {"seconds": seconds, "megabytes": buffer.tell() / 1e6}
  out["encode_image (png)"] = {"seconds": bench_infer._timed(lambda: imageio.encode_image(big))}
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._worker:
    print(json.dumps(worker()))
    return
  from sapnet_jax.runtime import xla_options
  report = {"cpu": xla_options.cpu_description(),
            "command": "python benchmarks/bench_workloads.py " + " ".join(sys.argv[1:]),
            "settings": {}}
  for setting in xla_options.CHOICES:
    proc = subprocess.run([sys.executable, __file__, "--_worker"], check=True, text=True,
                          capture_output=True, cwd=ROOT,
                          env={**os.environ, xla_options.ENV: setting})
    report["settings"][setting] = json.loads(proc.stdout.strip().splitlines()[-1])
  report["encode_4000x3000"] = png_levels()
  text = json.dumps(report, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
