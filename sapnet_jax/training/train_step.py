"""The train state and one sharded, jitted training step, with its Optax schedule and optimizer.

One code path from 1 CPU to a TPU pod: the step is `jax.jit` with in/out shardings over a
`jax.sharding.Mesh` with one axis, "data"; parameters and optimizer state are replicated, the
batch is split along it, and the state is donated. Each process feeds its own slice of the
global batch (`jax.make_array_from_process_local_data`).

A step whose loss terms or gradients are not finite leaves the state unchanged and records the
step and the offending terms (`TrainingDiverged` is what the loop raises on them)."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sapnet_jax.runtime import xla_options


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
    return self.jitted(state, batch, frozen)(state, batch, frozen)

  def jitted(self, state: TrainState, batch: dict, frozen: Any) -> Callable:
    """The jitted step function, built once for arguments of this structure. Its
    `.lower(state, batch, frozen).compile()` is the program __call__ runs, whose
    `cost_analysis()` benchmarks/accelerator.py reads."""
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
    return self._jitted

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
