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
`sapnet_jax.utils.fileio`, so a path may be a URI (gs://bucket/net.pth).
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from sapnet_jax.utils import fileio

_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MAX_DIMS = 64  # torch's own limit on a tensor's dimensions


class PthError(ValueError):
  """A .pth file that cannot be read as a PyTorch state_dict."""


class _StorageType:
  def __init__(self, name: str):
    if name not in _DTYPES:
      raise PthError(f"unsupported tensor storage type torch.{_short(name)}")
    dtype = _DTYPES[name]
    if dtype == "bfloat16":
      import ml_dtypes  # a JAX dependency; imported only for the rare bf16 checkpoint
      dtype = ml_dtypes.bfloat16
    self.dtype = np.dtype(dtype)


class _Storage:
  """A flat typed buffer; legacy files fill it after the object pickle is read."""

  def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
    self.dtype, self.numel, self.data = dtype, numel, data


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
  """A bounded repr for error messages: a crafted file may hold huge or deep objects."""
  return reprlib.repr(value)


class _Tensor:
  """A view into a storage, materialized once every storage has been read."""

  def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def to_numpy(self) -> np.ndarray:
    """Checks the view against its storage before touching memory: the header is the file's
    word, and NumPy's strided views trust it (a negative stride read outside the buffer and
    crashed the process; a zero stride made a 1 GiB array from a few bytes)."""
    storage, offset, size, stride = self.storage, self.offset, self.size, self.stride
    if not isinstance(storage, _Storage):
      raise PthError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    data = storage.data
    if data is None:
      raise PthError("a tensor refers to a storage that the file does not contain")
    if not (_is_int(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and all(map(_is_int, size + stride)) and len(size) == len(stride) <= _MAX_DIMS):
      raise PthError(f"malformed tensor header (offset {_short(offset)}, size {_short(size)}, "
                     f"stride {_short(stride)})")
    if offset < 0 or any(n < 0 for n in size):
      raise PthError(f"negative offset or size (offset {offset}, size {size})")
    for n, s in zip(size, stride):
      if s < 0:
        raise PthError(f"negative stride {s} (size {size}, stride {stride})")
      if s == 0 and n > 1:
        raise PthError(f"zero stride in a dimension of size {n}: an expanded tensor, which a "
                       "state_dict does not hold")
    numel = math.prod(size)
    if numel == 0:
      if offset > data.size:
        raise PthError(f"offset {offset} is beyond its storage of {data.size} elements")
      return np.empty(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if numel > data.size or last >= data.size:
      raise PthError(f"a tensor of size {size}, stride {stride}, offset {offset} overruns its "
                     f"storage of {data.size} elements")
    if not size:
      return np.array(data[offset])
    item = data.dtype.itemsize
    # Every index is now inside the buffer; a dimension of size 1 never moves, so its stride
    # (unchecked above and possibly huge) is not passed on.
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=[s * item if n > 1 else 0 for n, s in zip(size, stride)])
    return np.ascontiguousarray(view)


def _rebuild_tensor(storage=None, offset=None, size=None, stride=None, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor=None, *unused):
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
    raise PthError(f"refusing to unpickle {_short(module)}.{_short(name)}: not part of a "
                   "tensor state_dict")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise PthError(f"unexpected persistent id {_short(pid)}")
    storage_type, key, _, numel, *view = pid[1:] + (None,) * max(0, 5 - len(pid))
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not (
        _is_int(numel) and numel >= 0):
      raise PthError(f"malformed storage reference {_short(pid)}")
    return self._load_storage(storage_type.dtype, key, numel, view[0] if view else None)


def _unpickle(f: io.BytesIO, load_storage) -> Any:
  """Unpickles the next pickle of `f` after a scan of its opcodes: the C unpickler sizes its
  memo by the largest index a PUT names (10 bytes could make it clear gigabytes), so indices
  must stay below the count of opcodes read, as every pickler writes them."""
  start = f.tell()
  for count, (op, arg, _) in enumerate(pickletools.genops(f)):
    if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= count:
      raise PthError(f"pickle memo index {arg} out of range")
    if op.name == "STOP":
      break
  f.seek(start)
  return _Unpickler(f, load_storage).load()


def _no_storage(*unused):
  raise PthError("a storage in the legacy header")


def _entry(zf: zipfile.ZipFile, name: str, archive_size: int) -> bytes:
  """An entry's bytes once its sizes are known to fit the archive: torch stores entries
  uncompressed, so a compressed or oversized one is a crafted file, not a checkpoint."""
  try:
    info = zf.getinfo(name)
  except KeyError:
    raise PthError(f"the archive has no entry {name}") from None
  if info.compress_type != zipfile.ZIP_STORED or not (
      info.file_size == info.compress_size <= archive_size):
    raise PthError(f"entry {name} is compressed or larger than the file; torch stores them "
                   "uncompressed")
  return zf.read(info)


def _read_zip(file: BinaryIO, archive_size: int) -> Any:
  with zipfile.ZipFile(file) as zf:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkls) != 1:
      raise PthError("zip checkpoint without a single data.pkl")
    root = pkls[0][: -len("data.pkl")]
    byteorder = root + "byteorder"
    if byteorder in zf.namelist() and _entry(zf, byteorder, archive_size).strip() != b"little":
      raise PthError("big-endian checkpoints are not supported")
    cache: dict[str, _Storage] = {}

    def load_storage(dtype, key, numel, unused_view):
      if key not in cache:
        raw = _entry(zf, f"{root}data/{key}", archive_size)
        if len(raw) != numel * dtype.itemsize:
          raise PthError(f"storage {key} holds {len(raw)} bytes, its reference says {numel} "
                         f"elements of {dtype.itemsize} bytes")
        cache[key] = _Storage(dtype, numel, np.frombuffer(raw, dtype=dtype))
      if cache[key].dtype != dtype:
        raise PthError(f"storage {key} is referenced with two dtypes")
      return cache[key]

    return _unpickle(io.BytesIO(_entry(zf, pkls[0], archive_size)), load_storage)


def _read_legacy(f: io.BytesIO) -> Any:
  if _unpickle(f, _no_storage) != _LEGACY_MAGIC:
    raise PthError("not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
  _unpickle(f, _no_storage)  # protocol version
  _unpickle(f, _no_storage)  # system info (byte order, type sizes)
  size = len(f.getbuffer())
  storages: dict[str, _Storage] = {}

  def load_storage(dtype, key, numel, view_metadata):
    if view_metadata is not None:
      raise PthError("legacy storage views are not supported")
    storage = storages.setdefault(key, _Storage(dtype, numel))
    if (storage.dtype, storage.numel) != (dtype, numel):
      raise PthError(f"storage {key} is referenced with two types or sizes")
    return storage

  obj = _unpickle(f, load_storage)
  keys = _unpickle(f, _no_storage)
  if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
    raise PthError("malformed list of storage keys")
  for key in keys:
    storage = storages.get(key)
    if storage is None:
      raise PthError(f"storage {_short(key)} is listed but no tensor refers to it")
    header = f.read(8)
    if len(header) != 8:
      raise PthError(f"file ends before storage {key}")
    (numel,) = struct.unpack("<q", header)
    nbytes = numel * storage.dtype.itemsize
    if numel != storage.numel or not 0 <= nbytes <= size - f.tell():
      raise PthError(f"storage {key} is truncated or has the wrong size ({numel} elements "
                     f"declared, {storage.numel} referenced, {size - f.tell()} bytes left)")
    storage.data = np.frombuffer(f.read(nbytes), dtype=storage.dtype)
  return obj


# What a malformed file can raise from zipfile, pickle, struct and NumPy, besides PthError
# (RuntimeError: zipfile's answer to an entry flagged as encrypted).
_MALFORMED = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
              KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError,
              struct.error, RecursionError, MemoryError, NotImplementedError, RuntimeError)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Returns the tensors of a PyTorch checkpoint as {key: array}, in file order.

  Accepts a bare state_dict or a dict wrapping one under "state_dict"/"model"/"net".
  Every tensor's dtype, offset, size and stride are checked against its storage, and each
  storage against the bytes the file holds, before any array is made. Raises PthError naming
  the file when it cannot be read (OSError when it cannot be opened).
  """
  path = os.fspath(path)
  with fileio.open_read(path) as f:
    try:
      is_zip = zipfile.is_zipfile(f)
      size = f.seek(0, io.SEEK_END)
      f.seek(0)  # is_zipfile leaves the file at its end
      # The legacy stream is read whole: it is small (older torch), and in memory every
      # count the file declares is bounded by the bytes it has.
      obj = _read_zip(f, size) if is_zip else _read_legacy(io.BytesIO(f.read()))
      if not isinstance(obj, dict):
        raise PthError(f"expected a state_dict, found a pickled {type(obj).__name__}")
      for wrapper in ("state_dict", "model", "net"):
        if isinstance(obj.get(wrapper), dict):
          obj = obj[wrapper]
      out = {}
      for key, value in obj.items():
        if isinstance(value, _Tensor):
          try:
            out[str(key)] = value.to_numpy()
          except PthError as e:
            raise PthError(f"{_short(key)}: {e}") from None
      return out
    except PthError as e:
      raise PthError(f"{path}: {e}") from None
    except _MALFORMED as e:
      raise PthError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                     f"{_short(str(e))})") from None
    except OSError as e:  # a seek or read that a corrupt zip directory sent astray
      raise PthError(f"{path}: cannot be read as a PyTorch checkpoint ({e})") from None


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
  with fileio.open_read(path) as f:
    try:
      size = f.seek(0, io.SEEK_END)
      f.seek(0)
      (n,) = struct.unpack("<Q", f.read(8))
      if n > size - 8:  # checked before reading: the header length is the file's claim
        raise PthError(f"header of {n} bytes in a file of {size}")
      header = json.loads(f.read(n))
      data = f.read()
      if not isinstance(header, dict):
        raise PthError("the header is not a JSON object")
      out = {}
      for key, info in header.items():
        if key == "__metadata__":
          continue
        begin, end = info["data_offsets"]
        shape = info["shape"]
        if not (_is_int(begin) and _is_int(end) and 0 <= begin <= end <= len(data)
                and isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
          raise PthError(f"{_short(key)}: malformed entry {_short(info)}")
        if info["dtype"] == "BF16":
          raw = np.frombuffer(data[begin:end], np.uint16).astype(np.uint32) << 16
          array = raw.view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
          array = np.frombuffer(data[begin:end], _SAFETENSORS_DTYPES[info["dtype"]])
        else:
          raise PthError(f"{_short(key)}: unsupported safetensors dtype {_short(info['dtype'])}")
        if array.size != math.prod(shape):
          raise PthError(f"{_short(key)}: {array.size} values for shape {_short(shape)}")
        out[key] = array.reshape(shape).copy()
      return out
    except PthError as e:
      raise PthError(f"{path}: {e}") from None
    except (*_MALFORMED, OSError) as e:
      raise PthError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                     f"{_short(str(e))})") from None
