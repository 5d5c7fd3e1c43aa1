"""Fine-tuning control (dev only, needs torch): the official PyTorch SAPNet fine-tuned like
configs/finetune.py, to tell a bug of ours from what the data does to the released weights.

    python benchmarks/finetune_control.py [--config configs/finetune.py[:cpu]] [--lr 1e-6 ...]
        [--steps 300] [--eval-every 100] [--rainy DIR --clean DIR]

Batches come from our pipeline (the config's dataset, seed and patch settings); the model is
tests/fixtures/torch_reference.py with ../shared/weights/sapnet_official/net_latest.pth, the
loss the official -SSIM (tests/fixtures/make_train_fixtures.official_ssim), the optimiser
torch.optim.Adam. Rain100H PSNR (RGB, outputs clamped and rounded to uint8, as our evaluate
with quantize=round) at step 0 and every --eval-every steps; prints one JSON line per lr.
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")


def _psnr_set(model, samples, torch, dev) -> float:
  """Mean psnr_rgb of the outputs rounded to 8 bits, as `evaluate` scores them."""
  from sapnet_jax.evaluation import scoring
  from sapnet_jax.metrics import full_reference
  scores = []
  with torch.no_grad():
    for sample in samples:
      x = torch.from_numpy(sample.rainy.transpose(2, 0, 1)[None].copy()).to(dev)
      out = model(x)[0][0].cpu().numpy().transpose(1, 2, 0)
      scores.append(float(full_reference.psnr(scoring.quantize(out, "round"), sample.clean)))
  return float(np.mean(scores))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/finetune.py")
  p.add_argument("--lr", type=float, nargs="+", default=[1e-6, 1e-5])
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--eval-every", type=int, default=100)
  p.add_argument("--rainy", default=os.path.join(SHARED, "data", "rain100h", "rainy"))
  p.add_argument("--clean", default=os.path.join(SHARED, "data", "rain100h", "clean"))
  a = p.parse_args()
  import torch
  sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "fixtures")]
  import make_train_fixtures
  import torch_reference
  from ml_collections import config_flags  # noqa: F401  (config files import ml_collections)
  import importlib.util
  path, _, variant = a.config.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(*([variant] if variant else []))
  from sapnet_jax.training import loop
  from sapnet_jax.data import pipeline
  loop._prepare_datasets(config.data)
  from sapnet_jax.evaluation import scoring
  from sapnet_jax.runtime import xla_options
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  loaders, problems = scoring.folder_samples(a.rainy, a.clean)
  scoring.check_problems(problems, skip_bad=False)
  pairs = [load() for load in loaders]
  weights = os.path.join(SHARED, "weights", "sapnet_official", "net_latest.pth")
  for lr in a.lr:
    model = torch_reference.load_official(weights, "sapnet").to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = pipeline.make_train_iterator(config.data, seed=config.data.seed)
    curve = {0: _psnr_set(model.eval(), pairs, torch, dev)}
    for step in range(1, a.steps + 1):
      b = next(batches)
      rainy, clean = (torch.from_numpy(np.asarray(b[k]).transpose(0, 3, 1, 2).copy()).to(dev)
                      for k in ("rainy", "clean"))
      model.train()
      out, _ = model(rainy)
      loss = -make_train_fixtures.official_ssim(out, clean)
      opt.zero_grad()
      loss.backward()
      opt.step()
      if step % a.eval_every == 0:
        curve[step] = _psnr_set(model.eval(), pairs, torch, dev)
    print(json.dumps({"lr": lr, "images": len(pairs), "device": dev,
                      "cpu": xla_options.cpu_description(), "psnr_rgb": curve}), flush=True)


if __name__ == "__main__":
  main()
