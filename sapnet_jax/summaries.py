"""Training logs: TensorBoard scalars and images, a JSON-lines copy, and a console line.

TensorBoard files go to WORKDIR/tensorboard (tensorboardX: no TensorFlow needed); every scalar
row is also appended to WORKDIR/metrics.jsonl so scripts and tests read the curve without
TensorBoard. Only process 0 writes; the other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np


class Writer:
  """Scalars and images of one run."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = os.path.join(workdir, "metrics.jsonl")
    if enabled:
      from tensorboardX import SummaryWriter  # deferred: only training writes event files
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    row = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in values.items()}}
    for key, value in row.items():
      if key != "step":
        self._tb.add_scalar(key, value, step)
    # Appended line by line: a killed run keeps every row logged before the kill.
    with open(self._jsonl, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")

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
  """The rows `Writer.scalars` appended, in order (a later run's rows follow a resumed one's)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def console_line(step: int, total: int, epoch: int, values: Mapping[str, float],
                 rates: Mapping[str, float]) -> str:
  """One concise line: progress, the loss terms, the learning rate and the speed."""
  terms = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "lr")
  lr = values.get("lr")
  speed = " ".join(f"{v:.3g} {k}" for k, v in rates.items())
  return (f"step {step}/{total} (epoch {epoch}) {terms}"
          + (f" lr {lr:.3g}" if lr is not None else "") + f" | {speed}")
