"""Saving and loading model weights with their architecture.

Two forms:
  * an Orbax checkpoint directory (the converter's output and, later, training runs): a
    CheckpointManager root whose steps hold the items `params` and `model_config`; a step
    directory itself is accepted too;
  * a single `.npz` file (flat "a/b/kernel" keys plus the config as JSON): the form shipped
    inside the package, readable without Orbax.
Paths may be local or URIs (`gs://bucket/run/checkpoints`): everything goes through
sapnet_jax.utils.fileio and Orbax, which write to buckets themselves (tensorstore for arrays).
Writes are atomic: Orbax commits finished steps only (a rename locally, a commit marker on
buckets), and the .npz is renamed into place or uploaded as one object.

Integrity: what this module writes carries a SHA-256 of its arrays (`arrays_digest`: the npz
entry `__digest__`, the Orbax item `digest`), verified at load, so a flipped bit is reported as
a corrupt file instead of giving a wrong image. Files without one (written before digests, or
by hand) still load, unverified. A truncated or malformed file raises CheckpointError naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import struct
import sys
import tokenize
import traceback
import zipfile
import zlib
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from sapnet_jax import models
from sapnet_jax.utils import fileio
from sapnet_jax.utils.fileio import atomic_write

PARAMS, MODEL_CONFIG, DIGEST = "params", "model_config", "digest"
_CONFIG_KEY, DIGEST_KEY = "__model_config__", "__digest__"
_DEFLATE_MAX_RATIO = 1032  # the most that deflate can expand a byte stream
# What zipfile, zlib and NumPy raise on a malformed archive (RuntimeError: an encrypted entry;
# TokenError: NumPy tokenizes an .npy header before parsing it).
_MALFORMED_NPZ = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, KeyError,
                  ValueError, TypeError, OverflowError, struct.error, MemoryError,
                  NotImplementedError, RuntimeError, OSError, tokenize.TokenError,
                  SyntaxError)


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


def _host(value: Any) -> np.ndarray:
  """A leaf as a host array; a replicated array of a multi-process run from its local copy."""
  if isinstance(value, jax.Array):
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
      value = jax.random.key_data(value)
    if not value.is_fully_addressable:
      if not value.is_fully_replicated:
        raise ValueError("a sharded array has no single host copy to digest")
      value = value.addressable_data(0)
  return np.asarray(value)


def arrays_digest(arrays: Mapping[str, Any]) -> str:
  """SHA-256 over the sorted names, dtypes, shapes and bytes of flat `arrays`: what a saved
  file must give back bit for bit (dtype and shape included, so a reinterpretation differs)."""
  digest = hashlib.sha256(b"sapnet_jax arrays v1\0")
  for name in sorted(arrays):
    a = np.ascontiguousarray(_host(arrays[name]))
    digest.update(f"{name}\0{a.dtype.name}\0{a.shape}\0".encode())
    digest.update(a.reshape(-1).view(np.uint8).data)
  return digest.hexdigest()


def tree_digest(tree: Any) -> str:
  """arrays_digest of a pytree (dicts, optimizer states), its leaves named by their paths."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return arrays_digest({jax.tree_util.keystr(path): leaf for path, leaf in leaves})


