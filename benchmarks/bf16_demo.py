"""The demo trained with bfloat16 compute against float32, same seeds and steps: one JSON file.

    python benchmarks/bf16_demo.py [--steps 300] [--dtypes float32,bfloat16] \
        [--out benchmarks/results/bf16_demo.json]

Runs configs/demo.py (model.seed 0, data.seed 0: the same initial weights and the same
batches for both) with config.model.dtype set to each dtype, for --steps steps (default 300,
not the demo's 500: on 2 shared cores both runs take about as long as one demo would;
the lr milestones are scaled by steps/500 so the schedule keeps its shape), and records the
held-out PSNR of each run twice: the run's own validation (the network evaluated in its
training dtype, what a user of that run sees) and the final checkpoint re-scored in float32
(what the trained weights are worth, without bfloat16 inference error). Passes when both
bfloat16 figures are within --tolerance-db (0.3) of float32's.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import demo  # noqa: E402
from sapnet_jax import infer  # noqa: E402
from sapnet_jax.evaluation import scoring  # noqa: E402
from sapnet_jax.runtime import xla_options  # noqa: E402
from sapnet_jax.training import loop  # noqa: E402
from sapnet_jax.utils import fileio  # noqa: E402
from sapnet_jax.weights import model_files  # noqa: E402


def run(dtype: str, steps: int, root: str, data_dir: str) -> dict:
  config = demo.get_config()
  config.model.dtype = dtype
  config.data.data_dir = data_dir  # both runs read the one built dataset
  config.train.num_steps = steps
  config.train.eval_every = steps
  config.train.save_every = steps
  config.train.log_every = min(config.train.log_every, steps)
  config.optim.milestones = tuple(m * steps / 500 for m in config.optim.milestones)
  workdir = os.path.join(root, dtype)
  t = time.perf_counter()
  result = loop.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - t
  ckpt = model_files.step_dir(fileio.join(workdir, "checkpoints"), steps)
  model = model_files.load_model(ckpt, dtype="float32")
  scored = scoring.evaluate_sets(infer.Derainer(model), config.eval,
                                    fileio.join(workdir, "eval_float32"), {"step": steps},
                                    data_dir, progress=False)
  return {"val_psnr_rgb": result["val"], "float32_psnr_rgb":
          next(iter(scored.values()))["means"]["psnr_rgb"], "train_s": seconds,
          "last_loss": result.get("total"), "seeds": {"model": config.seed,
                                                      "data": config.data.seed}}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--tolerance-db", type=float, default=0.3)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bf16_demo.json"))
  a = p.parse_args()
  out = {"command": "python benchmarks/bf16_demo.py " + " ".join(sys.argv[1:]),
         "steps": a.steps, "cpu": xla_options.cpu_description(), "runs": {}}
  with tempfile.TemporaryDirectory(prefix="bf16_demo_") as root:
    data_dir = os.path.join(root, "tfds")
    for dtype in a.dtypes.split(","):
      out["runs"][dtype] = run(dtype, a.steps, root, data_dir)
      print(dtype, json.dumps(out["runs"][dtype]), file=sys.stderr, flush=True)
  runs = out["runs"]
  if "float32" in runs and "bfloat16" in runs:
    out["diff_val_db"] = runs["bfloat16"]["val_psnr_rgb"] - runs["float32"]["val_psnr_rgb"]
    out["diff_float32_eval_db"] = (runs["bfloat16"]["float32_psnr_rgb"]
                                   - runs["float32"]["float32_psnr_rgb"])
    out["within_tolerance"] = bool(abs(out["diff_val_db"]) <= a.tolerance_db
                                   and abs(out["diff_float32_eval_db"]) <= a.tolerance_db)
  with fileio.atomic_write(a.out) as f:
    f.write(json.dumps(out, indent=1).encode())
  print(json.dumps(out))


if __name__ == "__main__":
  main()
