"""The CPU demos over several seeds: wall time, held-out synthetic PSNR, NIQE/BRISQUE on real rain.

    python benchmarks/demo_seeds.py --workdir W --seeds 0,1,2 \
        [--configs msnet_semi:demo,msnet_supervised:demo,demo] [--real ../shared/data/real_rainy]

Each (config, seed) is one `python -m sapnet_jax.main` run in W/<config>/seed_<S> with
`--config.seed=S --config.data.seed=S` (weights and batch order), timed from the outside with
its peak RSS (GNU time). A run whose last validation report exists is not run again. Then
`sapnet_jax.compare` scores every run's final weights (the checkpoint's params: the EMA when on),
the shipped SAPNet and the rainy input on the real photos (NIQE, BRISQUE; no ground truth).
Writes W/demo_seeds.json: every run's figures and, per config, mean, standard deviation, min
and max over seeds; prints a markdown table. Runs one process at a time: time them on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from sapnet_jax.experiments import runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL_SET = "synthetic_val"
REAL_KEYS = ("niqe", "brisque")


def _label(config: str) -> str:
  return config.replace(":", "_")


def _val(workdir: str, step: int) -> dict:
  with open(os.path.join(workdir, "eval", f"step_{step}", VAL_SET, "metrics.json")) as f:
    return json.load(f)


def run(config: str, seed: int, workdir: str, extra: list[str]) -> dict:
  """Runs (or finds) one training run; returns its wall time, peak RSS and validation curve.

  timing.json is written only after a run succeeded; a run without it is started again
  (`main` resumes from its checkpoints). Its last validation is the final step's."""
  timing = os.path.join(workdir, "timing.json")
  if not os.path.exists(timing):
    name, _, variant = config.partition(":")
    cmd = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "sapnet_jax.main",
           f"--config=configs/{name}.py" + (f":{variant}" if variant else ""),
           f"--workdir={workdir}", f"--config.seed={seed}", f"--config.data.seed={seed}", *extra]
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(workdir, "train.log"), "w") as log:
      done = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.PIPE, text=True)
    if done.returncode:
      raise RuntimeError(f"{config} seed {seed} failed: {done.stderr[-2000:]}")
    wall, rss_kb = done.stderr.strip().splitlines()[-1].split()
    with open(timing, "w") as f:
      json.dump({"wall_s": float(wall), "peak_rss_gb": int(rss_kb) / 2**20,
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "outside_s": time.time() - t0,
                 "command": " ".join(["python", *cmd[4:]])}, f, indent=1)
  with open(timing) as f:
    info = json.load(f)
  curve = runner.validation_curve(workdir, VAL_SET)
  return {**info, "curve": curve, "final": _val(workdir, max(curve))["means"]}


def _input_val(out: str) -> float:
  """RGB PSNR of the rainy inputs of the held-out pairs (the `identity` weights)."""
  report = os.path.join(out, "input_val.json")
  if not os.path.exists(report):
    subprocess.run([sys.executable, "-m", "sapnet_jax.evaluate", "--weights", "identity",
                    "--dataset", "synthetic_rain/shipped:validation", "--json", report],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  with open(report) as f:
    return json.load(f)["means"]["psnr_rgb"]


def score_real(runs: dict, real: str, out: str) -> dict:
  """NIQE/BRISQUE means per model label, through sapnet_jax.compare (one call per seed)."""
  scores = {}
  seeds = sorted({seed for (_, seed) in runs})
  for seed in seeds:
    models = [f"{_label(c)}={os.path.join(w, 'checkpoints')}" for (c, s), w in runs.items()
              if s == seed]
    if seed == seeds[0]:
      models += ["sapnet_shipped=sapnet-rain100h"]
    target = os.path.join(out, f"real_seed_{seed}")
    if not os.path.exists(os.path.join(target, "comparison.json")):
      cmd = [sys.executable, "-m", "sapnet_jax.compare", "--rainy", real, "--out", target,
             *[a for m in models for a in ("--model", m)]]
      subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(target, "comparison.json")) as f:
      for label, means in json.load(f)["means"].items():
        scores[(label, seed)] = {k: means[k] for k in REAL_KEYS}
  report = os.path.join(out, "real_input.json")  # the rainy photos themselves
  if not os.path.exists(report):
    subprocess.run([sys.executable, "-m", "sapnet_jax.evaluate", "--weights", "identity",
                    "--rainy", real, "--json", report], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
  with open(report) as f:
    means = json.load(f)["means"]
  scores[("rainy_input", seeds[0])] = {k: means[k] for k in REAL_KEYS}
  return scores


def _stats(values: list[float]) -> dict:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--configs", default="msnet_semi:demo,msnet_supervised:demo,demo")
  parser.add_argument("--real", default=os.path.join(REPO, "..", "shared", "data", "real_rainy"))
  parser.add_argument("--extra", default="", help="flags added to every run (space-separated)")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  extra = args.extra.split()
  runs, results = {}, {}
  for config in args.configs.split(","):
    for seed in seeds:
      workdir = os.path.join(os.path.abspath(args.workdir), _label(config), f"seed_{seed}")
      runs[(config, seed)] = workdir
      results[(config, seed)] = run(config, seed, workdir, extra)
      r = results[(config, seed)]
      print(f"{config} seed {seed}: {r['wall_s']:.0f} s, {r['peak_rss_gb']:.2f} GB, "
            f"val psnr_rgb {r['final']['psnr_rgb']:.2f}", flush=True)
  real = score_real(runs, args.real, os.path.abspath(args.workdir)) if args.real else {}
  input_psnr = _input_val(os.path.abspath(args.workdir))
  summary = {}
  for config in args.configs.split(","):
    rows = [results[(config, s)] for s in seeds]
    summary[config] = {
        "wall_s": _stats([r["wall_s"] for r in rows]),
        "peak_rss_gb": _stats([r["peak_rss_gb"] for r in rows]),
        "val_psnr_rgb": _stats([r["final"]["psnr_rgb"] for r in rows]),
        "val_gain_db": _stats([r["final"]["psnr_rgb"] - input_psnr for r in rows]),
        "val_ssim_rgb": _stats([r["final"]["ssim_rgb"] for r in rows]),
        **{f"real_{k}": _stats([real[(_label(config), s)][k] for s in seeds])
           for k in REAL_KEYS if real}}
  for label in ("rainy_input", "sapnet_shipped"):
    if (label, seeds[0]) in real:
      summary[label] = {f"real_{k}": real[(label, seeds[0])][k] for k in REAL_KEYS}
  out = {"seeds": seeds, "extra": extra, "input_val_psnr_rgb": input_psnr,
         "runs": {f"{c}/seed_{s}": {**r, "real": real.get((_label(c), s))}
                  for (c, s), r in results.items()},
         "summary": summary}
  with open(os.path.join(args.workdir, "demo_seeds.json"), "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps(summary, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
