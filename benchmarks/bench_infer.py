"""Inference benchmark: prints one JSON line.

    python benchmarks/bench_infer.py [--size 512] [--repeats 5] [--torch] [--large]

For each forward form (Python loop / lax.scan over stages) and precision (float32 / bfloat16)
a fresh subprocess loads the shipped SAPNet weights, times the first call (jit compile + run)
and the median of `--repeats` further calls on a (1, size, size, 3) input, and reports its
peak RSS. `--torch` also times the official architecture in PyTorch (dev only: needs torch;
tests/fixtures/torch_reference.py) in one process with the JAX loop/float32 form, alternating
blocks of `--repeats` calls (PyTorch's OpenMP threads keep spinning for a while after each call,
which would slow a JAX call that follows at once). `--large` de-rains a 4000x3000 image with the
default tiling and reports its time and peak RSS.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _jax_forward(form: str, dtype: str, size: int, impl: str = "auto"):
  from sapnet_jax import infer, pretrained
  derainer = infer.Derainer(pretrained.load(scan=form == "scan", dtype=dtype), impl=impl)
  x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
  return lambda: derainer.batch(x).block_until_ready()


def run_variant(form: str, dtype: str, size: int, repeats: int, impl: str) -> dict:
  import jax
  from sapnet_jax.runtime import xla_options
  forward = _jax_forward(form, dtype, size, impl)
  first = _timed(forward)
  times = [_timed(forward) for _ in range(repeats)]
  return {"first_call_s": first, "median_s": float(np.median(times)),
          "compile_s_est": first - float(np.median(times)), "times_s": times,
          "peak_rss_mb": peak_rss_mb(),
          "compiler_options": xla_options.compiler_options(jax.devices()[0].platform, "infer_image")}


def run_torch_pair(size: int, repeats: int) -> dict:
  import torch
  sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
  import torch_reference
  from sapnet_jax import pretrained
  weights = os.path.join(ROOT, "..", "shared", "weights", "sapnet_official", "net_latest.pth")
  model = (torch_reference.load_official(weights, "sapnet") if os.path.exists(weights) else None)
  if model is None:  # no shared weights: same architecture, the shipped weights' values
    model = torch_reference.ProgressiveNet().eval()
  import jax
  dev = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  model = model.to(dev)
  x = torch.rand(1, 3, size, size, device=dev)

  def torch_forward():
    model(x)
    if dev == "cuda":
      torch.cuda.synchronize()

  jax_forward = _jax_forward("loop", "float32", size)
  jax_forward()
  jax_t, torch_t = [], []
  with torch.no_grad():
    torch_forward()
    for _ in range(2):
      time.sleep(2)
      jax_t += [_timed(jax_forward) for _ in range(repeats)]
      torch_t += [_timed(torch_forward) for _ in range(repeats)]
  return {"torch_version": torch.__version__, "torch_device": dev,
          "torch_threads": torch.get_num_threads(),
          "torch_median_s": float(np.median(torch_t)), "jax_median_s": float(np.median(jax_t)),
          "speedup": float(np.median(torch_t) / np.median(jax_t)),
          "torch_times_s": torch_t, "jax_times_s": jax_t}


def run_large(repeats: int) -> dict:
  from sapnet_jax import infer, pretrained
  derainer = infer.Derainer(pretrained.load())
  image = np.random.default_rng(0).random((3000, 4000, 3), dtype=np.float32)
  seconds = _timed(lambda: derainer(image))
  return {"shape": [3000, 4000], "tile": infer.DEFAULT_TILE, "overlap": infer.DEFAULT_OVERLAP,
          "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def subprocess_json(*args: str) -> dict:
  out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                       text=True, cwd=ROOT)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--torch", action="store_true")
  parser.add_argument("--large", action="store_true")
  parser.add_argument("--impl", default="auto", help="kernel set(s), comma-separated: reference, "
                      "cpu, gpu, auto (models/ops.py); --torch and --large use auto")
  parser.add_argument("--_variant", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._variant:
    kind, *rest = args._variant.split(",")
    if kind == "jax":
      result = run_variant(rest[0], rest[1], args.size, args.repeats, rest[2])
    elif kind == "torch":
      result = run_torch_pair(args.size, args.repeats)
    else:
      result = run_large(args.repeats)
    print(json.dumps(result))
    return
  import jax
  from sapnet_jax.runtime import xla_options
  report = {"benchmark": "infer", "size": args.size, "repeats": args.repeats,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "cpu": xla_options.cpu_description(), "machine": platform.machine(),
            "jax": jax.__version__, "variants": {}}
  common = ["--size", str(args.size), "--repeats", str(args.repeats)]
  for impl in args.impl.split(","):
    for form in ("loop", "scan"):
      for dtype in ("float32", "bfloat16"):
        report["variants"][f"{form}_{dtype}_{impl}"] = subprocess_json(
            *common, f"--_variant=jax,{form},{dtype},{impl}")
  if args.torch:
    report["torch_vs_jax_loop_float32"] = subprocess_json(*common, "--_variant=torch")
  if args.large:
    report["large_tiled"] = subprocess_json(*common, "--_variant=large")
  print(json.dumps(report))


if __name__ == "__main__":
  main()
