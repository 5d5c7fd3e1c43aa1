"""Orbax checkpoints of a training run: parameters, optimizer state, experiment config and the
input iterator's position, with a digest verified at restore; the latest steps plus the best."""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import jax

from sapnet_jax.metrics import conventions
from sapnet_jax.utils import fileio
from sapnet_jax.weights.model_files import (DIGEST, MODEL_CONFIG, PARAMS, CheckpointError,
                                            config_digest, tree_digest)


class _FrozenIteratorState:
  """What grain's Orbax handler saves: the iterator's state at the moment of the save call.

  Async saves may run the handler later, when the live iterator has moved on; a snapshot
  keeps a resumed run on exactly the batches it would have seen.
  """

  def __init__(self, iterator: Any, state: Any = None):
    self._iterator, self._state = iterator, state

  def get_state(self) -> bytes:
    return json.dumps(self._state).encode()

  def set_state(self, state: bytes) -> None:
    self._iterator.set_state(json.loads(state.decode()))

  def start_prefetch(self) -> None:
    getattr(self._iterator, "start_prefetch", lambda: None)()


def config_differences(stored: dict, current: dict) -> list[str]:
  keys = sorted(set(stored) | set(current))
  return [f"{k}: checkpoint {stored.get(k)!r}, config {current.get(k)!r}"
          for k in keys if stored.get(k) != current.get(k)]


class TrainCheckpoints:
  """Orbax checkpoints of a training run in WORKDIR/checkpoints.

  Each step holds the items `params` and `model_config` (so `load_model` reads it like any
  model checkpoint), `train_state` (step, optimizer state), `config` (the experiment config),
  `data` (the input iterator's state, one file per process) and `digest` (SHA-256 of the
  params, the train state and the model config, verified by restore_latest and load_model).
  Keeps the `keep` latest steps plus the best by `val_metric` (higher or lower is better as
  sapnet_jax.metrics.conventions says for that name); saves are asynchronous where Orbax
  supports it and only committed steps are ever read back. Every JAX process must make the same
  calls (Orbax synchronises them).
  """

  TRAIN_STATE, CONFIG, DATA = "train_state", "config", "data"

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               compare: Callable[[dict], dict] = lambda model_config: model_config,
               val_metric: str = "psnr_rgb"):
    """`compare` maps a model config to the fields a resumed run must agree on."""
    import orbax.checkpoint as ocp  # deferred, see save_model
    from orbax.checkpoint import checkpoint_managers as policies
    self._ocp, self._compare, self.val_metric = ocp, compare, val_metric
    mode = "max" if conventions.higher_is_better(val_metric) else "min"
    self.directory = fileio.absolute(directory)

    def score(step_metrics: dict) -> float:
      return step_metrics[val_metric]

    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        # best_fn makes Orbax write each step's metrics, so the best survives a restart; the
        # policy (which overrides best_fn's own deletion) keeps the latest `keep` plus it.
        best_fn=score, best_mode=mode,
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=score, reverse=mode == "min", n=1,
                           keep_checkpoints_without_metrics=False)])))

  def best_step(self) -> int | None:
    """The step with the best validation value among those on disk (None before any)."""
    return self.manager.best_step()

  def save(self, step: int, params: dict, train_state: Any, model_config: dict, config: dict,
           data_iterator: Any = None, val: float | None = None) -> None:
    """`val`: the step's validation value of `val_metric`, if it was validated."""
    ocp = self._ocp
    items = {PARAMS: ocp.args.StandardSave(params),
             self.TRAIN_STATE: ocp.args.StandardSave(train_state),
             MODEL_CONFIG: ocp.args.JsonSave(model_config), self.CONFIG: ocp.args.JsonSave(config)}
    if data_iterator is not None:
      import grain.checkpoint  # deferred: grain only for runs that checkpoint a data iterator
      snapshot = _FrozenIteratorState(data_iterator, data_iterator.get_state())
      items[self.DATA] = grain.checkpoint.CheckpointSave(snapshot)
    try:  # on the host at the call, like the snapshot: the live arrays move on
      items[DIGEST] = ocp.args.JsonSave({
          PARAMS: tree_digest(params), self.TRAIN_STATE: tree_digest(train_state),
          MODEL_CONFIG: config_digest(model_config)})
    except ValueError as e:  # sharded state (no single host copy): saved unverified
      logging.info("checkpoint step %d is saved without a digest (%s)", step, e)
    scores = None if val is None else {self.val_metric: float(val)}
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=scores, force=True)

  def restore_latest(self, params: dict, train_state: Any, model_config: dict,
                     data_iterator: Any = None,
                     check_config: Callable[[dict], list[str]] | None = None,
                     ) -> tuple[int, dict, Any] | None:
    """Restores the newest readable step into the given structures; None if there is none.

    A step that cannot be read, or whose arrays fail their digest, is skipped with a warning
    (the previous one is tried); a step written for another model config, or whose stored
    experiment config `check_config` finds incompatible (it returns the differing fields),
    raises CheckpointError listing them.
    """
    ocp = self._ocp
    for step in sorted(self.manager.all_steps(), reverse=True):
      wanted = {MODEL_CONFIG: ocp.args.JsonRestore()}
      if check_config is not None:
        wanted[self.CONFIG] = ocp.args.JsonRestore()
      has_digest = fileio.is_dir(fileio.join(self.directory, str(step), DIGEST))
      if has_digest:
        wanted[DIGEST] = ocp.args.JsonRestore()
      try:
        stored_items = self.manager.restore(step, args=ocp.args.Composite(**wanted))
      except Exception as e:  # noqa: BLE001 - any unreadable step falls back to the previous
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying the previous one",
                        step, self.directory, e)
        continue
      stored = stored_items[MODEL_CONFIG]
      diff = config_differences(self._compare(stored), self._compare(model_config))
      if check_config is not None:
        diff += check_config(stored_items[self.CONFIG])
      if diff:
        raise CheckpointError(f"{self.directory}: checkpoint step {step} is for another model "
                              "or training config; differing fields: " + "; ".join(diff))
      shape_of = ocp.utils.to_shape_dtype_struct
      items = {PARAMS: ocp.args.StandardRestore(jax.tree.map(shape_of, params)),
               self.TRAIN_STATE: ocp.args.StandardRestore(jax.tree.map(shape_of, train_state))}
      if data_iterator is not None:
        import grain.checkpoint  # deferred, see save
        items[self.DATA] = grain.checkpoint.CheckpointRestore(_FrozenIteratorState(data_iterator))
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying the previous one",
                        step, self.directory, e)
        continue
      digest = stored_items[DIGEST] if has_digest else None
      if digest is not None and (
          not isinstance(digest, dict) or digest.get(MODEL_CONFIG) != config_digest(stored)
          or digest.get(PARAMS) != tree_digest(restored[PARAMS])
          or digest.get(self.TRAIN_STATE) != tree_digest(restored[self.TRAIN_STATE])):
        logging.warning("checkpoint step %d in %s fails its checksum (corrupt); trying the "
                        "previous one", step, self.directory)
        continue
      return step, restored[PARAMS], restored[self.TRAIN_STATE]
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
