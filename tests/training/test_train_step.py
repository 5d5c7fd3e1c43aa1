"""The train step, schedule, divergence handling and checkpoints, without the input pipeline."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from support.paths import REPO
from sapnet_jax import models
from sapnet_jax.losses import sapnet
from sapnet_jax.models import pdu
from sapnet_jax.training import checkpoints, train_step
from sapnet_jax.weights import model_files

TINY = pdu.PDUConfig(stages=2, channels=8, num_blocks=1, reduction=4)


def _optim(**kw):
  base = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, milestones=(30, 50, 80), decay_factor=0.2,
              grad_clip_norm=0.0, grad_accum_steps=1)
  return ml_collections.ConfigDict({**base, **kw})


def _ssim_loss(model, frozen, batch, epoch):
  del frozen, epoch
  value = sapnet.ssim_loss(model(batch["rainy"]), batch["clean"])
  return value, {"ssim": value}


def _trainer(mesh=None, cfg=TINY, ema_decay=0.0, **optim):
  graphdef, params = nnx.split(models.build(cfg, nnx.Rngs(0)))
  t = train_step.Trainer(graphdef, _optim(**optim), _ssim_loss, steps_per_epoch=10, mesh=mesh,
                    ema_decay=ema_decay)
  return t, t.init_state(nnx.to_pure_dict(params))


def _batch(seed=0, n=2, size=16):
  rng = np.random.default_rng(seed)
  clean = rng.random((n, size, size, 3), np.float32)
  return {"clean": clean, "rainy": np.clip(clean + 0.3 * rng.random(clean.shape, np.float32), 0, 1)}


@pytest.mark.parametrize("accum", [1, 2])
def test_schedule_multiplies_lr_from_each_milestone_epoch(accum):
  t, _ = _trainer(grad_accum_steps=accum)  # 10 steps (batches) per epoch
  expected = {0: 1e-3, 299: 1e-3, 300: 2e-4, 499: 2e-4, 500: 4e-5, 799: 4e-5, 800: 8e-6, 999: 8e-6}
  for step, lr in expected.items():
    np.testing.assert_allclose(float(t.lr(step)), lr, rtol=1e-6, err_msg=f"step {step}")


def test_step_lowers_the_loss_and_counts():
  t, state = _trainer()
  batch = t.global_batch(_batch())
  first = None
  for _ in range(5):
    state, m = t(state, batch, None)
    first = float(m["ssim"]) if first is None else first
  assert int(state.step) == 5
  assert float(m["ssim"]) < first
  t.check_finite(state)  # nothing non-finite: no exception


def test_non_finite_batch_keeps_the_state_and_names_term_and_step():
  t, state = _trainer()
  state, _ = t(state, t.global_batch(_batch()), None)
  bad = _batch(1)
  bad["rainy"][0, 3, 3, 0] = np.nan
  state, _ = t(state, t.global_batch(bad), None)
  state, _ = t(state, t.global_batch(_batch(2)), None)  # later good steps do not hide it
  with pytest.raises(train_step.TrainingDiverged, match=r"step 1: non-finite .*ssim"):
    t.check_finite(state)
  assert int(state.bad_step) == 1 and int(state.step) == 3


def test_non_finite_step_leaves_params_unchanged():
  t, state = _trainer()
  before = jax.tree.map(np.asarray, state.params)
  bad = _batch(1)
  bad["clean"][:] = np.inf
  state, _ = t(state, t.global_batch(bad), None)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


@pytest.mark.parametrize("poison", ["nan", "bf16_overflow"])
def test_bfloat16_step_keeps_the_non_finite_guard(poison):
  """With bfloat16 compute (parameters float32) a poisoned batch is caught and skipped as in
  float32. "bf16_overflow": 3.4e38 is finite in float32 but above bfloat16's largest value
  (~3.39e38), so it becomes inf only inside the bfloat16 network."""
  t, state = _trainer(cfg=dataclasses.replace(TINY, dtype="bfloat16"))
  state, m = t(state, t.global_batch(_batch()), None)
  assert np.isfinite(float(m["ssim"]))
  before = jax.tree.map(np.asarray, state.params)
  bad = _batch(1)
  bad["rainy"][0, 3, 3, 0] = np.nan if poison == "nan" else np.float32(3.4e38)
  assert poison == "nan" or np.isfinite(bad["rainy"]).all()
  state, _ = t(state, t.global_batch(bad), None)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)
  with pytest.raises(train_step.TrainingDiverged, match=r"step 1: non-finite"):
    t.check_finite(state)


def _host(tree):
  return jax.tree.map(np.asarray, tree)


def test_ema_averages_the_updated_params_with_a_warm_up():
  t, state = _trainer(ema_decay=0.5)
  plain, plain_state = _trainer()
  ema = _host(state.params)  # starts at the initial weights
  for i in range(4):
    batch = t.global_batch(_batch(i))
    state, _ = t(state, batch, None)
    plain_state, _ = plain(plain_state, batch, None)
    rate = min(0.5, (1 + i) / (10 + i))  # 0.1, 0.18.., 0.25, 0.3..
    ema = jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, ema, _host(state.params))
    # The average never feeds back: the trained params are those of a run without EMA (to
    # float32 rounding: the two steps compile to different fusions).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 _host(state.params), _host(plain_state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _host(state.ema), ema)
  assert t.model_params(state) is state.ema and plain.model_params(plain_state) is plain_state.params
  assert plain_state.ema is None
  with pytest.raises(ValueError, match="train.ema_decay"):
    _trainer(ema_decay=1.0)


def test_ema_skips_a_non_finite_step():
  t, state = _trainer(ema_decay=0.9)
  state, _ = t(state, t.global_batch(_batch()), None)
  before = _host(state.ema)
  bad = _batch(1)
  bad["clean"][:] = np.inf
  state, _ = t(state, t.global_batch(bad), None)
  jax.tree.map(np.testing.assert_array_equal, _host(state.ema), before)


def test_ema_checkpoint_holds_the_average_as_params_and_resumes_both(tmp_path):
  t, state = _trainer(ema_decay=0.9)
  for i in range(2):
    state, _ = t(state, t.global_batch(_batch(i)), None)
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), async_save=False)
  ckpts.save(2, *t.checkpoint_items(state), models.config_to_dict(TINY), {"train": {}})
  ckpts.wait()
  # What every weights reader sees is the average ...
  model = model_files.load_model(model_files.step_dir(str(tmp_path)))
  jax.tree.map(np.testing.assert_array_equal, model_files.params_dict(model), _host(state.ema))
  # ... and a resume gets back both the average and the trained params.
  _, fresh = _trainer(ema_decay=0.9)
  step, params, rest = ckpts.restore_latest(*t.checkpoint_items(fresh), models.config_to_dict(TINY))
  back = t.from_checkpoint_items(params, rest)
  assert step == 2 and int(back.step) == 2
  for got, want in ((back.ema, state.ema), (back.params, state.params)):
    jax.tree.map(np.testing.assert_array_equal, _host(got), _host(want))
  assert not np.array_equal(model_files.flatten(_host(back.ema))["conv0/kernel"],
                            model_files.flatten(_host(back.params))["conv0/kernel"])


def _save(ckpts, step, t, state, model_cfg=TINY):
  ckpts.save(step, state.params, state.replace(params=None), models.config_to_dict(model_cfg),
             {"note": "test"})
  ckpts.wait()


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  t, state = _trainer()
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=3, async_save=False)
  _save(ckpts, 1, t, state)
  saved = jax.tree.map(np.asarray, state.params)
  state, _ = t(state, t.global_batch(_batch()), None)
  _save(ckpts, 2, t, state)
  for root, _, files in os.walk(tmp_path / "2" / "params"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  fresh = checkpoints.TrainCheckpoints(str(tmp_path), keep=3, async_save=False)
  step, params, rest = fresh.restore_latest(state.params, state.replace(params=None),
                                            models.config_to_dict(TINY))
  assert step == 1 and int(rest.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), saved)
  assert "step 2" in caplog.text and "unreadable" in caplog.text


def test_checkpoint_of_another_model_is_refused_naming_fields(tmp_path):
  t, state = _trainer()
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), async_save=False,
                                      compare=models.architecture)
  _save(ckpts, 1, t, state)
  other = models.config_to_dict(pdu.PDUConfig(stages=2, channels=16, num_blocks=1, reduction=4))
  with pytest.raises(model_files.CheckpointError, match=r"channels: checkpoint 8, config 16"):
    ckpts.restore_latest(state.params, state.replace(params=None), other)
  # Compute-only fields (scan, dtype, ...) may differ.
  scanned = models.config_to_dict(pdu.PDUConfig(stages=2, channels=8, num_blocks=1, reduction=4,
                                                scan=True))
  assert ckpts.restore_latest(state.params, state.replace(params=None), scanned)[0] == 1


def test_training_checkpoint_loads_as_a_model(tmp_path):
  t, state = _trainer()
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), async_save=False)
  _save(ckpts, 7, t, state)
  model = model_files.load_model(model_files.step_dir(str(tmp_path)))
  assert model.cfg == TINY
  jax.tree.map(np.testing.assert_array_equal, model_files.params_dict(model),
               jax.tree.map(np.asarray, state.params))


EIGHT_DEVICES = textwrap.dedent("""
    import dataclasses, json, sys
    import jax, numpy as np
    sys.path[:0] = ["tests/training", "tests"]  # this file, and tests/support for its imports
    import test_train_step as T
    assert jax.device_count() == 8, jax.devices()
    out = {}
    for n in (1, 8):
      mesh = T.train_step.make_mesh(jax.devices()[:n])
      t, state = T._trainer(mesh=mesh, cfg=dataclasses.replace(T.TINY, impl=sys.argv[1]))
      losses = []
      for i in range(3):
        state, m = t(state, t.global_batch(T._batch(i, n=8)), None)
        losses.append(float(m["ssim"]))
      assert len(state.params["conv0"]["kernel"].sharding.device_set) == n
      out[n] = {"losses": losses,
                "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)]}
    print(json.dumps(out))
""")


@pytest.mark.parametrize("impl", ["reference", "cpu", "gpu"])
def test_eight_fake_devices_match_one(impl):
  """Data parallel over 8 CPU devices (batch split 8 ways) equals 1 device, 3 steps."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, impl], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(out["8"]["losses"], out["1"]["losses"], rtol=1e-5)
  for a, b in zip(out["8"]["params"], out["1"]["params"]):
    # Float sums over the batch are reordered across devices: float32 rounding, not 0.
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
