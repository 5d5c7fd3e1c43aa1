"""PyTorch `.pth` files written without torch, in both formats, with any tensor header.

torch.save cannot write a negative stride or a storage that lies about its size, which is
what the reader must survive; these writers emit the same opcodes and layout as torch (see
tests/fixtures/pth_zip.pth: protocol-2 pickles, `_rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, hooks)`, uncompressed zip entries), with every field chosen by the
caller. tests/weights/test_weights_hostile.py checks that a well-formed file written here reads back
as its arrays.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field

import numpy as np

_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
             np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
             np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage"}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass
class Tensor:
  """One state_dict entry: `data` is the whole storage; the view fields default to a
  contiguous tensor over all of it."""
  data: np.ndarray
  size: tuple | None = None
  stride: tuple | None = None
  offset: int = 0
  storage_numel: int | None = None  # what the header claims; default the true count
  storage_type: str | None = None
  extra: dict = field(default_factory=dict)

  def header(self) -> tuple:
    size = self.data.shape if self.size is None else self.size
    if self.stride is None:
      stride = tuple(int(np.prod(size[i + 1:], dtype=np.int64)) for i in range(len(size)))
    else:
      stride = self.stride
    numel = self.data.size if self.storage_numel is None else self.storage_numel
    kind = self.storage_type or _STORAGES[self.data.dtype]
    return kind, numel, self.offset, tuple(size), tuple(stride)


def _int(n: int) -> bytes:
  if 0 <= n < 256:
    return b"K" + bytes([n])
  if -2**31 <= n < 2**31:
    return b"J" + struct.pack("<i", n)
  raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _str(s: str) -> bytes:
  raw = s.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def _tuple(items: list[bytes]) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _pickle(tensors: dict[str, Tensor], legacy: bool, wrap: bool = True) -> bytes:
  """The state_dict pickle; storage keys are "0", "1", ... in entry order."""
  out = [b"\x80\x02"]
  if wrap:  # {"state_dict": OrderedDict(...)}, as training scripts often save
    out += [b"}(", _str("state_dict")]
  out += [b"ccollections\nOrderedDict\n)R("]
  for key, (name, t) in enumerate(tensors.items()):
    kind, numel, offset, size, stride = t.header()
    pid = [_str("storage"), f"ctorch\n{kind}\n".encode(), _str(str(key)), _str("cpu"),
           _int(numel)]
    if legacy:
      pid.append(b"N")  # no view metadata
    out += [_str(name), b"ctorch._utils\n_rebuild_tensor_v2\n",
            _tuple([_tuple(pid) + b"Q", _int(offset), _tuple([_int(n) for n in size]),
                    _tuple([_int(s) for s in stride]), b"\x89",
                    b"ccollections\nOrderedDict\n)R"]), b"R"]
  out.append(b"u")
  if wrap:
    out.append(b"u")
  out.append(b".")
  return b"".join(out)


def zip_pth(tensors: dict[str, Tensor], root: str = "archive") -> bytes:
  """The zip format (torch >= 1.6)."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{root}/data.pkl", _pickle(tensors, legacy=False))
    zf.writestr(f"{root}/byteorder", "little")
    for key, t in enumerate(tensors.values()):
      zf.writestr(f"{root}/data/{key}", np.ascontiguousarray(t.data).tobytes())
    zf.writestr(f"{root}/version", "3\n")
  return buf.getvalue()


def legacy_pth(tensors: dict[str, Tensor]) -> bytes:
  """The legacy stream: magic, protocol, system info, the object, the storage keys, then each
  storage as an int64 element count and its bytes."""
  buf = io.BytesIO()
  for part in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
    pickle.dump(part, buf, protocol=2)
  buf.write(_pickle(tensors, legacy=True))
  pickle.dump([str(k) for k in range(len(tensors))], buf, protocol=2)
  for t in tensors.values():
    numel = t.data.size if t.storage_numel is None else t.storage_numel
    buf.write(struct.pack("<q", numel))
    buf.write(np.ascontiguousarray(t.data).tobytes())
  return buf.getvalue()


def small_state_dict(seed: int = 0) -> dict[str, Tensor]:
  """A tiny state_dict of a few dtypes and views (a transpose, an offset): the fuzz seed."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(24).astype(np.float32)
  return {"conv.weight": Tensor(w, size=(2, 3, 2, 2)),
          "conv.bias": Tensor(rng.standard_normal(2).astype(np.float32)),
          "fc.t": Tensor(rng.standard_normal(6).astype(np.float64), size=(3, 2), stride=(1, 3)),
          "bn.count": Tensor(np.array([7, 9], np.int64), size=(), stride=(), offset=1),
          "half.view": Tensor(rng.standard_normal(5).astype(np.float16), size=(3,), offset=2)}


def expected_arrays(tensors: dict[str, Tensor]) -> dict[str, np.ndarray]:
  """What a reader must return for well-formed `tensors` (computed with NumPy indexing)."""
  out = {}
  for name, t in tensors.items():
    _, _, offset, size, stride = t.header()
    index = np.full(size, offset, np.int64)
    for axis, (n, s) in enumerate(zip(size, stride)):
      shape = [1] * len(size)
      shape[axis] = n
      index = index + (np.arange(n) * s).reshape(shape)
    out[name] = t.data.reshape(-1)[index]
  return out
