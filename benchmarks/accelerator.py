"""Accelerator readiness in one command: train-step speed, FLOPs and MFU, inference, data feeding.

    python benchmarks/accelerator.py [--quick] [--out FILE] [--budget-s 420] [--points ...]

Sized for at most 8 minutes on one GPU (the default --budget-s leaves a minute for start-up and
the last point). Writes FILE (default benchmarks/results/accelerator.json) and FILE with .md: a
markdown table of every point. Measured, in this order:

1. the matmul peak: a jitted jnp.dot of two N x N matrices per compute dtype, 2 N^3 FLOPs;
2. inference: SAPNet's forward at 512^2 (--quick: 64^2), batch 1 and 8, float32 and bfloat16;
3. the input pipeline (grain; benchmarks/bench_data.py's timing of the training iterator over
   the shipped demo dataset, 12 x 100^2 patches) at each --workers count;
4. the train step (sapnet_jax.training.train_step.Trainer, Adam, random init) over a plan of points
   loss:batch:patch:dtype:form:remat, in priority order (default_plan says why that order),
   until the time budget is spent; "full" is the paper's loss (-SSIM + PCL + LPIPS-Alex + seg,
   the seg term on from step 0), "ssim" -SSIM alone.

FLOPs are XLA's own count (`compiled.cost_analysis()["flops"]`) of the compiled program. XLA
counts a while loop's body once, so a scanned network's count holds about 2 of its 6 stages,
and remat adds the recomputed forward: MFU is computed from the model FLOPs, the count of the
loop form without remat at the same loss, batch, patch and dtype (compiled for counting alone
when that point was not run). MFU is given against the device's peak (PEAKS, sources cited;
float32 on a GPU runs its convolutions and matmuls as TF32 by JAX's default precision, so the
TF32 tensor-core peak is its ceiling) and against the measured matmul peak of the same dtype.

Every point runs in its own try block: an out-of-memory or other failure is recorded in that
point's row and the next point runs. Weight files for the full loss are read from ../shared
when present, else the frozen networks are random (the same cost; the JSON says which).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import bench_data  # noqa: E402
import bench_train  # noqa: E402
from configs import default  # noqa: E402
from sapnet_jax import models  # noqa: E402
from sapnet_jax.losses import objectives  # noqa: E402
from sapnet_jax.runtime import xla_options  # noqa: E402
from sapnet_jax.training import train_step  # noqa: E402
from sapnet_jax.utils import fileio  # noqa: E402

# Dense (no sparsity) peak TFLOP/s per chip. float32 on NVIDIA: the TF32 tensor-core figure
# (XLA's default precision runs float32 convolutions and dots as TF32 there). device_kind is
# matched by prefix, longest first.
_H100_SXM = "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM; datasheet lists 2x with sparsity)"
PEAKS = {
    "NVIDIA H100 PCIe": {"bfloat16": 756.0, "float32": 378.0,
                         "source": "https://www.nvidia.com/en-us/data-center/h100/ (H100 PCIe; "
                                   "datasheet lists 2x with sparsity)"},
    "NVIDIA H100": {"bfloat16": 989.5, "float32": 494.7, "source": _H100_SXM},
    "NVIDIA H200": {"bfloat16": 989.5, "float32": 494.7,
                    "source": "https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM; "
                              "datasheet lists 2x with sparsity)"},
    "NVIDIA A100": {"bfloat16": 312.0, "float32": 156.0,
                    "source": "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/"
                              "a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"},
    "TPU v4": {"bfloat16": 275.0, "source": "https://cloud.google.com/tpu/docs/v4"},
    "TPU v5 lite": {"bfloat16": 197.0, "source": "https://cloud.google.com/tpu/docs/v5e"},
    "TPU v5p": {"bfloat16": 459.0, "source": "https://cloud.google.com/tpu/docs/v5p"},
    "TPU v5": {"bfloat16": 459.0, "source": "https://cloud.google.com/tpu/docs/v5p"},
    "TPU v6 lite": {"bfloat16": 918.0, "source": "https://cloud.google.com/tpu/docs/v6e"},
}
SIZES = ((12, 100), (32, 128), (64, 256))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def peak_tflops(device_kind: str, dtype: str) -> tuple[float | None, str | None]:
  """The table's dense peak for this device and dtype, and its source; (None, None) if unknown
  (CPUs, other chips, float32 on a TPU)."""
  for name in sorted(PEAKS, key=len, reverse=True):
    if device_kind.startswith(name):
      return PEAKS[name].get(dtype), PEAKS[name]["source"]
  return None, None


def parse_point(text: str) -> dict:
  loss, batch, patch, dtype, form, remat = text.split(":")
  if loss not in ("ssim", "full") or form not in ("loop", "scan") or remat not in ("0", "1"):
    raise ValueError(f"--points: {text!r} is not loss(ssim|full):batch:patch:dtype:"
                     "form(loop|scan):remat(0|1)")
  return {"loss": loss, "batch": int(batch), "patch": int(patch), "dtype": dtype, "form": form,
          "remat": remat == "1"}


def default_plan(quick: bool) -> list[str]:
  """Train points, most informative first, so that a budget cut drops the least useful.

  The -SSIM loop at each size in both dtypes first (12 x 100^2 is the paper's, and the earlier
  H100 figure: 0.041 s/step); then what scan and remat change at the largest size in bfloat16
  (and remat at float32, which may be the only way the largest float32 batch fits); the paper's
  full loss last (its frozen VGG/AlexNet/ResNet-101 take longer to compile).
  """
  if quick:  # each code path once: bfloat16, scan and remat (counted by its loop form), full
    return ["ssim:2:32:float32:loop:0", "ssim:2:32:bfloat16:scan:1", "full:2:32:float32:loop:0"]
  plan = [f"ssim:{b}:{p}:{d}:loop:0" for b, p in SIZES for d in ("float32", "bfloat16")]
  b, p = SIZES[-1]
  plan += [f"ssim:{b}:{p}:bfloat16:loop:1", f"ssim:{b}:{p}:bfloat16:scan:0",
           f"ssim:{b}:{p}:bfloat16:scan:1", f"ssim:{b}:{p}:float32:loop:1"]
  plan += ["full:12:100:float32:loop:0", "full:12:100:bfloat16:loop:0",
           f"full:{b}:{p}:bfloat16:loop:0"]
  return plan


def _config(point: dict, quick: bool):
  config = default.get_config()
  if quick:  # a slim SAPNet (same layer types) so that the CPU test compiles in seconds
    config.model.update(dict(channels=8, stages=2, reduction=4, num_blocks=2))
  config.model.update(dict(dtype=point["dtype"], scan=point["form"] == "scan",
                           remat=point["remat"]))
  if point["loss"] == "ssim":
    config.loss.update(contrast="none", lpips_weight=0.0, seg_weight=0.0)
  else:
    config.loss.update(seg_start_epoch=0.0, perceptual_dtype=point["dtype"])
    if quick:  # PCL and LPIPS at the patch size, no seg ResNet: compiled in seconds on a CPU
      config.loss.update(seg_weight=0.0, lpips_size=None)
    if quick:  # a device machine has no ../shared: --quick runs its random-nets path in CI
      return config
    config.loss.update({k: v for k, v in bench_train.frozen_weight_files().items()
                        if os.path.exists(v)})
  return config


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return float(cost["flops"])


def _compiled_step(point: dict, quick: bool, platform: str):
  config = _config(point, quick)
  cfg = models.resolve_impl(models.config_from_dict(config.model.to_dict()), platform)
  graphdef, params = nnx.split(models.build(cfg, nnx.Rngs(0)))
  loss_fn, frozen = objectives.build(config, random_missing=True)
  trainer = train_step.Trainer(graphdef, config.optim, loss_fn, steps_per_epoch=1000)
  state = trainer.init_state(nnx.to_pure_dict(params))
  batch = trainer.global_batch(bench_train._batch(point["batch"], point["patch"]))
  compiled = trainer.jitted(state, batch, frozen).lower(state, batch, frozen).compile()
  notes = [f"random {k}" for k in ("vgg_weights", "alexnet_weights", "lpips_weights")
           if point["loss"] == "full" and not config.loss[k]]  # the seg encoder always is
  return compiled, state, batch, frozen, cfg.impl, notes


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
  times = [bench_train._timed(fn) for _ in range(repeats)]
  return float(np.median(times)), times


class Bench:
  """The run: its budget, the device, the model-FLOP cache, and the guarded points."""

  def __init__(self, quick: bool, budget_s: float, repeats: int):
    self.quick, self.budget_s, self.repeats = quick, budget_s, repeats
    self.start = time.monotonic()
    self.device = jax.devices()[0]
    self.kind, self.platform = self.device.device_kind, self.device.platform
    self.model_flops: dict[tuple, float] = {}
    self.matmul: dict[str, dict] = {}

  def left_s(self) -> float:
    return self.budget_s - (time.monotonic() - self.start)

  def guarded(self, what: dict, fn) -> dict:
    """`fn()`'s result merged into `what`, or the failure recorded there; never raises."""
    if self.left_s() <= 0:
      return {**what, "skipped": "time budget spent"}
    t = time.monotonic()
    try:
      out = {**what, **fn()}
    except Exception as e:  # noqa: BLE001 - one point's failure (e.g. OOM) must not end the run
      text = f"{type(e).__name__}: {e}"
      out = {**what, "error": text[:400],
             "oom": "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()}
      traceback.print_exc(limit=2, file=sys.stderr)
    out["wall_s"] = time.monotonic() - t
    jax.clear_caches()  # compiled programs of finished points hold device memory
    gc.collect()
    print(json.dumps(out, default=float), file=sys.stderr, flush=True)  # progress
    return out

  def matmul_peak(self, dtype: str) -> dict:
    n = 512 if self.quick else (8192 if self.platform != "cpu" else 2048)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=dtype))
    dot(a, b).block_until_ready()
    med, _ = _median_time(lambda: dot(a, b).block_until_ready(), max(self.repeats, 3))
    out = {"n": n, "median_s": med, "tflops": 2 * n**3 / med / 1e12}
    self.matmul[dtype] = out
    return out

  def _mfu(self, flops: float, seconds: float, dtype: str) -> dict:
    achieved = flops / seconds / 1e12
    peak, source = peak_tflops(self.kind, dtype)
    measured = self.matmul.get(dtype, {}).get("tflops")
    return {"tflops": achieved, "peak_tflops": peak, "peak_source": source,
            "mfu_peak": achieved / peak if peak else None,
            "mfu_matmul": achieved / measured if measured else None}

  def train_point(self, point: dict) -> dict:
    compiled, state, batch, frozen, impl, notes = _compiled_step(point, self.quick, self.platform)
    xla_flops = _flops(compiled)
    key = (point["loss"], point["batch"], point["patch"], point["dtype"])
    if point["form"] == "loop" and not point["remat"]:
      self.model_flops[key] = xla_flops
    holder = [state]

    def step():
      holder[0], m = compiled(holder[0], batch, frozen)
      m["total"].block_until_ready()
    step()  # first run: transfers and autotuning outside the timing
    med, times = _median_time(step, self.repeats)
    if key not in self.model_flops:  # count the loop form without remat, without running it
      counted = dict(point, form="loop", remat=False)
      self.model_flops[key] = _flops(_compiled_step(counted, self.quick, self.platform)[0])
    out = {"impl": impl, "median_s": med, "times_s": times,
           "images_per_s": point["batch"] / med, "xla_flops": xla_flops,
           "model_flops": self.model_flops[key],
           **self._mfu(self.model_flops[key], med, point["dtype"]), "notes": notes}
    stats = self.device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      out["peak_device_gib"] = stats["peak_bytes_in_use"] / 2**30
    return out

  def infer_point(self, batch: int, side: int, dtype: str) -> dict:
    config = _config({"loss": "ssim", "dtype": dtype, "form": "loop", "remat": False}, self.quick)
    cfg = models.resolve_impl(models.config_from_dict(config.model.to_dict()), self.platform)
    graphdef, state = nnx.split(models.build(cfg, nnx.Rngs(0)))
    images = jnp.asarray(np.random.default_rng(0).random((batch, side, side, 3), np.float32))
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    compiled = fwd.lower(state, images).compile()
    compiled(state, images).block_until_ready()
    med, times = _median_time(lambda: compiled(state, images).block_until_ready(), self.repeats)
    flops = _flops(compiled)
    return {"impl": cfg.impl, "median_s": med, "times_s": times, "images_per_s": batch / med,
            "xla_flops": flops, **self._mfu(flops, med, dtype)}


