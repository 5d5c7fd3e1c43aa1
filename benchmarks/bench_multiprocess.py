"""Pod rehearsal costs on this machine: prints JSON lines.

    python benchmarks/bench_multiprocess.py [--steps 40] [--repeats 5] [--skip-steps]

1. Train step time of the demo (configs/demo.py: SAPNet 16 channels, 4 stages, 8 x 64 x 64,
   -SSIM + L1) as 2 processes x 2 CPU devices (launch/local_multiprocess.sh) and as 1 process
   x 4 CPU devices, same global batch: the median of `train/steps/s` over the logged
   intervals after the first (which holds the compile).
2. Checkpoint save and restore time (checkpoints.TrainCheckpoints: params, Adam state, configs)
   of the full SAPNet into a local folder and into a bucket of fake-gcs-server on localhost
   (needs the `test` extra), median of --repeats.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def step_time(processes: int, devices: int, steps: int, data_dir: str, work: str) -> dict:
  flags = ["--config=configs/demo.py", f"--workdir={work}", f"--config.data.data_dir={data_dir}",
           f"--config.train.num_steps={steps}", "--config.train.log_every=10",
           "--config.train.eval_every=0", f"--config.train.save_every={steps}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
  start = time.perf_counter()
  if processes == 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, "-m", "sapnet_jax.main", *flags]
  else:
    cmd = ["bash", "launch/local_multiprocess.sh", str(processes), "--devices", str(devices),
           "--logdir", os.path.join(work, "logs"), *flags]
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
  wall = time.perf_counter() - start
  from sapnet_jax.training import summaries
  rates = [r["train/steps/s"] for r in summaries.read_jsonl(work) if "train/steps/s" in r][1:]
  return {"bench": "train_step", "processes": processes, "devices": devices,
          "seconds_per_step": 1.0 / statistics.median(rates), "intervals": len(rates),
          "wall_seconds": wall}


def checkpoint_times(directory: str, repeats: int) -> dict:
  import jax
  from flax import nnx
  from configs import default
  from sapnet_jax import models
  from sapnet_jax.training import loop
  from sapnet_jax.training import checkpoints
  config = default.get_config()
  model = models.build(models.config_from_dict(config.model.to_dict()), nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  trainer = loop.Trainer(graphdef, config.optim, lambda *a: None, steps_per_epoch=100)
  state = trainer.init_state(nnx.to_pure_dict(params))
  rest = state.replace(params=None)
  ckpts = checkpoints.TrainCheckpoints(directory, keep=2, async_save=False)
  model_config = models.config_to_dict(model.cfg)
  saves, restores = [], []
  for step in range(1, repeats + 1):
    t0 = time.perf_counter()
    ckpts.save(step, state.params, rest, model_config, config.to_dict())
    ckpts.wait()
    saves.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    restored = ckpts.restore_latest(state.params, rest, model_config)
    jax.block_until_ready(restored[1])
    restores.append(time.perf_counter() - t0)
    assert restored[0] == step
  ckpts.close()
  size = sum(p.size * p.dtype.itemsize for p in jax.tree.leaves(state))
  return {"bench": "checkpoint", "where": "bucket" if "://" in directory else "local",
          "save_seconds": statistics.median(saves), "restore_seconds": statistics.median(restores),
          "state_megabytes": size / 1e6, "repeats": repeats}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip-steps", action="store_true", help="checkpoint times only")
  args = parser.parse_args()
  from sapnet_jax.runtime import xla_options
  host = {"machine": platform.machine(), "cpu": xla_options.cpu_description()}
  with tempfile.TemporaryDirectory() as tmp:
    if not args.skip_steps:
      data_dir = os.path.join(tmp, "tfds")
      from sapnet_jax.data import demo
      demo.build_demo(data_dir)
      for processes, devices in ((2, 4), (1, 4), (2, 4), (1, 4)):  # alternated: drift
        work = os.path.join(tmp, f"w{processes}_{time.time_ns()}")
        print(json.dumps({**step_time(processes, devices, args.steps, data_dir, work), **host}),
              flush=True)
    print(json.dumps({**checkpoint_times(os.path.join(tmp, "ckpt"), args.repeats), **host}),
          flush=True)
    from support import gcs_emulator
    server, env = gcs_emulator.start()
    os.environ.update(env)
    try:
      bucket = gcs_emulator.create_bucket(server.url, "bench")
      print(json.dumps({**checkpoint_times(f"{bucket}/ckpt", args.repeats), **host}), flush=True)
    finally:
      server.stop()


if __name__ == "__main__":
  main()
