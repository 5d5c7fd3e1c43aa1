"""Training end to end (`train_and_evaluate`): datasets, the model, the step of `train_step`
run for the configured epochs, validation, summaries and Orbax checkpoints; resumes exactly.

Several processes (a pod, or `launch/local_multiprocess.sh` on one machine) run this same
code: process 0 alone prepares datasets (the others wait at a barrier and fail with its error
if it fails), writes logs and reports and runs validation (its numbers are broadcast, so every
process sees the same value); every process takes part in each Orbax save and restore.

With `train.ema_decay` > 0 the state also keeps an exponential moving average of the
parameters (as BasicSR and big_vision do); it is what validation scores and what the
checkpoint's `params` item holds, so evaluation, export and `pretrained.load` of a run read it.

A step whose loss terms or gradients are not finite stops the loop with a message naming them
before anything else is saved, so the last checkpoint stays the last good state.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from sapnet_jax import infer, models
from sapnet_jax.data import imageio
from sapnet_jax.evaluation import scoring
from sapnet_jax.losses import objectives
from sapnet_jax.metrics import conventions
from sapnet_jax.training import checkpoints, summaries
from sapnet_jax.training.multihost import on_process_0
from sapnet_jax.training.train_step import Trainer, make_mesh
from sapnet_jax.utils import fileio
from sapnet_jax.weights import registry


def steps_per_epoch(config: Any) -> int:
  from sapnet_jax.data import pipeline  # deferred: grain/TFDS only when a dataset is read
  return max(1, pipeline.epoch_size(config.data) // config.data.global_batch_size)


def total_steps(config: Any, per_epoch: int) -> int:
  return int(config.train.num_steps) or int(config.train.num_epochs) * per_epoch


def initial_model(config: Any, platform: str) -> nnx.Module:
  """The model of `config.model`, its `impl` resolved for `platform`, randomly initialised or
  (`train.init_weights`) pretrained."""
  cfg = models.resolve_impl(models.config_from_dict(config.model.to_dict()), platform)
  logging.info("model.impl=%s: kernel set %r on %s", config.model.get("impl", "reference"),
               cfg.impl, platform)
  model = models.build(cfg, nnx.Rngs(config.seed))
  if config.train.init_weights:
    source = registry.load(config.train.init_weights)
    diff = checkpoints.config_differences(models.architecture(models.config_to_dict(source.cfg)),
                                         models.architecture(models.config_to_dict(model.cfg)))
    if diff:
      raise ValueError(f"train.init_weights={config.train.init_weights!r} is another "
                       "architecture than config.model: " + "; ".join(diff))
    nnx.update(model, nnx.state(source, nnx.Param))
  return model


def _host_params(params: Any) -> Any:
  # Replicated arrays: every process holds a whole copy on each of its devices.
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), params)


class Validator:
  """Periodic validation through sapnet_jax.evaluation.scoring, on process 0."""

  def __init__(self, config: Any, graphdef: Any, params: Any, workdir: str):
    self.config, self.workdir = config, workdir
    self.derainer = infer.Derainer(nnx.merge(graphdef, _host_params(params)))
    self.metric = config.train.val_metric

  def __call__(self, step: int, params: Any, writer: summaries.Writer) -> float:
    """Scores `params` on config.eval.sets on process 0; returns, on every process, the mean
    `train.val_metric` of the first set that reports it."""
    return on_process_0(lambda: self._score(step, params, writer), f"validation at step {step}")

  def _score(self, step: int, params: Any, writer: summaries.Writer) -> float:
    self.derainer.update(_host_params(params))
    data_dir = self.config.data.get("data_dir")
    out = fileio.join(self.workdir, "eval", f"step_{step}")
    results = scoring.evaluate_sets(self.derainer, self.config.eval, out, {"step": step},
                                    data_dir, progress=False)
    for name, summary in results.items():
      writer.scalars(step, summary["means"], prefix=f"val/{name}")
      grid = fileio.join(out, name, "grid.png")
      if fileio.exists(grid):
        writer.image(step, f"val/{name}", imageio.to_uint8(imageio.read_image(grid)))
    # Sets without references (real rain) score NIQE/BRISQUE only: the first set (in the
    # config's sorted order) that reports the metric picks the best checkpoint.
    scored = [r["means"][self.metric] for r in results.values() if self.metric in r["means"]]
    if not scored:
      raise ValueError(f"train.val_metric={self.metric!r} is reported by none of "
                       f"config.eval.sets ({', '.join(results)})")
    return float(np.float32(scored[0]))


def _prepare_datasets(data: Any) -> None:
  """Builds the training (and unlabelled real) datasets unless built, on process 0 while the
  others wait (see on_process_0)."""
  from sapnet_jax.data import prepare  # deferred: see steps_per_epoch

  def build() -> None:
    prepare.build(data.dataset, data_dir=data.get("data_dir"), manual_dir=data.get("manual_dir"))
    if data.get("real_dataset"):
      prepare.build(data.real_dataset, data_dir=data.get("data_dir"),
                    manual_dir=data.get("real_manual_dir"))

  on_process_0(build, "dataset preparation (config.data.prepare)")


def _ema_difference(stored: dict, current: dict) -> list[str]:
  # With EMA on, a checkpoint's params item is the average and its train_state holds the
  # trained params: a run cannot switch it on or off halfway.
  decays = [c.get("train", {}).get("ema_decay", 0.0) for c in (stored, current)]
  if bool(decays[0]) == bool(decays[1]):
    return []
  return [f"train.ema_decay: checkpoint {decays[0]!r}, config {decays[1]!r} (EMA cannot be "
          "switched on or off when resuming; use a new workdir)"]


def train_and_evaluate(config: Any, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest readable checkpoint; returns the
  last logged metrics (and the last validation result under "val")."""
  from sapnet_jax.data import pipeline  # deferred: see steps_per_epoch
  try:  # the best checkpoint follows its direction: an unknown name fails now, not at a save
    conventions.higher_is_better(config.train.val_metric)
  except ValueError as e:
    raise ValueError(f"train.val_metric: {e}") from None
  fileio.makedirs(workdir)
  if config.data.get("prepare", False):
    _prepare_datasets(config.data)
  # Every validation set is checked now: a missing or unreadable one fails before step 1.
  on_process_0(lambda: scoring.check_sets(config.eval, config.data.get("data_dir")),
               "checking config.eval.sets")
  mesh = make_mesh()
  model = initial_model(config, mesh.devices.flat[0].platform)
  model_config = models.config_to_dict(model.cfg)
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  per_epoch = steps_per_epoch(config)
  last = total_steps(config, per_epoch)
  loss_fn, frozen = objectives.build(config)
  trainer = Trainer(graphdef, config.optim, loss_fn, per_epoch, mesh,
                    ema_decay=config.train.get("ema_decay", 0.0))
  state = trainer.init_state(params)
  data = pipeline.make_train_iterator(config.data, seed=config.data.seed)
  ckpts = checkpoints.TrainCheckpoints(fileio.join(workdir, "checkpoints"),
                                      keep=config.train.keep_checkpoints,
                                      async_save=config.train.async_checkpoints,
                                      compare=models.architecture,
                                      val_metric=config.train.val_metric)
  restored = ckpts.restore_latest(
      *trainer.checkpoint_items(state), model_config, data,
      check_config=lambda stored: _ema_difference(stored, config.to_dict()))
  if restored is not None:
    step, params, rest = restored
    state = trainer.from_checkpoint_items(params, rest)
    logging.info("resumed from step %d of %s", step, ckpts.directory)
  start = int(jax.device_get(state.step))
  writer = summaries.Writer(workdir, enabled=jax.process_index() == 0)
  validator = Validator(config, graphdef, trainer.model_params(state), workdir)
  tr = config.train
  result: dict = {}

  def save(step: int, val: float | None) -> None:
    trainer.check_finite(state)  # never save past a non-finite step
    ckpts.save(step, *trainer.checkpoint_items(state), model_config, config.to_dict(), data, val)

  bar = tqdm(total=last, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True,
             disable=None if jax.process_index() == 0 else True)
  t0, images, last_log = time.perf_counter(), 0, start
  try:
    for step in range(start + 1, last + 1):
      state, step_metrics = trainer(state, trainer.global_batch(next(data)), frozen)
      images += config.data.global_batch_size
      bar.update(1)
      val = None
      if step % tr.log_every == 0 or step == last:
        trainer.check_finite(state)
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        dt = time.perf_counter() - t0
        rates = {"steps/s": (step - last_log) / dt, "images/s": images / dt}
        writer.scalars(step, {**values, **rates})
        line = summaries.console_line(step, last, (step - 1) // per_epoch, values, rates)
        if jax.process_index() == 0:
          tqdm.write(line, file=sys.stderr)
        result = {**values, **rates}
        t0, images, last_log = time.perf_counter(), 0, step
      if step == last or (tr.eval_every and step % tr.eval_every == 0):
        trainer.check_finite(state)
        val = validator(step, trainer.model_params(state), writer)
        result["val"] = val
        logging.info("step %d: validation %s %.4f", step, tr.val_metric, val)
      if step % tr.save_every == 0 or step == last:
        save(step, val)
  finally:
    bar.close()
    ckpts.wait()
    writer.close()
  ckpts.close()
  return result
