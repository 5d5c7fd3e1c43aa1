"""Real servers for the serve tests: the app under uvicorn in this process, or the command
`python -m sapnet_jax.serve` as a subprocess, each on a free 127.0.0.1 port; and the tiny
random network they serve (quick to compile, so the tests are about the server)."""

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import httpx
import numpy as np
import uvicorn
from flax import nnx
from PIL import Image

from sapnet_jax.models import pdu
from support.paths import REPO
from support.ports import free_port


def png_bytes(array: np.ndarray) -> bytes:
  """An (H, W, 3) uint8 array as a PNG file's bytes: an upload."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
  """An answered image's RGB pixels."""
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def tiny_model() -> pdu.PDUNet:
  cfg = pdu.PDUConfig(channels=4, reduction=2, stages=2, num_blocks=2)
  return pdu.PDUNet(cfg, rngs=nnx.Rngs(0))


@contextlib.contextmanager
def live(app, **config) -> Iterator[str]:
  """`app` under a real uvicorn (with `config`: uvicorn.Config's keywords) on a free
  127.0.0.1 port, in a thread of this process; yields its URL."""
  port = free_port()
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                         **config))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
    time.sleep(0.05)
  try:
    yield f"http://127.0.0.1:{port}"
  finally:
    server.should_exit = True
    thread.join(10)


@contextlib.contextmanager
def serve_command(flags: list[str], env: dict[str, str] | None = None,
                  start_s: float = 120
                  ) -> Iterator[tuple[str, Callable[[], str], subprocess.Popen]]:
  """`python -m sapnet_jax.serve --port P --no-compile-cache FLAGS` with `env` added to the
  environment; yields (its URL on 127.0.0.1, a function giving its output so far, the
  process) once /healthz answers, and stops it at the end."""
  port = free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "sapnet_jax.serve", "--port", str(port), "--no-compile-cache",
       *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      env={**os.environ, **(env or {})})
  lines: list[bytes] = []
  reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
  reader.start()

  def output() -> str:
    return b"".join(lines).decode(errors="replace")

  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + start_s
    while True:
      assert process.poll() is None, f"the server exited: {output()[-2000:]}"
      assert time.monotonic() < deadline, f"the server did not start: {output()[-2000:]}"
      try:
        if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
          break
      except httpx.TransportError:
        time.sleep(0.2)
    yield url, output, process
  finally:
    process.terminate()
    try:
      process.wait(20)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait(5)
