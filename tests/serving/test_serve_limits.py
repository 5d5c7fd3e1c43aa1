"""What a client can make the server spend is bounded by the operator (docs/serve.md, Limits):
programs compiled, pixels per request, a small request's wait behind a large one, the queue,
the deadline, work for a client that left, the compile cache on disk, and shutdown time.

A tiny random model keeps compiles short; the server is a real uvicorn on a free 127.0.0.1
port (in a thread, or `python -m sapnet_jax.serve` as a subprocess where the command itself is
under test). Large images are made slow on purpose with small tiles, so that "still running"
and "stopped" can be told apart by the batcher's device-call count and by CPU time.
"""

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx
import jax
import numpy as np
import pytest
from flax import nnx
from starlette.testclient import TestClient

from support import live_servers
from support.paths import REPO
from support.live_servers import png_bytes
from support.ports import free_port
from sapnet_jax import infer, serve
from sapnet_jax.models import pdu
from sapnet_jax.serving import batching, web_app
from sapnet_jax.weights import model_files

RNG = np.random.default_rng(11)
# Tiles of 32 make a 1600x1600 image 4356 device calls: many seconds for the tiny model.
SLOW = dict(max_bytes=5_000_000, max_pixels=4_000_000, tile=32, overlap=8, max_batch=1,
            batch_wait_ms=0)
BIG = 1600
BIG_TILES = len(infer.tile_starts(BIG, 32, 8)) ** 2


