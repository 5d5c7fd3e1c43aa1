"""Training-step benchmark: prints one JSON line.

    python benchmarks/bench_train.py [--batch 12] [--patch 100] [--repeats 3] [--torch] [--full]

Each variant runs in a fresh subprocess: SAPNet (official weights) and Adam, one jitted train
step (sapnet_jax.training.loop.Trainer) on a fixed batch of `batch` x patch x patch, first call
(compile + run) and the median of `--repeats` further steps, and the process's peak RSS.
Variants: the -SSIM loss with a Python loop or lax.scan over stages, each with a kernel set
(model.impl: reference, cpu, gpu or auto; models/ops.py); `--full` adds the paper's full loss
(-SSIM + PCL + LPIPS-Alex + seg; VGG/AlexNet/LPIPS weights from ../shared, seg encoder random).
`--torch` times the official PyTorch code's step (-SSIM, Adam; dev only, needs torch and
tests/fixtures/torch_reference.py) and the JAX loop variant of `--torch-impl` in alternating
worker processes, one alive at a time (run_torch_pair says why), so that both see the same
machine in the same run (on a GPU machine both run on the GPU). A `:bfloat16` suffix
on a variant computes in bfloat16 with float32 parameters. On CPU the JAX workers keep XLA's
step memory mapped as `python -m sapnet_jax.main` does (sapnet_jax/runtime/cpu_memory.py), unless
`--no-reuse-memory`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _batch(n: int, patch: int) -> dict:
  rng = np.random.default_rng(0)
  clean = rng.random((n, patch, patch, 3), np.float32)
  return {"clean": clean, "rainy": np.clip(clean + 0.2 * rng.random(clean.shape, np.float32), 0, 1)}


def frozen_weight_files() -> dict[str, str]:
  """config.loss fields of the frozen nets' files in ../shared/weights (the project's layout)."""
  w = os.path.join(SHARED, "weights")
  return {"vgg_weights": os.path.join(w, "vgg16_imagenet", "vgg16_features_hwio.npz"),
          "alexnet_weights": os.path.join(w, "alexnet_imagenet", "alexnet_features_hwio.npz"),
          "lpips_weights": os.path.join(w, "lpips", "alex_v0.1.pth")}


def _jax_step(loss: str, form: str, impl: str, n: int, patch: int, dtype: str = "float32"):
  sys.path.insert(0, ROOT)
  from flax import nnx
  from configs import default
  from sapnet_jax import pretrained
  from sapnet_jax.losses import objectives
  from sapnet_jax.training import train_step
  config = default.get_config()
  config.model.scan = form == "scan"
  model = pretrained.load(scan=form == "scan", impl=impl, dtype=dtype)
  if loss == "ssim":
    config.loss.update(contrast="none", lpips_weight=0.0, seg_weight=0.0)
  else:
    config.loss.update(frozen_weight_files(), seg_start_epoch=0)
  loss_fn, frozen = objectives.build(config)
  graphdef, params = nnx.split(model)
  trainer = train_step.Trainer(graphdef, config.optim, loss_fn, steps_per_epoch=1000)
  state = [trainer.init_state(nnx.to_pure_dict(params))]
  batch = trainer.global_batch(_batch(n, patch))

  def step():
    state[0], m = trainer(state[0], batch, frozen)
    m["total"].block_until_ready()
  return step, model.cfg.impl


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def run_variant(loss: str, form: str, impl: str, n: int, patch: int, repeats: int,
                dtype: str = "float32", reuse_memory: bool = True) -> dict:
  import jax
  sys.path.insert(0, ROOT)
  from sapnet_jax.runtime import cpu_memory, xla_options
  # What `python -m sapnet_jax.main` does (its --reuse_cpu_memory flag), before JAX starts.
  reused = reuse_memory and cpu_memory.reuse_step_memory()[0]
  step, resolved = _jax_step(loss, form, impl, n, patch, dtype)
  first = _timed(step)
  times = [_timed(step) for _ in range(repeats)]
  out = {"first_call_s": first, "median_s": float(np.median(times)), "times_s": times,
         "peak_rss_mb": peak_rss_mb(), "device": jax.devices()[0].device_kind,
         "reused_cpu_memory": bool(reused), "impl": resolved,
         "compiler_options": xla_options.compiler_options(jax.devices()[0].platform, "train")}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
  return out


def _torch_step(n: int, patch: int):
  import torch
  sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
  import make_train_fixtures
  import torch_reference
  torch.set_num_threads(os.cpu_count() or 1)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  model = torch_reference.load_official(
      os.path.join(SHARED, "weights", "sapnet_official", "net_latest.pth"), "sapnet").to(dev)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  b = _batch(n, patch)
  rainy, clean = (torch.from_numpy(b[k].transpose(0, 3, 1, 2).copy()).to(dev)
                  for k in ("rainy", "clean"))

  def step():
    out, _ = model(rainy)
    loss = -make_train_fixtures.official_ssim(out, clean)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if dev == "cuda":
      torch.cuda.synchronize()
  return step


def run_torch(n: int, patch: int, repeats: int) -> dict:
  """The official PyTorch step: one warm-up, then `repeats` timed steps."""
  import torch
  step = _torch_step(n, patch)
  step()
  return {"times_s": [_timed(step) for _ in range(repeats)], "peak_rss_mb": peak_rss_mb(),
          "device": "cuda" if torch.cuda.is_available() else "cpu"}


def run_torch_pair(impl: str, n: int, patch: int, repeats: int, rounds: int = 2,
                   reuse_memory: bool = True) -> dict:
  """The official PyTorch step and the JAX loop step of `impl`, in alternating worker processes
  (torch, JAX, torch, JAX, ...; `repeats` steps each), one alive at a time: in one process, or
  with an idle PyTorch process beside it, JAX's step measured 30-50% slower."""
  times, rss, devices = {"torch": [], "jax": []}, {}, {}
  for _ in range(rounds):
    jax_flags = ["--only", f"ssim:loop:{impl}"] + ([] if reuse_memory else ["--no-reuse-memory"])
    for name, flags in (("torch", ["--torch-worker"]), ("jax", jax_flags)):
      r = subprocess.run([sys.executable, __file__, "--batch", str(n), "--patch", str(patch),
                          "--repeats", str(repeats), *flags],
                         capture_output=True, text=True)
      if r.returncode:
        raise RuntimeError(f"the {name} worker failed: {r.stderr.strip().splitlines()[-1:]}")
      out = json.loads(r.stdout.strip().splitlines()[-1])
      times[name] += out["times_s"]
      rss[name], devices[name] = max(rss.get(name, 0.0), out["peak_rss_mb"]), out["device"]
  med = {k: float(np.median(v)) for k, v in times.items()}
  return {"torch_median_s": med["torch"], "jax_median_s": med["jax"], "torch_times_s": times["torch"],
          "jax_times_s": times["jax"], "jax_over_torch": med["jax"] / med["torch"],
          "torch_peak_rss_mb": rss["torch"], "jax_peak_rss_mb": rss["jax"], "devices": devices}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=12)
  p.add_argument("--patch", type=int, default=100)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--torch", action="store_true")
  p.add_argument("--full", action="store_true")
  p.add_argument("--variants", default="ssim:loop:auto,ssim:loop:reference,ssim:scan:auto",
                 help="comma-separated loss:form:impl[:dtype] (loss ssim|full, form loop|scan, "
                 "impl reference|cpu|gpu|auto, dtype float32 (default)|bfloat16)")
  p.add_argument("--torch-impl", default="auto", choices=("reference", "cpu", "gpu", "auto"),
                 help="the JAX variant that --torch alternates with (loop, this impl)")
  p.add_argument("--only", help="internal: run one variant, loss:form:impl[:dtype]")
  p.add_argument("--torch-worker", action="store_true", help="internal: time the PyTorch step")
  p.add_argument("--rounds", type=int, default=2, help="--torch: alternations of the two workers")
  p.add_argument("--no-reuse-memory", action="store_true",
                 help="JAX variants without sapnet_jax.runtime.cpu_memory.reuse_step_memory()")
  a = p.parse_args()
  if a.only:
    loss, form, impl, *dtype = a.only.split(":")
    print(json.dumps(run_variant(loss, form, impl, a.batch, a.patch, a.repeats, *dtype,
                                 reuse_memory=not a.no_reuse_memory)))
    return
  if a.torch_worker:
    print(json.dumps(run_torch(a.batch, a.patch, a.repeats)))
    return
  variants = [v for v in a.variants.split(",") if v]
  if a.full:
    variants.append("full:loop:auto")
  sys.path.insert(0, ROOT)
  from sapnet_jax.runtime import xla_options
  out = {"batch": a.batch, "patch": a.patch, "cpu": xla_options.cpu_description(),
         "variants": {}}

  def sub(*flags):
    r = subprocess.run([sys.executable, __file__, "--batch", str(a.batch), "--patch", str(a.patch),
                        "--repeats", str(a.repeats), *flags,
                        *(["--no-reuse-memory"] if a.no_reuse_memory else [])],
                       capture_output=True, text=True)
    if r.returncode:
      return {"error": r.stderr.strip().splitlines()[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])

  for v in variants:
    out["variants"][v] = sub("--only", v)
    print(v, json.dumps(out["variants"][v]), file=sys.stderr, flush=True)  # progress
  if a.torch:
    out[f"torch_vs_jax_loop_{a.torch_impl}"] = run_torch_pair(a.torch_impl, a.batch, a.patch,
                                                              a.repeats, a.rounds,
                                                              not a.no_reuse_memory)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