def config_digest(config: dict) -> str:
  return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def save_model(model: nnx.Module, path: str | os.PathLike, step: int = 0) -> None:
  """Writes `model`'s parameters and config, with their digest, to an Orbax directory or a
  `.npz` file."""
  path = os.fspath(path)
  config = models.config_to_dict(model.cfg)
  if path.endswith(".npz"):
    arrays = {k: np.asarray(v) for k, v in flatten(params_dict(model)).items()}
    arrays[_CONFIG_KEY] = np.array(json.dumps(config))
    write_npz(path, arrays)
    return
  import orbax.checkpoint as ocp  # deferred: Orbax adds ~1 s to start-up of npz-only users
  params = params_dict(model)
  with ocp.CheckpointManager(fileio.absolute(path)) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        MODEL_CONFIG: ocp.args.JsonSave(config),
        DIGEST: ocp.args.JsonSave({PARAMS: tree_digest(params),
                                   MODEL_CONFIG: config_digest(config)})}), force=True)
    mngr.wait_until_finished()


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes flat `arrays` atomically as an uncompressed .npz with their digest."""
  arrays = dict(arrays)
  arrays[DIGEST_KEY] = np.array(arrays_digest(arrays))
  with atomic_write(path) as f:
    np.savez(f, **arrays)


def _npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int) -> np.ndarray:
  """One array, read only after its header's shape is checked against the bytes the entry
  holds: NumPy allocates what the header declares before reading."""
  if info.compress_type == zipfile.ZIP_STORED:
    fits = info.file_size == info.compress_size <= archive_size
  else:
    fits = info.compress_size <= archive_size and (
        info.file_size <= _DEFLATE_MAX_RATIO * info.compress_size + 1024)
  if not fits:
    raise ValueError(f"entry {info.filename} declares more bytes than the file can hold")
  with zf.open(info) as member:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
      raise ValueError(f"entry {info.filename}: unsupported .npy version {version}")
    if dtype.hasobject:
      raise ValueError(f"entry {info.filename} holds Python objects, not numbers")
    data_bytes = info.file_size - member.tell()
    if math.prod(shape) * dtype.itemsize != data_bytes:
      raise ValueError(f"entry {info.filename}: shape {shape} of {dtype} does not fit its "
                       f"{data_bytes} bytes")
  with zf.open(info) as member:
    array = np.lib.format.read_array(member, allow_pickle=False)
    member.read()  # to the entry's end, where zipfile checks its CRC-32
  return array


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The arrays of a .npz file (a URI too), its digest verified when it has one.

  Raises CheckpointError naming the file when it is truncated, malformed or corrupt, OSError
  when it cannot be opened. Files without `__digest__` are returned unverified.
  """
  path = os.fspath(path)
  with fileio.open_read(path) as f:
    try:
      size = f.seek(0, io.SEEK_END)
      f.seek(0)
      with zipfile.ZipFile(f) as zf:
        arrays = {}
        for info in zf.infolist():
          name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
          arrays[name] = _npz_member(zf, info, size)
    except _MALFORMED_NPZ as e:
      raise CheckpointError(f"{path}: not a readable .npz file, truncated or corrupt "
                            f"({type(e).__name__}: {_one_line(e)})") from None
  if DIGEST_KEY in arrays:
    stored = str(arrays.pop(DIGEST_KEY))
    if stored != arrays_digest(arrays):
      raise CheckpointError(f"{path}: checksum mismatch: the arrays differ from those written "
                            "(the file is corrupt or was altered)")
  return arrays


def _one_line(error: BaseException, limit: int = 300) -> str:
  """An exception's message on one bounded line (tensorstore's span several)."""
  text = " ".join(str(error).split())
  return text if len(text) <= limit else text[:limit] + "..."


def abstract_model(config: dict, **overrides) -> nnx.Module:
  """The model of a stored config with `overrides`; impl="auto" is resolved for the platform
  of this process's first device, where the weights are restored."""
  cfg = models.config_from_dict({**config, **overrides})
  cfg = models.resolve_impl(cfg, jax.local_devices()[0].platform)
  return nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0)))


def fill_params(module: nnx.Module, params: Mapping[str, Any], source: str, *,
                variables: Any = nnx.Param, prefix: str = "",
                partial: bool = False) -> nnx.Module:
  """Puts `params` (nested, or flat with `a/0/kernel` keys) into an (abstract) module's
  `variables` (an nnx filter: its parameters by default, `...` for BatchNorm statistics too),
  each cast to the module's dtype, after checking names, shapes and that every array holds
  floating-point values; errors name `source`.

  Keys are `prefix + path`. With `partial`, variables without a key keep their values (the
  randomly initialised FPN decoder beside a converted encoder).
  """
  state = nnx.state(module, variables)
  current = flatten(nnx.to_pure_dict(state))
  flat = flatten(params)
  got = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  unused = sorted(set(got) - set(current)) + sorted(k for k in flat if not k.startswith(prefix))
  missing = [] if partial else sorted(set(current) - set(got))
  if missing or unused:
    raise CheckpointError(f"{source}: parameters do not match the model "
                          f"(missing: {missing[:8]}, unexpected: {unused[:8]})")
  for k, value in got.items():
    shape = tuple(current[k].shape)
    if tuple(np.shape(value)) != shape:
      raise CheckpointError(f"{source}: {k} has shape {np.shape(value)}, the model needs {shape}")
    if not jax.numpy.issubdtype(value.dtype, jax.numpy.floating):
      raise CheckpointError(f"{source}: {k} holds {value.dtype}, not floating-point weights")
    current[k] = jax.numpy.asarray(value, current[k].dtype)
  nnx.replace_by_pure_dict(state, unflatten(current))
  nnx.update(module, state)
  return module


