"""Training: the train state, one sharded jit step, the Optax schedule, and the loop.

One code path from 1 CPU to a TPU pod: the step is `jax.jit` with in/out shardings over a
`jax.sharding.Mesh` with one axis, "data"; parameters and optimizer state are replicated, the
batch is split along it, and the state is donated. Each process feeds its own slice of the
global batch (`jax.make_array_from_process_local_data`).

Several processes (a pod, or `launch/local_multiprocess.sh` on one machine) run this same
code: process 0 alone prepares datasets (the others wait at a barrier and fail with its error
if it fails), writes logs and reports and runs validation (its numbers are broadcast, so every
process sees the same value); every process takes part in each Orbax save and restore.

With `train.ema_decay` > 0 the state also keeps an exponential moving average of the
parameters (as BasicSR and big_vision do); it is what validation scores and what the
checkpoint's `params` item holds, so evaluation, export and `pretrained.load` of a run read it.

A step whose loss terms or gradients are not finite leaves the state unchanged and records the
step and the offending terms; the loop stops with a message naming them before anything else
is saved, so the last checkpoint stays the last good state.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from sapnet_jax import infer, models, pretrained
from sapnet_jax.evaluation import scoring
from sapnet_jax.losses import objectives
from sapnet_jax.metrics import full_reference
from sapnet_jax.runtime import xla_options
from sapnet_jax.training import summaries
from sapnet_jax.utils import fileio
from sapnet_jax.weights import model_files
from sapnet_jax.data import imageio

GRAD_TERM = "gradients"
# (model, frozen nets, batch, epoch) -> (scalar to minimise, {term name: scalar}); see objectives.
# epoch is fractional (step / steps per epoch): `epoch >= 51` holds from the same step as the
# official integer `epoch > 50`, and a shortened schedule may start a term mid-epoch.
# The step logs the scalar as "total" beside the terms: no loss function adds it itself.
LossFn = Callable[[nnx.Module, Any, dict, jax.Array], tuple[jax.Array, dict]]


class TrainingDiverged(RuntimeError):
  """A loss term or the gradients became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # train steps done (micro-batches when accumulating gradients)
  params: Any  # the model's nnx.Param state
  opt_state: Any
  bad_step: jax.Array  # first step with a non-finite loss term or gradient; -1 if none
  bad_terms: jax.Array  # bit i: term i of Trainer.term_names (gradients last) was non-finite
  ema: Any = None  # moving average of params (train.ema_decay > 0), else None


def ema_rate(decay: float, updates: jax.Array) -> jax.Array:
  """The averaging rate after `updates` updates: min(decay, (1 + n) / (10 + n)).

  The warm-up (TensorFlow's ExponentialMovingAverage with num_updates) lets the average
  forget the random initialisation within a short run: at a fixed 0.999 a 1000-step demo
  would still hold a third of its initial weights.
  """
  n = updates.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def make_schedule(optim: Any, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate per optimizer update: x decay_factor from each milestone epoch on."""
  updates_per_epoch = steps_per_epoch / optim.grad_accum_steps
  boundaries = {int(round(e * updates_per_epoch)): optim.decay_factor for e in optim.milestones}
  return optax.piecewise_constant_schedule(optim.lr, boundaries)


def make_optimizer(optim: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam (PyTorch's defaults) at `schedule` (make_schedule), optional global-norm clipping and
  gradient accumulation."""
  tx = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  if optim.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  if optim.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=optim.grad_accum_steps)
  return tx


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
  """A 1-d "data" mesh over `devices` (default: all, every process's).

  Auto axis: the compiler propagates shardings through the step, as jit/pjit always did; with
  jax's newer default (Explicit) the custom-VJP weight-gradient matmuls, which contract over
  the sharded batch, would need an out_sharding spelled out at each one.
  """
  devices = devices or jax.devices()
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


