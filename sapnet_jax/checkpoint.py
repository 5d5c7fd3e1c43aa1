"""Saving and loading model weights with their architecture.

Two forms:
  * an Orbax checkpoint directory (the converter's output and, later, training runs): a
    CheckpointManager root whose steps hold the items `params` and `model_config`; a step
    directory itself is accepted too;
  * a single `.npz` file (flat "a/b/kernel" keys plus the config as JSON): the form shipped
    inside the package, readable without Orbax.
Paths may be local or URIs (`gs://bucket/run/checkpoints`): everything goes through
sapnet_jax.fileio and Orbax, which write to buckets themselves (tensorstore for arrays).
Writes are atomic: Orbax commits finished steps only (a rename locally, a commit marker on
buckets), and the .npz is renamed into place or uploaded as one object.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from sapnet_jax import fileio, metrics, models
from sapnet_jax.fileio import atomic_write

PARAMS, MODEL_CONFIG = "params", "model_config"
_CONFIG_KEY = "__model_config__"


class CheckpointError(ValueError):
  """A checkpoint that is missing, unreadable, or does not fit its model config."""


def params_dict(model: nnx.Module) -> dict:
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def save_model(model: nnx.Module, path: str | os.PathLike, step: int = 0) -> None:
  """Writes `model`'s parameters and config to an Orbax directory or a `.npz` file."""
  path = os.fspath(path)
  config = models.config_to_dict(model.cfg)
  if path.endswith(".npz"):
    arrays = {k: np.asarray(v) for k, v in flatten(params_dict(model)).items()}
    arrays[_CONFIG_KEY] = np.array(json.dumps(config))
    with atomic_write(path) as f:
      np.savez(f, **arrays)
    return
  import orbax.checkpoint as ocp  # deferred: Orbax adds ~1 s to start-up of npz-only users
  with ocp.CheckpointManager(fileio.absolute(path)) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params_dict(model)),
        MODEL_CONFIG: ocp.args.JsonSave(config)}), force=True)
    mngr.wait_until_finished()


def abstract_model(config: dict, **overrides) -> nnx.Module:
  """The model of a stored config with `overrides`; impl="auto" is resolved for the platform
  of this process's first device, where the weights are restored."""
  cfg = models.config_from_dict({**config, **overrides})
  cfg = models.resolve_impl(cfg, jax.local_devices()[0].platform)
  return nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0)))


def fill_params(model: nnx.Module, params: dict, source: str) -> nnx.Module:
  """Puts `params` into an (abstract) model after checking names and shapes."""
  state = nnx.state(model, nnx.Param)
  want = {k: v.shape for k, v in flatten(nnx.to_pure_dict(state)).items()}
  got = flatten(params)
  missing, unused = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or unused:
    raise CheckpointError(f"{source}: parameters do not match the model config "
                          f"(missing: {missing[:8]}, unexpected: {unused[:8]})")
  for k, shape in want.items():
    if tuple(np.shape(got[k])) != tuple(shape):
      raise CheckpointError(f"{source}: {k} has shape {np.shape(got[k])}, the model needs {shape}")
  nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, unflatten(got)))
  nnx.update(model, state)
  return model


