"""Saving and loading model weights with their architecture.

Two forms:
  * an Orbax checkpoint directory (the converter's output and, later, training runs): a
    CheckpointManager root whose steps hold the items `params` and `model_config`; a step
    directory itself is accepted too;
  * a single `.npz` file (flat "a/b/kernel" keys plus the config as JSON): the form shipped
    inside the package, readable without Orbax.
Writes are atomic: Orbax commits finished steps only, and the .npz is renamed into place.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from sapnet_jax import models
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
  with ocp.CheckpointManager(os.path.abspath(path)) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params_dict(model)),
        MODEL_CONFIG: ocp.args.JsonSave(config)}), force=True)
    mngr.wait_until_finished()


def abstract_model(config: dict, **overrides) -> nnx.Module:
  cfg = models.config_from_dict({**config, **overrides})
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
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not a readable .npz weights file ({e})") from None
  if _CONFIG_KEY not in arrays:
    raise CheckpointError(f"{path}: no {_CONFIG_KEY} entry; not a sapnet_jax weights file")
  config = json.loads(str(arrays.pop(_CONFIG_KEY)))
  return fill_params(abstract_model(config, **overrides), unflatten(arrays), path)


def step_dir(path: str, step: int | None = None) -> str:
  """Resolves a CheckpointManager root to its latest (or given) step; a step dir stays as is."""
  if os.path.isdir(os.path.join(path, PARAMS)):
    return path
  steps = []
  if os.path.isdir(path):
    steps = sorted(int(d) for d in os.listdir(path)
                   if d.isdigit() and os.path.isdir(os.path.join(path, d, PARAMS)))
  if not steps:
    raise CheckpointError(f"{path}: no Orbax checkpoint with a '{PARAMS}' item found")
  if step is None:
    return os.path.join(path, str(steps[-1]))
  if step not in steps:
    raise CheckpointError(f"{path}: no checkpoint at step {step}; available steps: {steps}")
  return os.path.join(path, str(step))


def _load_orbax(path: str, overrides: dict) -> nnx.Module:
  import orbax.checkpoint as ocp  # deferred, see save_model
  step = step_dir(os.path.abspath(path))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    config = checkpointer.restore(
        step, args=ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonRestore()}))[MODEL_CONFIG]
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise CheckpointError(f"{step}: cannot read '{MODEL_CONFIG}' ({e})") from None
  model = abstract_model(config, **overrides)
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, params_dict(model))
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
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file or directory")
  if os.path.isdir(path):
    return _load_orbax(path, overrides)
  return _load_npz(path, overrides)