def unflatten(flat: dict[str, Any]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(int(p) if p.isdigit() else p, {})
    node[int(leaf) if leaf.isdigit() else leaf] = value
  return tree


def _model_of(config: Any, overrides: dict, source: str) -> nnx.Module:
  try:
    if not isinstance(config, dict):
      raise ValueError(f"a {type(config).__name__}, not a dict")
    return abstract_model(config, **overrides)
  except (ValueError, TypeError, KeyError) as e:
    raise CheckpointError(
        f"{source}: the stored model config is invalid ({_one_line(e)})") from None


def _load_npz(path: str, overrides: dict) -> nnx.Module:
  arrays = read_npz(path)
  if _CONFIG_KEY not in arrays:
    raise CheckpointError(f"{path}: no {_CONFIG_KEY} entry; not a sapnet_jax weights file")
  try:
    config = json.loads(str(arrays.pop(_CONFIG_KEY)))
  except ValueError as e:
    raise CheckpointError(f"{path}: the stored model config is not JSON ({e})") from None
  return fill_params(_model_of(config, overrides, path), unflatten(arrays), path)


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


def _quiet_abandoned_reads() -> None:
  """When one array of a corrupt checkpoint fails, Orbax abandons the reads of the others: as
  coroutines whose own failures Python prints as "Exception ignored ... Traceback" whenever
  they are collected, as tensorstore reads that finish after its event loop closed
  (`_late_read`), and as futures whose exception nobody retrieved (asyncio's log), possibly
  after the one-line error and in other threads. Those reports go to
  the debug log instead; every other report keeps the hook it had."""
  previous = sys.unraisablehook
  if getattr(previous, "_sapnet_quiet_orbax", False):
    return

  def hook(report) -> None:
    code = getattr(report.object, "cr_code", None)
    if (code is not None and "orbax" in code.co_filename) or _late_read(report):
      logging.debug("abandoned checkpoint read: %s", report.exc_value)
    else:
      previous(report)

  hook._sapnet_quiet_orbax = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_not_an_abandoned_read)


def _not_an_abandoned_read(record: logging.LogRecord) -> bool:
  """False for asyncio's "exception was never retrieved" about a read in Orbax's code (the
  third way an abandoned read reports itself), which then goes to the debug log."""
  error = record.exc_info[1] if record.exc_info else None
  frames = traceback.extract_tb(error.__traceback__) if error is not None else []
  if any("orbax" in frame.filename for frame in frames):
    logging.debug("abandoned checkpoint read: %s", error)
    return False
  return True


def _late_read(report) -> bool:
  """tensorstore finishing such a read after Orbax closed its event loop: native code calls
  call_soon_threadsafe, and reports the error with no object and asyncio's frames alone."""
  frames = traceback.extract_tb(report.exc_traceback)
  return (report.object is None and report.exc_type is RuntimeError
          and str(report.exc_value) == "Event loop is closed" and bool(frames)
          and frames[0].filename.endswith(os.path.join("asyncio", "base_events.py")))


def _load_orbax(path: str, overrides: dict) -> nnx.Module:
  import orbax.checkpoint as ocp  # deferred, see save_model
  step = step_dir(fileio.absolute(path))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  wanted = {MODEL_CONFIG: ocp.args.JsonRestore()}
  has_digest = fileio.is_dir(fileio.join(step, DIGEST))
  if has_digest:
    wanted[DIGEST] = ocp.args.JsonRestore()
  try:
    stored = checkpointer.restore(step, args=ocp.args.Composite(**wanted))
  except Exception as e:  # noqa: BLE001 - Orbax and tensorstore raise many kinds, even bare
    raise CheckpointError(f"{step}: cannot read '{MODEL_CONFIG}', the checkpoint is truncated "
                          f"or corrupt ({_one_line(e)})") from None
  config, digest = stored[MODEL_CONFIG], stored[DIGEST] if has_digest else None
  if digest is not None and (not isinstance(digest, dict) or not isinstance(config, dict)
                             or digest.get(MODEL_CONFIG) != config_digest(config)):
    raise CheckpointError(f"{step}: checksum mismatch in '{MODEL_CONFIG}' (the checkpoint is "
                          "corrupt or was altered)")
  model = _model_of(config, overrides, step)
  # Onto this process's first device, whatever topology saved it (a pod's run, 4 CPU devices):
  # without a sharding Orbax restores only onto the saving topology.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                        params_dict(model))
  _quiet_abandoned_reads()
  try:
    params = checkpointer.restore(
        step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(target)}))[PARAMS]
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{step}: parameters do not fit the stored model config or are "
                          f"corrupt ({_one_line(e)})") from None
  except Exception as e:  # noqa: BLE001 - tensorstore reports a truncated file as a bare Exception
    raise CheckpointError(f"{step}: cannot read '{PARAMS}', the checkpoint is truncated or "
                          f"corrupt ({_one_line(e)})") from None
  if digest is not None and digest.get(PARAMS) != tree_digest(params):
    raise CheckpointError(f"{step}: checksum mismatch in '{PARAMS}': the arrays differ from "
                          "those written (the checkpoint is corrupt or was altered)")
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


