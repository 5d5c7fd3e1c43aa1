"""Input pipeline throughput: prints one JSON line.

    python benchmarks/bench_data.py [--manual_dir ../shared/data/rain100h] [--data_dir DIR]
                                    [--batches 60] [--workers 0,2] [--threads 2]

Builds (or reuses) a dataset in DATA_DIR (default: a temporary folder): rain100h from
--manual_dir when given (the Rain100H test pairs, 480x320 PNGs, stand in for RainTrainH, which
has the same image size), otherwise the shipped demo dataset. For each worker count it makes the
training iterator of configs/default.py (12 x 100 x 100, stride-80 patches, global shuffle) and
of random crops with flips, times the first batch (start-up, including spawning workers) and
then `--batches` batches, and reports batches/s. Compare with the time of one training step:
the pipeline is not the bottleneck while batches/s x step time > 1.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import default  # noqa: E402
from sapnet_jax.runtime import xla_options  # noqa: E402
from sapnet_jax.data import demo, pipeline, prepare  # noqa: E402


def run(cfg, batches: int) -> dict:
  start = time.perf_counter()
  it = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1)
  first = next(it)
  startup = time.perf_counter() - start
  assert first["rainy"].shape == (12, 100, 100, 3)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  if hasattr(it, "close"):
    it.close()
  return {"batches_per_s": batches / seconds, "ms_per_batch": 1000 * seconds / batches,
          "startup_s": startup}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--manual_dir", default=None)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--batches", type=int, default=60)
  parser.add_argument("--workers", default="0,2")
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_data_")
  start = time.perf_counter()
  if args.manual_dir:
    name, split = "rain100h", "test"
    prepare.build(name, data_dir, args.manual_dir)
  else:
    name, split = demo.build_demo(data_dir).name, "train"
  build_s = time.perf_counter() - start
  results = {}
  for workers in (int(w) for w in args.workers.split(",")):
    for mode in ("stride", "random"):
      cfg = default.get_config().data
      cfg.update(dict(dataset=name, train_split=split, data_dir=data_dir, worker_count=workers,
                      read_threads=args.threads, patch_mode=mode, flip_lr=mode == "random"))
      results[f"{mode}_workers{workers}"] = run(cfg, args.batches)
  print(json.dumps({
      "benchmark": "input pipeline, 12x100x100 batches", "dataset": f"{name}:{split}",
      "patches_per_epoch": pipeline.epoch_size(cfg), "build_or_reuse_s": build_s,
      "batches_timed": args.batches, "read_threads": args.threads, "results": results,
      "cpu": xla_options.cpu_description(), "python": platform.python_version()}))


if __name__ == "__main__":
  main()
