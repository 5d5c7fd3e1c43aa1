"""Work that one process does for all: process 0 runs it, its result (or its error, which
every process then raises) is broadcast, so all processes go on with the same value."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils



class ProcessZeroError(RuntimeError):
  """What process 0 was doing for every process failed (raised on the other processes)."""


_MESSAGE_BYTES = 4096


def _broadcast_text(text: str) -> str:
  """Process 0's `text` on every process."""
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = np.frombuffer(text.encode()[:_MESSAGE_BYTES], np.uint8)
  data[:len(encoded)] = encoded
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(data[data > 0]).decode(errors="replace")


def on_process_0(fn: Callable[[], float | None], what: str) -> float:
  """Runs `fn` on process 0 only and returns its value on every process. Also a barrier:
  every process waits for it. If it fails, process 0 raises its error and every other
  process raises ProcessZeroError with the same message, instead of waiting forever."""
  value, error = None, None
  if jax.process_index() == 0:
    try:
      value = fn()
    except Exception as e:  # noqa: BLE001 - told to every process, then raised here
      error = e
  value = np.nan if value is None else float(value)
  if jax.process_count() > 1:
    message = _broadcast_text("" if error is None else f"{type(error).__name__}: {error}")
    if message and error is None:
      raise ProcessZeroError(f"{what} failed on process 0: {message}")
    if not message:  # every process knows it succeeded: one more collective for the value
      value = float(multihost_utils.broadcast_one_to_all(np.float32(value)))
  if error is not None:
    raise error
  return value