def noise_png(h: int, w: int) -> bytes:
  return png_bytes(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def striped_png(h: int, w: int) -> bytes:
  """Noise rows repeating every 4 rows (within deflate's 32 kB window for widths up to 2700):
  a large image in a small, quickly sent PNG."""
  rows = RNG.integers(0, 256, (4, w, 3), dtype=np.uint8)
  return png_bytes(np.tile(rows, (-(-h // 4), 1, 1))[:h])


def bomb_png(side: int = 4800) -> bytes:
  """A valid PNG of side x side black pixels, a few tens of kB: deflate squeezes the rows."""
  def chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
  rows = zlib.compress(b"\0" * ((3 * side + 1) * side), 9)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


class Compiles:
  """Counts XLA compiles in this process (JAX's backend-compile event) while enabled."""

  def __init__(self):
    self.count, self.on = 0, False
    jax.monitoring.register_event_duration_secs_listener(self._event)

  def _event(self, event: str, duration: float, **kwargs) -> None:
    if self.on and event == "/jax/core/compile/backend_compile_duration":
      self.count += 1


COMPILES = Compiles()


def test_new_sizes_share_a_bucketed_program(model, derainer):
  # Six sizes never seen before, each side in 19..24 (one bucket of the 48-pixel tile: 24):
  # one program serves them all, and each answer is the client's size.
  limits = web_app.Limits(max_bytes=300_000, max_pixels=20_000, tile=48, overlap=8,
                          max_batch=1, batch_wait_ms=0)
  app = web_app.create_app(model, "tiny", limits=limits, derainer=derainer)
  sizes = [(19, 23), (20, 21), (22, 19), (23, 24), (24, 20), (21, 22)]
  with TestClient(app) as client:
    COMPILES.on, COMPILES.count = True, 0
    assert client.post("/v1/derain", content=noise_png(24, 24)).status_code == 200  # warm
    assert COMPILES.count > 0  # the listener sees compiles
    COMPILES.count = 0
    try:
      for h, w in sizes:
        r = client.post("/v1/derain", content=noise_png(h, w))
        assert r.status_code == 200 and r.headers["x-image-size"] == f"{w}x{h}", r.text[:300]
    finally:
      COMPILES.on = False
  assert COMPILES.count == 0
  assert infer.bucket_sides(48) == [6, 12, 18, 24, 36, 48]
  assert infer.bucket_sides(512) == [64, 128, 192, 256, 384, 512]


def test_padding_keeps_the_image_and_tiles_keep_one_shape():
  image = RNG.random((50, 7, 3), dtype=np.float32)
  padded = infer.pad_to_bucket(image, 48)
  assert padded.shape == (50, 12, 3)  # over the tile: tiled, left; under it: up to a bucket
  np.testing.assert_array_equal(padded[:50, :7], image)
  assert infer.Tiling(padded, 48, 8).th == 48 and infer.Tiling(padded, 48, 8).tw == 12
  assert infer.pad_to_bucket(np.zeros((1, 1, 3), np.float32), 48).shape == (6, 6, 3)


def test_decode_bomb_is_refused_under_the_default_budget(model, derainer):
  bomb = bomb_png()
  assert len(bomb) < 100_000
  app = web_app.create_app(model, "tiny", derainer=derainer)  # the default limits
  with TestClient(app) as client:
    r = client.post("/v1/derain", content=bomb)
  assert r.status_code == 413 and "4800x4800" in r.json()["error"], r.text[:300]


@pytest.fixture
def live(model, derainer):
  """Starts the app with the given limits under a real uvicorn in a thread: (url, batcher)."""
  with contextlib.ExitStack() as servers:
    def start(**limits):
      app = web_app.create_app(model, "tiny", limits=web_app.Limits(**{**SLOW, **limits}),
                               derainer=derainer)
      # A big image still in progress at the end of a test is cancelled 1 s into shutdown.
      url = servers.enter_context(live_servers.live(app, timeout_graceful_shutdown=1))
      return url, app.state.batcher

    yield start


def post_in_thread(url: str, data: bytes, answers: list, timeout: float = 120) -> threading.Thread:
  def run():
    with httpx.Client(base_url=url, timeout=timeout) as c:
      started = time.monotonic()
      try:
        r = c.post("/v1/derain", content=data)
      except httpx.HTTPError as e:  # a request cut off by the server's shutdown at a test's end
        r = e
      answers.append((r, time.monotonic() - started, time.monotonic()))
  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  return thread


def wait_for(condition, seconds: float, what: str) -> None:
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.02)


def cpu_seconds_over(seconds: float) -> float:
  """CPU time this process (server and test) spent over `seconds` of sleep here."""
  start = time.process_time()
  time.sleep(seconds)
  return time.process_time() - start


def test_small_request_is_answered_between_tiles_of_a_big_one(live):
  url, batcher = live()
  small = noise_png(20, 20)
  with httpx.Client(base_url=url, timeout=60) as c:  # compiles the small bucket and the tile
    assert c.post("/v1/derain", content=small).status_code == 200
    assert c.post("/v1/derain", content=noise_png(40, 40)).status_code == 200
  big_answers, small_answers = [], []
  big = post_in_thread(url, striped_png(BIG, BIG), big_answers)
  assert cpu_seconds_over(1.0) > 0.2  # uploaded, decoded and de-raining
  post_in_thread(url, small, small_answers).join(60)
  (r, latency, _), = small_answers
  assert r.status_code == 200
  # Stated bound: one tile of the big image plus its own call; 2 s leaves room for a busy CI.
  assert latency < 2.0, latency
  assert not big_answers and big.is_alive()  # answered between the big image's tiles
  assert 0 < batcher.device_calls < BIG_TILES + 10


def test_small_images_go_before_the_tiles_of_every_queued_big_one(derainer):
  # Three large images take turns on the device tile by tile; a small image that arrives then
  # waits only for the call running (and at most one more that started while its request was
  # being queued), not for a tile of each as first come, first served would have it.
  batcher = batching.Batcher(derainer, max_batch=1, wait_s=0, tile=32, overlap=8)
  small = RNG.random((20, 20, 3), dtype=np.float32)
  big = RNG.random((200, 200, 3), dtype=np.float32)

  async def run() -> tuple[int, int]:
    await batcher.derain(small)  # compiles the small program and the tile outside the count
    await batcher.derain(big[:40, :40])
    bigs = [asyncio.ensure_future(batcher.derain(big)) for _ in range(3)]
    while batcher.device_calls < 8:  # all large images are tiling
      await asyncio.sleep(0.001)
    before = batcher.device_calls
    await batcher.derain(small)
    during = batcher.device_calls - before
    await asyncio.gather(*bigs)
    return during, batcher.device_calls

  try:
    during, total = asyncio.run(run())
  finally:
    batcher.close()
  tiles = len(infer.tile_starts(200, 32, 8)) ** 2
  assert total >= 2 + 4 + 3 * tiles  # everything ran
  assert during <= 3, during


def test_a_full_queue_answers_503_with_retry_after(live):
  url, batcher = live(max_queue=1)
  answers = []
  big = post_in_thread(url, striped_png(BIG, BIG), answers)
  wait_for(lambda: batcher.in_flight == 1, 30, "the big image to be queued")
  with httpx.Client(base_url=url, timeout=30) as c:
    r = c.post("/v1/derain", content=noise_png(20, 20))
  assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
  assert "max-queue 1" in r.json()["error"], r.text[:300]
  assert not answers and big.is_alive()


def test_a_request_past_its_deadline_is_dropped(live):
  url, batcher = live(deadline_s=1.0)
  with httpx.Client(base_url=url, timeout=60) as c:
    r = c.post("/v1/derain", content=striped_png(BIG, BIG))
  assert r.status_code == 503 and "deadline of 1 s" in r.json()["error"], r.text[:300]
  assert "retry-after" in r.headers
  time.sleep(0.3)  # the device call running at the deadline ends
  calls = batcher.device_calls
  assert cpu_seconds_over(1.0) < 0.1 and batcher.device_calls == calls
  assert calls < BIG_TILES and batcher.in_flight == 0


def test_work_for_a_client_that_left_is_cancelled(live):
  url, batcher = live()
  with httpx.Client(base_url=url, timeout=60) as c:  # compile the tile first
    assert c.post("/v1/derain", content=noise_png(40, 40)).status_code == 200
  body = striped_png(BIG, BIG)
  port = int(url.rsplit(":", 1)[1])
  with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
    s.sendall(b"POST /v1/derain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert cpu_seconds_over(1.0) > 0.2  # uploaded, decoded and de-raining
  time.sleep(0.5)  # the disconnect is seen and the running tile ends
  assert cpu_seconds_over(1.0) < 0.1  # an idle server: the image was dropped
  stopped_at = batcher.device_calls
  time.sleep(0.3)
  assert batcher.device_calls == stopped_at < BIG_TILES and batcher.in_flight == 0


# ---- the command itself: `python -m sapnet_jax.serve` in a subprocess -------------------------
@pytest.fixture(scope="module")
def tiny_weights(model, tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "tiny.npz"
  model_files.save_model(model, path)
  return path


def start_serve(weights, cache_dir, *flags: str) -> tuple[subprocess.Popen, str]:
  port = free_port()
  # JAX itself turns its cache on where these are set, writing even programs this quick.
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  proc = subprocess.Popen(
      [sys.executable, "-m", "sapnet_jax.serve", "--weights", str(weights), "--port", str(port),
       *flags], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  deadline = time.monotonic() + 120
  while True:
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert time.monotonic() < deadline, "the server did not start in 120 s"
    try:
      if httpx.get(url + "/healthz", timeout=2).status_code == 200:
        return proc, url
    except httpx.TransportError:
      time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    proc.kill()
    proc.wait(10)


def cache_files(folder) -> set[str]:
  return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("flags", [[], ["--no-compile-cache"]])
def test_serve_writes_only_its_warm_up_to_the_compile_cache(tiny_weights, tmp_path, flags):
  # The variables that point JAX at a cache folder are set in both runs: --no-compile-cache
  # must keep even that one empty.
  cache = tmp_path / "jax_compile"
  proc, url = start_serve(tiny_weights, cache, *flags)
  try:
    warmed = cache_files(cache) if cache.exists() else set()
    assert bool(warmed) == (not flags)  # the warm-up (the 512 tile) is there unless told not
    with httpx.Client(base_url=url, timeout=60) as c:
      for h, w in [(17, 23), (30, 41), (52, 60), (70, 33), (61, 50), (25, 45)]:
        r = c.post("/v1/derain", content=noise_png(h, w))
        assert r.status_code == 200, r.text[:300]
    assert (cache_files(cache) if cache.exists() else set()) == warmed
  finally:
    stop(proc)


@pytest.mark.parametrize("flags, message", [
    (["--max-queue", "0"], "--max-queue must be >= 1"),
    (["--deadline", "0"], "--deadline must be in (0, 86400]"),
    (["--drain-timeout", "-1"], "--drain-timeout must be in 0..3600"),
    (["--warmup", "some"], "invalid choice"),
])
def test_cli_refuses_bad_limits(flags, message, capsys):
  with pytest.raises(SystemExit) as exit_:
    serve.parse_args(flags)
  assert exit_.value.code == 2 and message in capsys.readouterr().err


def cpu_seconds_of(pid: int) -> float:
  fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


DRAIN_S = 10  # the default --drain-timeout


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc (Linux)")
def test_sigterm_exits_within_the_drain_bound(tmp_path):
  # The default --drain-timeout (10 s), and an image of 12544 tiles of 24 pixels for a larger
  # (still small) model: minutes of de-raining, which SIGTERM must cut short.
  weights = tmp_path / "small.npz"
  cfg = pdu.PDUConfig(channels=16, reduction=4, stages=4, num_blocks=3)
  model_files.save_model(pdu.PDUNet(cfg, rngs=nnx.Rngs(0)), weights)
  proc, url = start_serve(weights, tmp_path / "jax_compile", "--tile", "24", "--overlap", "8",
                          "--max-bytes", "30000000")
  try:
    answers = []
    post_in_thread(url, striped_png(1800, 1800), answers, timeout=300)
    time.sleep(2)  # uploaded and decoded
    busy = cpu_seconds_of(proc.pid)
    time.sleep(1)
    assert cpu_seconds_of(proc.pid) - busy > 0.3, "the server is not de-raining"
    assert proc.poll() is None and not answers
    proc.send_signal(signal.SIGTERM)
    # Stated bound: --drain-timeout, then the running device call (one tile here) and the
    # interpreter's exit; 10 s more leaves room for a busy CI. uvicorn ends by raising the
    # signal it caught again, so the status is that of SIGTERM.
    code = proc.wait(timeout=DRAIN_S + 10)
    assert code in (0, -signal.SIGTERM)  # proc.wait above bounds the time
  finally:
    stop(proc)
  assert serve.DRAIN_S == DRAIN_S
