"""The training loop end to end on the embedded demo data with a tiny model: logs, validation,
checkpoints, resuming (also after SIGKILL), divergence, and main --mode=eval on the result."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from support.paths import REPO
from support.demo_config import TINY_DEMO
from sapnet_jax.evaluation import scoring
from sapnet_jax.training import checkpoints, loop, summaries, train_step
from sapnet_jax.weights import model_files
from configs import demo


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  from sapnet_jax.data import demo as demo_data
  demo_data.build_demo(str(path))
  return str(path)


def _config(data_dir, **extra):
  config = demo.get_config()
  for key, value in {**TINY_DEMO, "data.data_dir": data_dir, **extra}.items():
    block, field = key.split(".")
    config[block][field] = value
  return config


def _flags(data_dir, **extra):
  return [f"--config.{k}={v}" for k, v in {**TINY_DEMO, "data.data_dir": data_dir,
                                           **extra}.items()]


def _final_params(workdir, step):
  model = model_files.load_model(model_files.step_dir(os.path.join(workdir, "checkpoints"), step))
  return model_files.flatten(model_files.params_dict(model))


def test_run_logs_validates_checkpoints_and_resumes(data_dir, tmp_path):
  work = str(tmp_path)
  result = loop.train_and_evaluate(_config(data_dir, **{"train.num_steps": 4}), work)
  rows = summaries.read_jsonl(work)
  assert [r["step"] for r in rows if "train/total" in r] == [2, 4]
  assert all(np.isfinite(r["train/ssim"]) and r["train/lr"] == pytest.approx(1e-3) for r in rows
             if "train/total" in r)
  val = [r for r in rows if "val/synthetic_val/psnr_rgb" in r]
  assert [r["step"] for r in val] == [4]
  report = json.load(open(os.path.join(work, "eval", "step_4", "synthetic_val", "metrics.json")))
  assert report["count"] == 3 and report["complete"]
  assert result["val"] == pytest.approx(report["means"]["psnr_rgb"], rel=1e-6)
  assert os.path.exists(os.path.join(work, "eval", "step_4", "synthetic_val", "grid.png"))
  assert sorted(os.listdir(os.path.join(work, "tensorboard")))  # event files written
  # Resume: a longer run continues at step 5, not from scratch.
  loop.train_and_evaluate(_config(data_dir, **{"train.num_steps": 6}), work)
  steps = [r["step"] for r in summaries.read_jsonl(work) if "train/total" in r]
  assert steps == [2, 4, 6]
  # main --mode=eval scores the latest checkpoint with the same reports.
  out = scoring.evaluate_workdir(_config(data_dir, **{"train.num_steps": 6}), work)
  assert out["synthetic_val"]["count"] == 3
  assert os.path.exists(os.path.join(work, "eval", "step_6", "synthetic_val", "metrics.csv"))


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_sigkill_then_resume_equals_an_uninterrupted_run(data_dir, tmp_path, ema_decay):
  """With EMA on, the compared weights (the checkpoint's params item) are the average, which
  depends on every step's trained params: both must come back exactly."""
  steps = 12
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  sync = {"train.async_checkpoints": False, "train.save_every": 1, "train.ema_decay": ema_decay}
  # The killed run: saves every step (slow enough to kill mid-run), killed once step 3 is saved.
  proc = subprocess.Popen(
      [sys.executable, "-m", "sapnet_jax.main", "--config=configs/demo.py", f"--workdir={killed}",
       *_flags(data_dir, **sync, **{"train.num_steps": 1000})],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  marker = os.path.join(killed, "checkpoints", "3", "commit_success.txt")
  deadline = time.time() + 300
  while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate()
  assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
  saved = sorted(int(s) for s in os.listdir(os.path.join(killed, "checkpoints")) if s.isdigit())
  assert 3 in saved and max(saved) < steps, saved
  loop.train_and_evaluate(_config(data_dir, **sync, **{"train.num_steps": steps}), killed)
  loop.train_and_evaluate(_config(data_dir, **sync, **{"train.num_steps": steps}), whole)
  a, b = _final_params(killed, steps), _final_params(whole, steps)
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def test_ema_run_validates_and_evaluates_the_average(data_dir, tmp_path):
  work = str(tmp_path)
  config = _config(data_dir, **{"train.num_steps": 4, "train.ema_decay": 0.9})
  result = loop.train_and_evaluate(config, work)
  import orbax.checkpoint as ocp
  ckpts = checkpoints.TrainCheckpoints(os.path.join(work, "checkpoints"))
  ema = _final_params(work, 4)
  stored = ckpts.manager.restore(4, args=ocp.args.Composite(train_state=ocp.args.StandardRestore()))
  trained = model_files.flatten(jax.tree.map(np.asarray, dict(stored["train_state"]["params"])))
  ckpts.close()
  assert sorted(trained) == sorted(ema)
  assert any(not np.array_equal(trained[k], ema[k]) for k in ema)  # the average is not the last
  # main --mode=eval scores the checkpoint's params (the average): the validation's number.
  out = scoring.evaluate_workdir(config, work)
  assert out["synthetic_val"]["means"]["psnr_rgb"] == pytest.approx(result["val"], rel=1e-6)
  # A resume cannot switch EMA off: the checkpoint's params are not the trained ones.
  with pytest.raises(model_files.CheckpointError, match=r"train.ema_decay: checkpoint 0.9, config 0.0"):
    loop.train_and_evaluate(_config(data_dir, **{"train.num_steps": 6}), work)


def test_nan_batch_stops_before_saving_it(data_dir, tmp_path, monkeypatch):
  work = str(tmp_path)
  original = train_step.Trainer.global_batch
  calls = []

  def poisoned(self, local):
    calls.append(1)
    if len(calls) == 3:  # the batch of step 3
      local = {**local, "rainy": np.full_like(local["rainy"], np.nan)}
    return original(self, local)

  monkeypatch.setattr(train_step.Trainer, "global_batch", poisoned)
  with pytest.raises(train_step.TrainingDiverged, match=r"step 2: non-finite .*ssim"):
    loop.train_and_evaluate(_config(data_dir, **{"train.num_steps": 8}), work)
  saved = sorted(int(s) for s in os.listdir(os.path.join(work, "checkpoints")) if s.isdigit())
  assert saved == [2]  # the last good state; nothing after the bad step
  params = _final_params(work, 2)
  assert all(np.all(np.isfinite(v)) for v in params.values())


def test_msnet_semi_supervised_trains_on_both_streams(data_dir, tmp_path):
  """MSNet through the same loop: the real stream feeds the matching terms."""
  from configs import msnet_semi
  real = tmp_path / "real"
  real.mkdir()
  rng = np.random.default_rng(0)
  from sapnet_jax.data import imageio
  for i in range(3):
    imageio.write_png(str(real / f"photo{i}.png"), rng.random((100, 200, 3), np.float32))
  config = msnet_semi.get_config("demo")
  extra = {"model.units": 2, "model.channels": 8, "model.cclb_depth": 1,
           "data.patch_size": 16, "data.global_batch_size": 2, "data.data_dir": data_dir,
           "data.real_manual_dir": str(real), "train.num_steps": 2, "train.log_every": 1,
           "train.save_every": 2, "eval.tile": 0}
  for key, value in extra.items():
    block, field = key.split(".")
    config[block][field] = value
  # The real set sorts first and has no references: validation scores the synthetic one.
  config.eval.sets = {"synthetic_val": "synthetic_rain/shipped:validation",
                      "real_rainy": {"rainy": str(real)}}
  work = str(tmp_path / "work")
  result = loop.train_and_evaluate(config, work)
  reports = {name: json.load(open(os.path.join(work, "eval", "step_2", name, "metrics.json")))
             for name in ("real_rainy", "synthetic_val")}
  assert "niqe" in reports["real_rainy"]["means"] and "psnr_rgb" not in reports["real_rainy"]["means"]
  assert result["val"] == pytest.approx(reports["synthetic_val"]["means"]["psnr_rgb"], rel=1e-6)
  rows = [r for r in summaries.read_jsonl(work) if "train/total" in r]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    # total = ssim + l1 + 1.0 * (mean + cov); every term logged, the matching ones positive.
    assert r["train/match_mean"] > 0 and r["train/match_cov"] > 0
    assert r["train/total"] == pytest.approx(
        r["train/ssim"] + r["train/l1"] + r["train/match_mean"] + r["train/match_cov"], rel=1e-5)
  model = model_files.load_model(model_files.step_dir(os.path.join(work, "checkpoints")))
  assert type(model).__name__ == "MSNet"


def test_validation_needs_a_set_that_reports_the_metric(tmp_path):
  """Real photos score NIQE/BRISQUE only: a config whose every set lacks psnr_rgb is an error
  that names the sets, not a silent NaN that would never pick a best checkpoint."""
  from flax import nnx
  from sapnet_jax.data import imageio
  real = tmp_path / "real"
  real.mkdir()
  imageio.write_png(str(real / "photo.png"), np.random.default_rng(0).random((100, 200, 3), np.float32))
  config = _config(str(tmp_path))
  config.eval.sets = {"real_rainy": {"rainy": str(real)}}
  graphdef, params = nnx.split(loop.initial_model(config, "cpu"))
  params = jax.device_put(nnx.to_pure_dict(params))
  validator = loop.Validator(config, graphdef, params, str(tmp_path / "work"))
  with pytest.raises(ValueError, match=r"val_metric='psnr_rgb' is reported by none of .*real_rainy"):
    validator(1, params, summaries.Writer(str(tmp_path), enabled=False))


@pytest.mark.parametrize("metric,kept", [("niqe", [2, 4]), ("brisque", [2, 4]),
                                         ("psnr_rgb", [3, 4])])
def test_best_checkpoint_follows_the_direction_of_val_metric(data_dir, tmp_path, monkeypatch,
                                                             metric, kept):
  """Validation values 5, 3, 5.5, 4 at steps 1-4, one latest checkpoint kept plus the best:
  the lowest (step 2) for NIQE/BRISQUE, the highest (step 3) for PSNR; a resumed run with
  worse values keeps that best."""
  values = {1: 5.0, 2: 3.0, 3: 5.5, 4: 4.0, 5: 4.5, 6: 4.2}
  monkeypatch.setattr(loop.Validator, "_score", lambda self, step, params, writer: values[step])
  work = str(tmp_path)
  loop.train_and_evaluate(_config(data_dir, **{
      "train.num_steps": 4, "train.eval_every": 1, "train.save_every": 1,
      "train.keep_checkpoints": 1, "train.val_metric": metric,
      "train.async_checkpoints": False}), work)
  saved = sorted(int(s) for s in os.listdir(os.path.join(work, "checkpoints")) if s.isdigit())
  assert saved == kept
  ckpts = checkpoints.TrainCheckpoints(os.path.join(work, "checkpoints"), val_metric=metric)
  assert ckpts.best_step() == kept[0]
  ckpts.close()
  loop.train_and_evaluate(_config(data_dir, **{
      "train.num_steps": 6, "train.eval_every": 1, "train.save_every": 1,
      "train.keep_checkpoints": 1, "train.val_metric": metric,
      "train.async_checkpoints": False}), work)
  saved = sorted(int(s) for s in os.listdir(os.path.join(work, "checkpoints")) if s.isdigit())
  assert saved == [kept[0], 6]


def test_unknown_val_metric_fails_before_training(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"train.val_metric: 'sharpness': unknown metric direction"):
    loop.train_and_evaluate(_config(data_dir, **{"train.val_metric": "sharpness"}),
                             str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("sets,expect", [
    (None, "not built.*python -m sapnet_jax.data.prepare --dataset rain100h"),
    ({"rain100h": {"rainy": "MISSING/rainy", "clean": "MISSING/clean"}}, "MISSING")],
    ids=["unmodified", "folders"])
def test_default_config_with_a_missing_eval_set_fails_before_step_1(tmp_path, sets, expect):
  from configs import default
  config = default.get_config()
  config.data.data_dir = str(tmp_path / "tfds")  # nothing built there
  if sets is None:  # the default's own eval set: the built Rain100H test split
    assert config.eval.sets.to_dict() == {"rain100h": "rain100h:test"}
  else:
    config.eval.sets = {k: v if isinstance(v, str) else {kk: str(tmp_path / p)
                                                         for kk, p in v.items()}
                        for k, v in sets.items()}
  assert config.train.eval_every > 0  # the default validates during training, not only at the end
  with pytest.raises(ValueError, match=r"config\.eval\.sets\.rain100h: .*" + expect):
    loop.train_and_evaluate(config, str(tmp_path / "work"))
  assert not (tmp_path / "work" / "checkpoints").exists()


def test_eval_sets_of_the_demo_pass_the_check(data_dir):
  config = _config(data_dir)
  scoring.check_sets(config.eval, data_dir)  # what the loop tests train with
  config.eval.sets = {"empty": {"rainy": data_dir, "clean": data_dir}}
  with pytest.raises(ValueError, match=r"config\.eval\.sets\.empty"):
    scoring.check_sets(config.eval, data_dir)