def unflatten(flat: dict[str, Any]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(int(p) if p.isdigit() else p, {})
    node[int(leaf) if leaf.isdigit() else leaf] = value
  return tree


def _load_npz(path: str, overrides: dict) -> nnx.Module:
  try:
    with fileio.open_read(path) as f, np.load(f, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not a readable .npz weights file ({e})") from None
  if _CONFIG_KEY not in arrays:
    raise CheckpointError(f"{path}: no {_CONFIG_KEY} entry; not a sapnet_jax weights file")
  config = json.loads(str(arrays.pop(_CONFIG_KEY)))
  return fill_params(abstract_model(config, **overrides), unflatten(arrays), path)


def saved_steps(path: str) -> list[int]:
  """The committed steps (those with a `params` item) under a CheckpointManager root, sorted;
  [] when there is none or no such folder."""
  path = os.fspath(path)
  if not fileio.is_dir(path):
    return []
  return sorted(int(d) for d in fileio.listdir(path)
                if d.isdigit() and fileio.is_dir(fileio.join(path, d, PARAMS)))


def step_dir(path: str, step: int | None = None) -> str:
  """Resolves a CheckpointManager root to its latest (or given) step; a step dir stays as is."""
  path = os.fspath(path)
  if fileio.is_dir(fileio.join(path, PARAMS)):
    return path
  steps = saved_steps(path)
  if not steps:
    raise CheckpointError(f"{path}: no Orbax checkpoint with a '{PARAMS}' item found")
  if step is None:
    return fileio.join(path, str(steps[-1]))
  if step not in steps:
    raise CheckpointError(f"{path}: no checkpoint at step {step}; available steps: {steps}")
  return fileio.join(path, str(step))


def _load_orbax(path: str, overrides: dict) -> nnx.Module:
  import orbax.checkpoint as ocp  # deferred, see save_model
  step = step_dir(fileio.absolute(path))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    config = checkpointer.restore(
        step, args=ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonRestore()}))[MODEL_CONFIG]
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise CheckpointError(f"{step}: cannot read '{MODEL_CONFIG}' ({e})") from None
  model = abstract_model(config, **overrides)
  # Onto this process's first device, whatever topology saved it (a pod's run, 4 CPU devices):
  # without a sharding Orbax restores only onto the saving topology.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                        params_dict(model))
  try:
    params = checkpointer.restore(
        step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{step}: parameters do not fit the stored model config ({e})") from None
  return fill_params(model, params, step)


def load_model(path: str | os.PathLike, **overrides) -> nnx.Module:
  """Loads a model from an Orbax checkpoint directory or a `.npz` weights file.

  `overrides` replace config fields that do not change the weights (e.g. scan=True).
  """
  path = os.fspath(path)
  if not fileio.exists(path):
    raise CheckpointError(f"{path}: no such file or directory")
  if fileio.is_dir(path):
    return _load_orbax(path, overrides)
  return _load_npz(path, overrides)


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
  model checkpoint), `train_state` (step, optimizer state), `config` (the experiment config)
  and `data` (the input iterator's state, one file per process). Keeps the `keep` latest steps
  plus the best by `val_metric` (higher or lower is better as sapnet_jax.metrics says for that
  name); saves are asynchronous where Orbax supports it and only committed steps are ever read
  back. Every JAX process must make the same calls (Orbax synchronises them).
  """

  TRAIN_STATE, CONFIG, DATA = "train_state", "config", "data"

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               compare: Callable[[dict], dict] = lambda model_config: model_config,
               val_metric: str = "psnr_rgb"):
    """`compare` maps a model config to the fields a resumed run must agree on."""
    import orbax.checkpoint as ocp  # deferred, see save_model
    from orbax.checkpoint import checkpoint_managers as policies
    self._ocp, self._compare, self.val_metric = ocp, compare, val_metric
    mode = "max" if metrics.higher_is_better(val_metric) else "min"
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
    items = {PARAMS: ocp.args.StandardSave(params), self.TRAIN_STATE: ocp.args.StandardSave(train_state),
             MODEL_CONFIG: ocp.args.JsonSave(model_config), self.CONFIG: ocp.args.JsonSave(config)}
    if data_iterator is not None:
      import grain.checkpoint  # deferred: grain only for runs that checkpoint a data iterator
      snapshot = _FrozenIteratorState(data_iterator, data_iterator.get_state())
      items[self.DATA] = grain.checkpoint.CheckpointSave(snapshot)
    scores = None if val is None else {self.val_metric: float(val)}
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=scores, force=True)

  def restore_latest(self, params: dict, train_state: Any, model_config: dict,
                     data_iterator: Any = None,
                     check_config: Callable[[dict], list[str]] | None = None,
                     ) -> tuple[int, dict, Any] | None:
    """Restores the newest readable step into the given structures; None if there is none.

    A step that cannot be read is skipped with a warning (the previous one is tried); a step
    written for another model config, or whose stored experiment config `check_config` finds
    incompatible (it returns the differing fields), raises CheckpointError listing them.
    """
    ocp = self._ocp
    for step in sorted(self.manager.all_steps(), reverse=True):
      wanted = {MODEL_CONFIG: ocp.args.JsonRestore()}
      if check_config is not None:
        wanted[self.CONFIG] = ocp.args.JsonRestore()
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
      items = {PARAMS: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, params)),
               self.TRAIN_STATE: ocp.args.StandardRestore(
                   jax.tree.map(ocp.utils.to_shape_dtype_struct, train_state))}
      if data_iterator is not None:
        import grain.checkpoint  # deferred, see save
        items[self.DATA] = grain.checkpoint.CheckpointRestore(_FrozenIteratorState(data_iterator))
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying the previous one",
                        step, self.directory, e)
        continue
      return step, restored[PARAMS], restored[self.TRAIN_STATE]
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