class Trainer:
  """The jitted, sharded train step for one model, optimizer and loss configuration."""

  def __init__(self, graphdef: Any, optim: Any, loss_fn: LossFn, steps_per_epoch: int,
               mesh: jax.sharding.Mesh | None = None, ema_decay: float = 0.0):
    if not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"train.ema_decay must be in [0, 1), got {ema_decay}")
    self.graphdef, self.loss_fn, self.optim = graphdef, loss_fn, optim
    self.ema_decay = float(ema_decay)
    self.steps_per_epoch = steps_per_epoch
    self.schedule = make_schedule(optim, steps_per_epoch)
    self.tx = make_optimizer(optim, self.schedule)
    self.mesh = mesh or make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.term_names: tuple[str, ...] = ()  # the loss terms, known once the step is traced
    self._jitted = None

  def init_state(self, params: Any) -> TrainState:
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=self.tx.init(params), bad_step=jnp.full((), -1, jnp.int32),
                       bad_terms=jnp.zeros((), jnp.int32),
                       # A copy: the step donates the state, and one buffer cannot be
                       # donated twice.
                       ema=jax.tree.map(jnp.array, params) if self.ema_decay else None)
    return jax.device_put(state, self.replicated)

  def model_params(self, state: TrainState) -> Any:
    """The weights the run stands for: the moving average when on, else the trained ones."""
    return state.ema if self.ema_decay else state.params

  def checkpoint_items(self, state: TrainState) -> tuple[Any, TrainState]:
    """(params item, train_state item) of a checkpoint: the model's weights (model_params)
    and everything else needed to resume (the trained params too, when EMA is on)."""
    if self.ema_decay:
      return state.ema, state.replace(ema=None)
    return state.params, state.replace(params=None)

  def from_checkpoint_items(self, params: Any, rest: TrainState) -> TrainState:
    """Inverse of checkpoint_items."""
    return rest.replace(ema=params) if self.ema_decay else rest.replace(params=params)

  def lr(self, step: jax.Array | int) -> jax.Array:
    return self.schedule(step // self.optim.grad_accum_steps)

  def loss(self, params: Any, frozen: Any, batch: dict, epoch: jax.Array):
    return self.loss_fn(nnx.merge(self.graphdef, params), frozen, batch, epoch)

  def step_fn(self, state: TrainState, batch: dict, frozen: Any) -> tuple[TrainState, dict]:
    """One update (unjitted): returns the new state and the step's metrics."""
    epoch = state.step / self.steps_per_epoch
    (total, terms), grads = jax.value_and_grad(self.loss, has_aux=True)(
        state.params, frozen, batch, epoch)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    grad_norm = optax.tree.norm(grads)
    self.term_names = tuple(sorted(terms))
    bad = jnp.stack([~jnp.isfinite(terms[k]) for k in self.term_names] + [~jnp.isfinite(grad_norm)])
    ok = ~jnp.any(bad)
    first_bad = (state.bad_step < 0) & ~ok

    def keep_if_ok(new, old):
      return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

    params = optax.apply_updates(state.params, updates)
    ema = None
    if self.ema_decay:
      rate = ema_rate(self.ema_decay, state.step)
      ema = keep_if_ok(jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, state.ema, params),
                       state.ema)
    new_state = TrainState(
        step=state.step + 1,
        params=keep_if_ok(params, state.params),
        opt_state=keep_if_ok(opt_state, state.opt_state),
        bad_step=jnp.where(first_bad, state.step, state.bad_step),
        bad_terms=jnp.where(first_bad, jnp.sum(bad * 2 ** jnp.arange(bad.shape[0])), state.bad_terms
                            ).astype(jnp.int32),
        ema=ema)
    step_metrics = {**terms, "total": total, "grad_norm": grad_norm, "lr": self.lr(state.step)}
    return new_state, step_metrics

  def __call__(self, state: TrainState, batch: dict, frozen: Any) -> tuple[TrainState, dict]:
    """The jitted step; `batch` holds global arrays sharded along "data"."""
    if self._jitted is None:
      def shard(tree, sharding):
        return jax.tree.map(lambda _: sharding, tree)
      self._jitted = jax.jit(
          self.step_fn,
          in_shardings=(shard(state, self.replicated), shard(batch, self.batch_sharding),
                        shard(frozen, self.replicated)),
          out_shardings=(shard(state, self.replicated), self.replicated),
          donate_argnums=0, compiler_options=xla_options.compiler_options(
              self.mesh.devices.flat[0].platform, "train"))
    return self._jitted(state, batch, frozen)

  def global_batch(self, local: dict) -> dict:
    """Assembles every process's slice of the batch into arrays sharded along "data"."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local.items()}

  def check_finite(self, state: TrainState) -> None:
    """Raises TrainingDiverged naming the first bad step and its non-finite terms."""
    bad_step = int(jax.device_get(state.bad_step))
    if bad_step < 0:
      return
    bits = int(jax.device_get(state.bad_terms))
    names = [n for i, n in enumerate(self.term_names + (GRAD_TERM,)) if bits >> i & 1]
    raise TrainingDiverged(f"step {bad_step}: non-finite {', '.join(names)}; stopped before "
                           "saving, so the last checkpoint is the last good state")


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
    source = pretrained.load(config.train.init_weights)
    diff = model_files.config_differences(models.architecture(models.config_to_dict(source.cfg)),
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
  """Periodic validation through the evaluation code (sapnet_jax.evaluation.scoring), on process 0."""

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


class ProcessZeroError(RuntimeError):
  """What process 0 was doing for every process failed (raised on the other processes)."""


_MESSAGE_BYTES = 4096


def _broadcast_text(text: str) -> str:
  """Process 0's `text` on every process."""
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = np.frombuffer(text.encode()[:_MESSAGE_BYTES], np.uint8)
  data[:len(encoded)] = encoded
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(data[data > 0]).decode(errors="replace")


def on_process_0(fn: Callable[[], float | None], what: str) -> float:
  """Runs `fn` on process 0 only and returns its value on every process. Also a barrier:
  every process waits for it. If it fails, process 0 raises its error and every other
  process raises ProcessZeroError with the same message, instead of waiting forever."""
  value, error = None, None
  if jax.process_index() == 0:
    try:
      value = fn()
    except Exception as e:  # noqa: BLE001 - told to every process, then raised here
      error = e
  value = np.nan if value is None else float(value)
  if jax.process_count() > 1:
    message = _broadcast_text("" if error is None else f"{type(error).__name__}: {error}")
    if message and error is None:
      raise ProcessZeroError(f"{what} failed on process 0: {message}")
    if not message:  # every process knows it succeeded: one more collective for the value
      value = float(multihost_utils.broadcast_one_to_all(np.float32(value)))
  if error is not None:
    raise error
  return value


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
    full_reference.higher_is_better(config.train.val_metric)
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
  ckpts = model_files.TrainCheckpoints(fileio.join(workdir, "checkpoints"),
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