def data_point(workers: int, batches: int, data_dir: str) -> dict:
  from sapnet_jax.data import demo  # deferred: TFDS only for this part
  spec = demo.build_demo(data_dir)
  cfg = default.get_config().data
  cfg.update(dict(dataset=spec.name, train_split="train", data_dir=data_dir,
                  worker_count=workers, patch_mode="random", flip_lr=True))
  out = bench_data.run(cfg, batches)
  return {**out, "images_per_s": out["batches_per_s"] * cfg.global_batch_size,
          "patch": cfg.patch_size}


def feeding(train_rows: list[dict], data_rows: list[dict]) -> dict:
  """Whether the fastest pipeline keeps up with the fastest measured step, compared in pixels
  per second (the pipeline's cost is per pixel: crops, flips, float conversion)."""
  steps = [r for r in train_rows if "images_per_s" in r]
  feeds = [r for r in data_rows if "images_per_s" in r]
  if not steps or not feeds:
    return {"verdict": "not measured"}
  step = max(steps, key=lambda r: r["images_per_s"] * r["patch"] ** 2)
  feed = max(feeds, key=lambda r: r["images_per_s"])
  need = step["images_per_s"] * step["patch"] ** 2
  have = feed["images_per_s"] * feed["patch"] ** 2
  return {"step_pixels_per_s": need, "pipeline_pixels_per_s": have, "ratio": have / need,
          "fastest_step": {k: step[k] for k in ("loss", "batch", "patch", "dtype", "form", "remat")},
          "pipeline_workers": feed["workers"], "starves": have < need,
          "verdict": (f"data would starve the device: the pipeline gives {have / need:.2f}x the "
                      "pixels the fastest step consumes") if have < need else
                     f"data keeps up: {have / need:.1f}x the pixels the fastest step consumes"}


