"""A training run whose workdir and data_dir are in a bucket of a real GCS-API server
(fake-gcs-server on localhost, tests/conftest.py:gcs_bucket): what a TPU pod run does with
gs://."""

import json
import os
import subprocess
import sys

import numpy as np

from support.paths import REPO
from support.demo_config import TINY_DEMO
from sapnet_jax.training import summaries
from sapnet_jax.utils import fileio
from sapnet_jax.weights import model_files


def _main(workdir, data_dir, cache, *extra, steps=4):
  flags = {**TINY_DEMO, "data.data_dir": data_dir, "train.num_steps": steps}
  proc = subprocess.run(
      [sys.executable, "-m", "sapnet_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
       *(f"--config.{k}={v}" for k, v in flags.items()), *extra],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "SAPNET_JAX_CACHE": str(cache)})
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_train_resume_evaluate_and_derain_from_a_bucket(gcs_bucket, tmp_path, monkeypatch):
  monkeypatch.setenv("SAPNET_JAX_CACHE", str(tmp_path / "cache_here"))
  work, data = f"{gcs_bucket}/run", f"{gcs_bucket}/tensorflow_datasets"
  # 1. From an empty bucket: prepare builds the demo data and uploads it; 4 steps.
  _main(work, data, tmp_path / "cache1")
  built = fileio.join(data, "synthetic_rain", "shipped")
  assert fileio.listdir(built) == ["1.2.0"]
  assert "dataset_info.json" in fileio.listdir(fileio.join(built, "1.2.0"))
  assert fileio.listdir(fileio.join(work, "checkpoints")) == ["2", "4"]
  rows = summaries.read_jsonl(work)
  assert [r["step"] for r in rows if "train/total" in r] == [2, 4]
  report = json.loads(fileio.read_text(fileio.join(work, "eval", "step_4", "synthetic_val",
                                                   "metrics.json")))
  assert report["count"] == 3 and report["complete"]
  assert fileio.exists(fileio.join(work, "eval", "step_4", "synthetic_val", "grid.png"))
  events = fileio.listdir(fileio.join(work, "tensorboard"))
  assert events and all(e.startswith("events.out.tfevents") for e in events)
  assert len(fileio.read_bytes(fileio.join(work, "tensorboard", events[0]))) > 100
  # Nothing of the run landed in a local folder named like the URI.
  assert not os.path.exists(REPO / "gs:")

  # 2. Restart from another machine's view (empty local cache: the dataset comes from the
  # bucket): it resumes at step 5 and continues the bucket's metrics.jsonl.
  _main(work, data, tmp_path / "cache2", steps=6)
  assert os.path.isdir(tmp_path / "cache2" / "mirror" / "gs")
  assert [r["step"] for r in summaries.read_jsonl(work) if "train/total" in r] == [2, 4, 6]

  # 3. main --mode=eval scores the bucket's latest checkpoint into the bucket.
  _main(work, data, tmp_path / "cache2", "--mode=eval", steps=6)
  scored = json.loads(fileio.read_text(fileio.join(work, "eval", "step_6", "synthetic_val",
                                                   "metrics.json")))
  assert scored["count"] == 3 and scored["step"] == 6

  # 4. derain reads the bucket's checkpoint and equals the same weights loaded locally.
  out = tmp_path / "derained"
  proc = subprocess.run([sys.executable, "-m", "sapnet_jax.derain", "examples/rain-064.jpg",
                         "--out", str(out), "--weights", f"{work}/checkpoints", "--tile", "0"],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (out / "rain-064.png").exists()
  remote = model_files.flatten(model_files.params_dict(
      model_files.load_model(f"{work}/checkpoints")))
  params = model_files.flatten(model_files.params_dict(model_files.load_model(
      model_files.step_dir(fileio.local_copy(f"{work}/checkpoints"), 6))))
  for key in remote:
    np.testing.assert_array_equal(remote[key], params[key], err_msg=key)


def test_missing_bucket_dataset_is_a_clear_error(gcs_bucket, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "sapnet_jax.main", "--config=configs/demo.py",
       f"--workdir={gcs_bucket}/run", f"--config.data.data_dir={gcs_bucket}/none",
       "--config.data.prepare=False"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "SAPNET_JAX_CACHE": str(tmp_path)})
  assert proc.returncode != 0
  assert f"dataset 'synthetic_rain/shipped' is not built in {gcs_bucket}/none" in proc.stderr


def test_prepare_builds_into_a_bucket_once(gcs_bucket, tmp_path, monkeypatch, capsys):
  from sapnet_jax.data import prepare
  monkeypatch.setenv("SAPNET_JAX_CACHE", str(tmp_path))
  data = f"{gcs_bucket}/tfds"
  assert prepare.main(["--dataset", "synthetic_rain/shipped", "--data_dir", data]) == 0
  assert "built in" in capsys.readouterr().out
  remote = fileio.join(data, "synthetic_rain", "shipped", "1.2.0")
  assert any(n.startswith("synthetic_rain-train.array_record") for n in fileio.listdir(remote))
  assert prepare.main(["--dataset", "synthetic_rain/shipped", "--data_dir", data]) == 0
  assert f"reused at {remote} (train: 48, validation: 3)" in capsys.readouterr().out
