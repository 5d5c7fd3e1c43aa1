"""Reads PyTorch `.pth` checkpoints into NumPy arrays without importing torch.

Two on-disk formats exist:
  * zip (torch >= 1.6): `<root>/data.pkl` is a pickle whose tensors refer to raw little-endian
    storages stored as `<root>/data/<key>`;
  * legacy (older torch; PReNet's and LPIPS's files): a stream of pickles (magic number,
    protocol version, system info, the object, the list of storage keys) followed by each
    storage as an int64 element count and its raw bytes.
In both, a tensor is `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.

Unpickling is restricted to the few globals a state_dict needs, so a crafted file cannot run
code (which `torch.load` without `weights_only` would allow). Files are opened through
`sapnet_jax.fileio`, so a path may be a URI (gs://bucket/net.pth).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from sapnet_jax import fileio

_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class PthError(ValueError):
  """A .pth file that cannot be read as a PyTorch state_dict."""


class _StorageType:
  def __init__(self, name: str):
    if name not in _DTYPES:
      raise PthError(f"unsupported tensor storage type torch.{name}")
    dtype = _DTYPES[name]
    if dtype == "bfloat16":
      import ml_dtypes  # a JAX dependency; imported only for the rare bf16 checkpoint
      dtype = ml_dtypes.bfloat16
    self.dtype = np.dtype(dtype)


class _Storage:
  """A flat typed buffer; legacy files fill it after the object pickle is read."""

  def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
    self.dtype, self.numel, self.data = dtype, numel, data


class _Tensor:
  """A view into a storage, materialized once every storage has been read."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise PthError("a tensor refers to a storage that the file does not contain")
    if not self.size:
      return data[self.offset].copy()
    needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
    if min(self.size) > 0 and needed > data.size:
      raise PthError(f"a tensor of size {self.size} overruns its storage of {data.size} elements")
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
    return np.ascontiguousarray(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *unused):
  return tensor


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file: BinaryIO, load_storage):
    super().__init__(file, encoding="latin1")
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch" and name.endswith("Storage"):
      return _StorageType(name)
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    raise PthError(f"refusing to unpickle {module}.{name}: not part of a tensor state_dict")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise PthError(f"unexpected persistent id {pid!r}")
    return self._load_storage(*pid[1:])


def _read_zip(file: BinaryIO) -> Any:
  with zipfile.ZipFile(file) as zf:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkls) != 1:
      raise PthError("zip checkpoint without a single data.pkl")
    root = pkls[0][: -len("data.pkl")]
    byteorder = root + "byteorder"
    if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
      raise PthError("big-endian checkpoints are not supported")
    cache: dict[str, _Storage] = {}

    def load_storage(storage_type, key, location, numel, *unused):
      if key not in cache:
        raw = zf.read(f"{root}data/{key}")
        data = np.frombuffer(raw, dtype=storage_type.dtype)
        cache[key] = _Storage(storage_type.dtype, data.size, data)
      return cache[key]

    with zf.open(pkls[0]) as f:
      return _Unpickler(io.BytesIO(f.read()), load_storage).load()


def _read_legacy(f: BinaryIO) -> Any:
  def plain():
    return _Unpickler(f, lambda *a: (_ for _ in ()).throw(PthError("storage in header"))).load()

  if plain() != _LEGACY_MAGIC:
    raise PthError("not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
  plain()  # protocol version
  plain()  # system info (byte order, type sizes)
  storages: dict[str, _Storage] = {}

  def load_storage(storage_type, key, location, numel, view_metadata=None):
    if view_metadata is not None:
      raise PthError("legacy storage views are not supported")
    storages.setdefault(key, _Storage(storage_type.dtype, numel))
    return storages[key]

  obj = _Unpickler(f, load_storage).load()
  for key in plain():
    storage = storages[key]
    header = f.read(8)
    if len(header) != 8:
      raise PthError(f"file ends before storage {key}")
    (numel,) = struct.unpack("<q", header)
    raw = f.read(numel * storage.dtype.itemsize)
    if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
      raise PthError(f"storage {key} is truncated or has the wrong size")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)
  return obj


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Returns the tensors of a PyTorch checkpoint as {key: array}, in file order.

  Accepts a bare state_dict or a dict wrapping one under "state_dict"/"model"/"net".
  Raises PthError naming the file when it cannot be read.
  """
  path = os.fspath(path)
  try:
    with fileio.open_read(path) as f:
      is_zip = zipfile.is_zipfile(f)
      f.seek(0)  # is_zipfile leaves the file at its end
      obj = _read_zip(f) if is_zip else _read_legacy(f)
  except PthError as e:
    raise PthError(f"{path}: {e}") from None
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as e:
    raise PthError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
  for wrapper in ("state_dict", "model", "net"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise PthError(f"{path}: expected a state_dict, found a pickled {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    if isinstance(value, _Tensor):
      try:
        out[str(key)] = value.to_numpy()
      except PthError as e:
        raise PthError(f"{path}: {key}: {e}") from None
  return out


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file (how timm weights are published) into {key: array}.

  The format is an 8-byte little-endian header length, a JSON header giving each tensor's
  dtype, shape and byte range, then the raw little-endian data; bf16 becomes float32.
  """
  path = os.fspath(path)
  try:
    with fileio.open_read(path) as f:
      (n,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(n))
      data = f.read()
  except (OSError, struct.error, ValueError) as e:
    raise PthError(f"{path}: not a readable safetensors file ({e})") from None
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    begin, end = info["data_offsets"]
    if info["dtype"] == "BF16":
      raw = np.frombuffer(data[begin:end], np.uint16).astype(np.uint32) << 16
      array = raw.view(np.float32)
    elif info["dtype"] in _SAFETENSORS_DTYPES:
      array = np.frombuffer(data[begin:end], _SAFETENSORS_DTYPES[info["dtype"]])
    else:
      raise PthError(f"{path}: {key}: unsupported safetensors dtype {info['dtype']}")
    if array.size != int(np.prod(info["shape"])):
      raise PthError(f"{path}: {key}: {array.size} values for shape {info['shape']}")
    out[key] = array.reshape(info["shape"]).copy()
  return out
