"""Several JAX processes on this machine (CPU collectives, coordinator on localhost), started
the way a user rehearses a pod run: launch/local_multiprocess.sh running sapnet_jax.main."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from support.demo_config import TINY_DEMO
from support.paths import REPO
from support.ports import free_port
from sapnet_jax.training import summaries
from sapnet_jax.weights import model_files

SCRIPT = str(REPO / "launch" / "local_multiprocess.sh")
STEPS = 6
FLAGS = {**TINY_DEMO, "data.global_batch_size": 8}


def _flags(workdir, data_dir, **extra):
  flags = {**FLAGS, "data.data_dir": data_dir, "train.num_steps": STEPS, **extra}
  return ["--config=configs/demo.py", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in flags.items())]


def _env(**extra):
  return {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", **extra}


def _pod(workdir, data_dir, logdir, **extra):
  """2 processes x 2 CPU devices through the launch script; returns the finished process."""
  return subprocess.run(["bash", SCRIPT, "2", "--devices", "4", "--logdir", str(logdir),
                         *_flags(workdir, data_dir, **extra)],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _check(proc, logdir):
  logs = "".join(open(os.path.join(logdir, f)).read()[-3000:] for f in os.listdir(logdir))
  assert proc.returncode == 0, proc.stderr[-3000:] + "\n--- other processes ---\n" + logs


def _params(workdir):
  model = model_files.load_model(model_files.step_dir(os.path.join(workdir, "checkpoints"), STEPS))
  return model_files.flatten(model_files.params_dict(model))


@pytest.fixture(scope="module")
def pod_run(tmp_path_factory):
  """The uninterrupted 2-process run, from an empty data_dir with prepare on (demo config)."""
  root = tmp_path_factory.mktemp("pod")
  workdir, data_dir, logs = root / "work", root / "tfds", root / "logs"
  proc = _pod(workdir, data_dir, logs)
  _check(proc, logs)
  return {"workdir": str(workdir), "data_dir": str(data_dir), "logs": str(logs)}


def test_two_processes_train_like_one_process_with_four_devices(pod_run, tmp_path):
  work = tmp_path / "one"
  proc = subprocess.run([sys.executable, "-m", "sapnet_jax.main",
                         *_flags(work, tmp_path / "tfds")], cwd=REPO, capture_output=True,
                        text=True, timeout=600,
                        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The same global batches (windows seeded by their global position, each process a strided
  # share); only which device sums which samples differs, so float32 reductions round
  # differently: measured 6e-8 after 6 Adam steps (parameters up to 1.6). Bound 1e-6.
  a, b = _params(pod_run["workdir"]), _params(work)
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
  # One writer of logs (process 0): each row once; validation numbers equal one process's.
  rows, ref = summaries.read_jsonl(pod_run["workdir"]), summaries.read_jsonl(str(work))
  assert [r["step"] for r in rows] == [r["step"] for r in ref] == [2, 4, 6, 6]
  val, ref_val = rows[-1], ref[-1]
  assert val["val/synthetic_val/psnr_rgb"] == pytest.approx(ref_val["val/synthetic_val/psnr_rgb"],
                                                            abs=1e-4)
  report = json.load(open(os.path.join(pod_run["workdir"], "eval", f"step_{STEPS}",
                                       "synthetic_val", "metrics.json")))
  assert report["count"] == 3  # every held-out image scored once, by process 0
  # Every process saved its data iterator's position into the same checkpoint.
  data = os.path.join(pod_run["workdir"], "checkpoints", str(STEPS), "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data))


def test_sigkill_of_both_processes_then_restart_equals_the_uninterrupted_run(pod_run, tmp_path):
  work, logs = tmp_path / "killed", tmp_path / "logs"
  sync = {"train.async_checkpoints": False, "train.save_every": 1}
  proc = subprocess.Popen(["bash", SCRIPT, "2", "--devices", "4", "--logdir", str(logs),
                           *_flags(work, pod_run["data_dir"], **sync, **{"train.num_steps": 1000})],
                          cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True)
  marker = work / "checkpoints" / "3" / "commit_success.txt"
  deadline = time.time() + 300
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)  # the script and both JAX processes at once
  _, err = proc.communicate()
  assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
  saved = sorted(int(s) for s in os.listdir(work / "checkpoints") if s.isdigit())
  assert 3 in saved and max(saved) < STEPS, saved
  _check(_pod(work, pod_run["data_dir"], logs, **sync), logs)
  a, b = _params(str(work)), _params(pod_run["workdir"])
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def test_failed_preparation_is_reported_by_every_process(tmp_path):
  port = free_port()
  missing = tmp_path / "no_such_folder"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "sapnet_jax.main", "--multihost", f"--coordinator=localhost:{port}",
       "--num_processes=2", f"--process_id={i}",
       *_flags(tmp_path / "work", tmp_path / "tfds", **{"data.dataset": "synthetic_rain/pool",
                                                         "data.manual_dir": missing})],
      cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errs = [p.communicate(timeout=300)[1] for p in procs]
  assert all(p.returncode != 0 for p in procs), errs
  assert f"manual_dir {missing} is not a folder" in errs[0]
  assert "ProcessZeroError: dataset preparation (config.data.prepare) failed on process 0: " \
         f"LayoutError: synthetic_rain/pool: manual_dir {missing} is not a folder" in errs[1]


def test_launch_script_splits_the_devices_and_checks_its_arguments():
  out = subprocess.run(["bash", SCRIPT, "3", "--devices", "6", "--port", "1234", "--dry-run",
                        "--config=configs/demo.py", "--workdir=w"], capture_output=True,
                       text=True, check=True).stdout.splitlines()
  assert len(out) == 3
  for i, line in enumerate(out):
    assert "--xla_force_host_platform_device_count=2" in line
    assert f"--process_id={i}" in line and "--num_processes=3" in line
    assert "--coordinator=localhost:1234" in line and line.rstrip().endswith("--workdir=w")
  bad = subprocess.run(["bash", SCRIPT, "2", "--devices", "3", "--dry-run"], capture_output=True,
                       text=True)
  assert bad.returncode == 2 and "multiple of N=2" in bad.stderr