def _fmt(v, spec=".3g") -> str:
  return "-" if v is None else format(v, spec)


def markdown(result: dict) -> str:
  lines = [f"Device: {result['device_kind']} ({result['platform']}), JAX {result['jax']}; "
           f"CPU: {result['cpu']['model']}, {result['cpu']['cores']} cores. "
           f"Command: `{result['command']}`.", "",
           "| matmul dtype | N | s | TFLOP/s |", "|---|---|---|---|"]
  for dtype, r in result["matmul"].items():
    lines.append(f"| {dtype} | {r.get('n', '-')} | {_fmt(r.get('median_s'))} | "
                 f"{_fmt(r.get('tflops'))} |" if "tflops" in r else
                 f"| {dtype} | - | - | {r.get('error') or r.get('skipped')} |")
  lines += ["", "| loss | batch x patch² | dtype | form | remat | s/step | images/s | "
            "GFLOP/step (XLA; model) | TFLOP/s | MFU peak | MFU matmul | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["train"]:
    head = (f"| {r['loss']} | {r['batch']} x {r['patch']}² | {r['dtype']} | {r['form']} | "
            f"{'on' if r['remat'] else 'off'} |")
    if "median_s" in r:
      lines.append(f"{head} {r['median_s']:.4g} | {r['images_per_s']:.3g} | "
                   f"{r['xla_flops'] / 1e9:.4g}; {r['model_flops'] / 1e9:.4g} | "
                   f"{_fmt(r['tflops'])} | {_fmt(r['mfu_peak'], '.2%')} | "
                   f"{_fmt(r['mfu_matmul'], '.1%')} | {'random frozen nets' if r['notes'] else ''} |")
    else:
      why = "OOM" if r.get("oom") else (r.get("error") or r.get("skipped", ""))[:80]
      lines.append(f"{head} - | - | - | - | - | - | {why} |")
  lines += ["", "| inference | batch x side² | dtype | s | images/s | TFLOP/s | MFU peak | "
            "MFU matmul |", "|---|---|---|---|---|---|---|---|"]
  for r in result["inference"]:
    if "median_s" in r:
      lines.append(f"| SAPNet | {r['batch']} x {r['side']}² | {r['dtype']} | {r['median_s']:.4g} | "
                   f"{r['images_per_s']:.3g} | {_fmt(r['tflops'])} | {_fmt(r['mfu_peak'], '.2%')} "
                   f"| {_fmt(r['mfu_matmul'], '.1%')} |")
    else:
      lines.append(f"| SAPNet | {r['batch']} x {r['side']}² | {r['dtype']} | - | "
                   f"{'OOM' if r.get('oom') else (r.get('error') or r.get('skipped'))[:80]} | | | |")
  lines += ["", "| input pipeline workers | batches/s | images/s (100²) | start-up s |",
            "|---|---|---|---|"]
  for r in result["data"]:
    lines.append(f"| {r['workers']} | {_fmt(r.get('batches_per_s'))} | "
                 f"{_fmt(r.get('images_per_s'))} | {_fmt(r.get('startup_s'))} |"
                 if "batches_per_s" in r else
                 f"| {r['workers']} | {(r.get('error') or r.get('skipped'))[:80]} | | |")
  lines += ["", f"Feeding: {result['feeding']['verdict']}.", ""]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="tiny sizes and a slim SAPNet (CI on a CPU)")
  p.add_argument("--out", default=os.path.join(RESULTS, "accelerator.json"),
                 help="JSON file; the markdown table goes beside it with .md")
  p.add_argument("--budget-s", type=float, default=None,
                 help="stop starting points after this many seconds (default 420; --quick 600)")
  p.add_argument("--repeats", type=int, default=None, help="timed steps per point (5; quick 2)")
  p.add_argument("--points", default=None,
                 help="comma-separated train points loss:batch:patch:dtype:form:remat "
                 "(default: default_plan)")
  p.add_argument("--infer", default=None,
                 help="comma-separated batch:side:dtype (default 1:512 and 8:512 in both dtypes)")
  p.add_argument("--workers", default=None, help="grain worker counts (default 0,4; quick 0)")
  p.add_argument("--data-batches", type=int, default=None, help="batches timed (60; quick 5)")
  a = p.parse_args(argv)
  quick = a.quick
  budget = a.budget_s if a.budget_s is not None else (600.0 if quick else 420.0)
  bench = Bench(quick, budget, a.repeats or (2 if quick else 5))
  points = [parse_point(t) for t in (a.points.split(",") if a.points else default_plan(quick))]
  side = 64 if quick else 512
  infer = ([tuple(t.split(":")) for t in a.infer.split(",")] if a.infer else
           [(1, side, "float32"), (2, side, "bfloat16")] if quick else
           [(b, side, d) for d in ("float32", "bfloat16") for b in (1, 8)])
  workers = [int(w) for w in (a.workers or ("0" if quick else "0,4")).split(",")]
  result = {"command": "python benchmarks/accelerator.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "device_kind": bench.kind, "platform": bench.platform,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "cpu": xla_options.cpu_description(), "budget_s": budget, "quick": quick,
            "model": "slim SAPNet (8 channels, 2 stages, 2 blocks)" if quick else "SAPNet",
            "matmul": {}, "inference": [], "data": [], "train": []}
  for dtype in ("float32", "bfloat16"):
    result["matmul"][dtype] = bench.guarded({}, lambda d=dtype: bench.matmul_peak(d))
  for b, s, d in infer:
    result["inference"].append(bench.guarded(
        {"batch": int(b), "side": int(s), "dtype": d},
        lambda b=b, s=s, d=d: bench.infer_point(int(b), int(s), d)))
  with tempfile.TemporaryDirectory(prefix="accel_data_") as data_dir:
    for w in workers:
      result["data"].append(bench.guarded(
          {"workers": w}, lambda w=w: data_point(w, a.data_batches or (5 if quick else 60),
                                                 data_dir)))
  for point in points:
    result["train"].append(bench.guarded(point, lambda pt=point: bench.train_point(pt)))
  result["feeding"] = feeding(result["train"], result["data"])
  result["total_s"] = time.monotonic() - bench.start
  fileio.makedirs(os.path.dirname(os.path.abspath(a.out)))
  for path, text in ((a.out, json.dumps(result, indent=1, default=float)),
                     (os.path.splitext(a.out)[0] + ".md", markdown(result))):
    with fileio.atomic_write(path) as f:
      f.write(text.encode())
  print(markdown(result))
  return result


if __name__ == "__main__":
  main()
