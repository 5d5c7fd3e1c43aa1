"""Training logs: TensorBoard scalars and images, a JSON-lines copy, and a console line.

TensorBoard files go to WORKDIR/tensorboard (tensorboardX: no TensorFlow needed); every scalar
row is also written to WORKDIR/metrics.jsonl so scripts and tests read the curve without
TensorBoard. Only process 0 writes; the other processes get a writer that does nothing.

WORKDIR may be a bucket (gs://...). Objects there cannot be appended to, so metrics.jsonl is
uploaded whole after every row and an event file whole at every TensorBoard flush (each a
single object upload: readers see the previous or the new version, never a partial one).
"""

from __future__ import annotations

import io
import json
from typing import Mapping

import numpy as np

from sapnet_jax.utils import fileio


class _ObjectFile:
  """A write-only event file on an object store: the bytes so far, uploaded on flush."""

  def __init__(self, path: str):
    self.path, self._buffer = path, io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    fileio.write_bytes(self.path, self._buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _ObjectFiles:
  """tensorboardX writer factory for URI schemes (its own gs:// writer needs
  google-cloud-storage; this one goes through sapnet_jax.utils.fileio like every other file)."""

  def open(self, path: str) -> _ObjectFile:
    return _ObjectFile(path)

  def directory_check(self, path: str) -> None:
    del path  # object stores have no folders to create


class Writer:
  """Scalars and images of one run."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = fileio.join(workdir, "metrics.jsonl")
    self._remote = fileio.is_remote(workdir)
    self._lines = ""  # on a bucket: the whole file, uploaded after each row
    if enabled:
      from tensorboardX import SummaryWriter, record_writer  # deferred: only training logs
      fileio.makedirs(workdir)
      if self._remote:
        scheme = workdir.split("://")[0]
        record_writer.register_writer_factory(scheme, _ObjectFiles())
        if fileio.exists(self._jsonl):  # a resumed run continues the file
          self._lines = fileio.read_text(self._jsonl)
      self._tb = SummaryWriter(fileio.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    row = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in values.items()}}
    for key, value in row.items():
      if key != "step":
        self._tb.add_scalar(key, value, step)
    line = json.dumps(row) + "\n"
    if self._remote:
      self._lines += line
      fileio.write_bytes(self._jsonl, self._lines.encode())
    else:
      # Appended line by line: a killed run keeps every row logged before the kill.
      with open(self._jsonl, "a", encoding="utf-8") as f:
        f.write(line)

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """`image`: (H, W, 3) uint8."""
    if self.enabled:
      self._tb.add_image(name, image, step, dataformats="HWC")

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()


def read_jsonl(workdir: str) -> list[dict]:
  """The rows `Writer.scalars` wrote, in order (a later run's rows follow a resumed one's)."""
  path = fileio.join(workdir, "metrics.jsonl")
  if not fileio.exists(path):
    return []
  return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]


def console_line(step: int, total: int, epoch: int, values: Mapping[str, float],
                 rates: Mapping[str, float]) -> str:
  """One concise line: progress, the loss terms, the learning rate and the speed."""
  terms = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "lr")
  lr = values.get("lr")
  speed = " ".join(f"{v:.3g} {k}" for k, v in rates.items())
  return (f"step {step}/{total} (epoch {epoch}) {terms}"
          + (f" lr {lr:.3g}" if lr is not None else "") + f" | {speed}")
