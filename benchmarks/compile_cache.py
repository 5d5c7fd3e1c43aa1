"""What the persistent compilation cache saves `python -m sapnet_jax.derain`: writes JSON.

    python benchmarks/compile_cache.py [--repeats 3] [--out benchmarks/results/compile_cache.json]

Each run is a fresh `python -m sapnet_jax.derain` subprocess with the shipped SAPNet weights
on one image: examples/rain-064.jpg (481x321, one whole-image program) and the same photo
resized to 1024x768 (six 512-pixel tiles with the default tiling). Per size and repeat, three
runs: `off` (--no-compile-cache), `cold` (an empty cache folder) and `warm` (the folder the
cold run just filled). The order of `off` and the cold/warm pair alternates between repeats,
since other jobs may share the cores. Reported per run: the wall time of the process and the
time from its start to its output file being written (the output's mtime; the model load,
compile and first call are all before it), the process's CPU time (user + system: less
sensitive than wall time to other jobs on the cores), the seconds JAX spent in its XLA
compilations (JAX_LOG_COMPILES: "Finished XLA compilation of ... in S sec", summed over the
programs; a cache hit's is the time to load it) and, after a cold run, the cache's size.
All runs share one $SAPNET_JAX_CACHE, filled by a first unmeasured run: it holds the measured
choice of XLA:CPU convolution kernels (sapnet_jax/runtime/xla_options.py), which a fresh one would
measure again (seconds) and might choose differently; each cold cache is a new --compile-cache
folder.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "rain-064.jpg")


def _run(image: str, out: str, cache: str | None, env: dict) -> dict:
  flags = ["--no-compile-cache"] if cache is None else ["--compile-cache", cache]
  shutil.rmtree(out, ignore_errors=True)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.time()
  proc = subprocess.run([sys.executable, "-m", "sapnet_jax.derain", image, "--out", out, *flags],
                        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  wall = time.time() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode != 0:
    raise RuntimeError(f"derain failed on {image}:\n{proc.stderr}")
  written = os.path.join(out, os.path.splitext(os.path.basename(image))[0] + ".png")
  compiles = [float(t) for t in re.findall(r"Finished XLA compilation of .* in ([\d.e-]+) sec",
                                           proc.stderr)]
  cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
  return {"wall_s": round(wall, 2), "first_image_s": round(os.stat(written).st_mtime - start, 2),
          "cpu_s": round(cpu, 2), "compile_s": round(sum(compiles), 2),
          "programs": len(compiles)}


def _cache_size(folder: str) -> dict:
  names = os.listdir(folder)
  return {"files": len(names),
          "mb": round(sum(os.path.getsize(os.path.join(folder, n)) for n in names) / 2**20, 2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "compile_cache.json"))
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="compile_cache_bench_")
  large = os.path.join(work, "rain-1024x768.png")
  Image.open(EXAMPLE).convert("RGB").resize((1024, 768), Image.BICUBIC).save(large)
  images = {"481x321": EXAMPLE, "1024x768 (6 tiles)": large}
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["SAPNET_JAX_CACHE"] = os.path.join(work, "sapnet_cache")
  env["JAX_LOG_COMPILES"] = "1"
  _run(EXAMPLE, os.path.join(work, "out"), None, env)  # measures the convolution kernels once
  with open(os.path.join(env["SAPNET_JAX_CACHE"], "xla_cpu_convs.json")) as f:
    convs = json.load(f)
  runs = {size: {"off": [], "cold": [], "warm": [], "cache": []} for size in images}
  for r in range(args.repeats):
    for size, image in images.items():
      cache = os.path.join(work, f"cache-{r}-{len(runs[size]['cold'])}-{size[:4]}")
      out = os.path.join(work, "out")
      order = ("off", "pair") if r % 2 == 0 else ("pair", "off")
      for step in order:
        if step == "off":
          runs[size]["off"].append(_run(image, out, None, env))
        else:
          runs[size]["cold"].append(_run(image, out, cache, env))
          runs[size]["cache"].append(_cache_size(cache))
          runs[size]["warm"].append(_run(image, out, cache, env))
      print(size, {k: v[-1] for k, v in runs[size].items()}, file=sys.stderr, flush=True)
  summary = {size: {mode: {key: statistics.median(run[key] for run in r[mode])
                           for key in ("wall_s", "first_image_s", "cpu_s", "compile_s")}
                    for mode in ("off", "cold", "warm")} for size, r in runs.items()}
  result = {"command": "python benchmarks/compile_cache.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "xla_cpu_convs": convs,
            "median": summary, "runs": runs}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, args.out)
  shutil.rmtree(work, ignore_errors=True)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
