"""The HTTP API of `python -m sapnet_jax.serve` (sapnet_jax.serving.web_app) with a tiny random model:
odd and bad uploads, limits, tiling, formats and metadata, batching, the CLI's checks, and a
short load test. Most tests use Starlette's in-process client; the batching and early-refusal
tests use a real uvicorn server on a free 127.0.0.1 port, started here."""

import asyncio
import io
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image, ImageCms
from starlette.testclient import TestClient

from support.paths import REPO
from support.imagefiles import odd_images
from support.live_servers import live, pixels, png_bytes
from sapnet_jax import infer, models, pretrained, serve
from sapnet_jax.data.imageio import to_uint8
from sapnet_jax.serving import web_app
from sapnet_jax.serving.batching import Batcher
from sapnet_jax.weights import model_files

RNG = np.random.default_rng(7)
# Small enough to keep compiles short, and chosen so the odd kinds (21x34) go whole, a 70x90
# image is tiled and a 150x150 one is over the pixel limit.
LIMITS = web_app.Limits(max_bytes=300_000, max_pixels=20_000, tile=48, overlap=8, max_batch=4,
                        batch_wait_ms=5)


@pytest.fixture(scope="module")
def client(model, derainer):
  app = web_app.create_app(model, "tiny", description="a tiny random model", limits=LIMITS,
                           derainer=derainer)
  with TestClient(app) as c:  # one event loop for the module, lifespan run
    yield c


def odd_uploads(folder) -> dict[str, tuple[bytes, tuple[int, int]]]:
  """The derain tests' odd kinds and more, as {file name: (bytes, expected (height, width))}."""
  shapes = odd_images(folder, RNG, extra=True)
  return {name: ((folder / name).read_bytes(), hw) for name, hw in shapes.items()}


@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_every_odd_kind_gives_an_image_of_its_size(client, tmp_path, how):
  for name, (data, (h, w)) in odd_uploads(tmp_path / how).items():
    if how == "raw":
      r = client.post("/v1/derain", content=data,
                      headers={"Content-Type": "application/octet-stream"})
    else:  # the declared type is wrong on purpose: content is judged by decoding
      r = client.post("/v1/derain", files={"image": (name, data, "text/plain")})
    assert r.status_code == 200, (name, r.text)
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-image-size"] == f"{w}x{h}"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "PNG" and im.mode == "RGB" and im.size == (w, h), name
    stem = os.path.splitext(name)[0] if how == "multipart" else "image"
    assert f'filename="{stem}_derained.png"' in r.headers["content-disposition"]


def _truncated_png() -> bytes:
  data = png_bytes(RNG.integers(0, 256, (30, 30, 3), dtype=np.uint8))
  return data[:len(data) // 2]


@pytest.mark.parametrize("request_kwargs, status, reason", [
    ({"content": b"\xff\xd8\xff\xe0 truncated jpeg"}, 400, "upload: cannot decode image"),
    ({"content": b"hello, not an image"}, 400, "upload: not an image"),
    ({"content": _truncated_png()}, 400, "upload: cannot decode image"),
    ({"content": b""}, 400, "upload: empty request body"),
    ({"files": {"image": ("notes.png", b"<html>a page named .png</html>", "image/png")}}, 400,
     "notes.png: not an image"),
    ({"files": {"image": ("corrupt.jpg", b"\xff\xd8\xff\xe0 truncated jpeg", "image/jpeg")}}, 400,
     "corrupt.jpg: cannot decode image"),
    ({"files": {"image": ("empty.png", b"", "image/png")}}, 400, "empty.png: empty file"),
    ({"files": {"photo": ("a.png", b"x", "image/png")}}, 400, "no field 'image'"),
    ({"data": {"image": "not a file"}, "files": {"other": ("a.txt", b"x", "text/plain")}}, 415,
     "'image' is text, not a file"),
    ({"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data"}}, 400,
     "bad multipart body"),
])
def test_bad_uploads_get_a_4xx_json_reason(client, request_kwargs, status, reason):
  r = client.post("/v1/derain", **request_kwargs)
  assert r.status_code == status, r.text
  assert r.headers["content-type"] == "application/json"
  assert reason in r.json()["error"], r.json()
  assert "Traceback" not in r.text


@pytest.mark.parametrize("query, reason", [
    ("format=gif", "format must be png or jpg"),
    ("quality=0", "quality must be an integer in 1..100"),
    ("quality=high", "quality must be an integer in 1..100"),
    ("size=10", "unknown parameter(s) ['size']"),
])
def test_bad_query_values(client, query, reason):
  r = client.post(f"/v1/derain?{query}", content=png_bytes(np.zeros((4, 4, 3), np.uint8)))
  assert r.status_code == 400 and reason in r.json()["error"]


def test_router_errors_are_json(client):
  assert client.get("/v1/derain").status_code == 405
  assert client.get("/v1/derain").json()["error"] == "/v1/derain: method GET not allowed"
  r = client.get("/v2/derain")
  assert r.status_code == 404 and "no such endpoint" in r.json()["error"]


def asgi_post(app, headers: dict[str, str], chunks) -> tuple[int, dict, int]:
  """POSTs `chunks` to /v1/derain straight through the ASGI interface; returns (status, JSON
  answer, bytes the app pulled from the body): a client whose body is never read in full."""
  sent, pulled = [], [0]

  async def run():
    it = iter(chunks)

    async def receive():
      chunk = next(it, None)
      if chunk is None:
        return {"type": "http.request", "body": b"", "more_body": False}
      pulled[0] += len(chunk)
      return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
      sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/derain", "raw_path": b"/v1/derain", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await asyncio.wait_for(app(scope, receive, send), 30)

  asyncio.run(run())
  body = b"".join(m.get("body", b"") for m in sent[1:])
  return sent[0]["status"], json.loads(body), pulled[0]


def test_oversized_uploads_are_refused_without_reading_them(client):
  app, chunk = client.app, b"\0" * 65536
  # An endless body: refused as soon as it passes the limit, raw or multipart.
  status, answer, pulled = asgi_post(app, {}, itertools.repeat(chunk))
  assert status == 413 and "over the limit of 300000 bytes" in answer["error"]
  assert pulled <= LIMITS.max_bytes + len(chunk)
  head = b'--B\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
  status, answer, pulled = asgi_post(app, {"Content-Type": "multipart/form-data; boundary=B"},
                                     itertools.chain([head], itertools.repeat(chunk)))
  assert status == 413 and pulled <= LIMITS.max_bytes + len(chunk)
  # A declared length over the limit: refused before any byte is read.
  status, answer, pulled = asgi_post(app, {"Content-Length": str(10**10)}, itertools.repeat(chunk))
  assert status == 413 and "Content-Length 10000000000" in answer["error"] and pulled == 0


def test_over_the_pixel_limit_is_refused_from_the_header(client):
  big = png_bytes(np.zeros((150, 150, 3), np.uint8))
  r = client.post("/v1/derain", files={"image": ("big.png", big)})
  assert r.status_code == 413
  assert r.json()["error"] == "big.png: 150x150 is 22500 pixels, over the limit of 20000"
  # A PNG that says it is 100000x100000 (a decompression bomb), on almost no data: refused
  # from its header, never decoded.
  def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

  header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
  bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
  r = client.post("/v1/derain", content=bomb)
  assert r.status_code == 413, r.text
  assert r.json()["error"].startswith("upload: over the limit of 20000 pixels (Image size "
                                      "(10000000000 pixels)")


def test_large_images_are_tiled_like_the_library(client, derainer):
  # The server's tiles are infer.Tiling's fixed ones (one program for every size), not the
  # balanced tiles `derainer(image)` uses.
  image = RNG.integers(0, 256, (70, 90, 3), dtype=np.uint8)
  r = client.post("/v1/derain", content=png_bytes(image))
  assert r.status_code == 200, r.text
  assert r.headers["x-tiles"] == "6" and r.headers["x-batch-size"] == "1"
  tiling = infer.Tiling(image.astype(np.float32) / 255, LIMITS.tile, LIMITS.overlap)
  for i in range(len(tiling)):
    tiling.add(i, np.asarray(derainer.batch(tiling.window(i)))[0])
  np.testing.assert_array_equal(pixels(r.content), to_uint8(tiling.result()))


def test_jpeg_output(client):
  image = png_bytes(RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8))
  sizes = {}
  for query, headers in (("?format=jpg", {}), ("?format=jpg&quality=10", {}),
                         ("", {"Accept": "image/jpeg"})):
    r = client.post(f"/v1/derain{query}", content=image, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and im.size == (40, 24)
    assert r.headers["content-disposition"].endswith('_derained.jpg"')
    sizes[query] = len(r.content)
  assert sizes["?format=jpg&quality=10"] < sizes["?format=jpg"]


def test_exif_and_icc_profile_are_kept(client):
  icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  exif = Image.Exif()
  exif[0x010F] = "RainCam"  # Make
  exif[0x0112] = 6  # rotated: the result is upright, so its orientation tag must be reset
  buffer = io.BytesIO()
  Image.fromarray(RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(
      buffer, format="JPEG", exif=exif, icc_profile=icc)
  for query in ("", "?format=jpg"):
    r = client.post(f"/v1/derain{query}", content=buffer.getvalue())
    assert r.status_code == 200, r.text
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (16, 24)
    assert im.info.get("icc_profile") == icc
    assert im.getexif().get(0x010F) == "RainCam" and im.getexif().get(0x0112, 1) == 1


def test_app_serves_again_after_its_lifespan_ended(model, derainer):
  # Each test client runs the app's lifespan; the device thread stopped at the end of one is
  # started again for the next.
  app = web_app.create_app(model, "tiny", limits=LIMITS, derainer=derainer)
  for _ in range(2):
    with TestClient(app) as c:
      r = c.post("/v1/derain", content=png_bytes(np.zeros((21, 34, 3), np.uint8)))
      assert r.status_code == 200, r.text


def test_healthz_and_models(client, model):
  assert client.get("/healthz").json() == {"status": "ok", "model": "tiny"}
  answer = client.get("/v1/models").json()
  (info,) = answer["models"]
  assert info["name"] == "tiny" and info["description"] == "a tiny random model"
  assert info["family"] == "pdu" and info["config"]["channels"] == 4
  assert info["parameters"] == models.count_params(model)
  assert answer["limits"]["max_pixels"] == LIMITS.max_pixels and answer["limits"]["tile"] == 48


def test_page_and_its_files_load_nothing_from_elsewhere(client):
  r = client.get("/")
  assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
  for path in ("/", "/static/app.js", "/static/style.css"):
    text = client.get(path).text
    assert client.get(path).status_code == 200
    assert "http://" not in text and "https://" not in text and "//cdn" not in text, path
  assert 'type="file"' in r.text and "multiple" in r.text and 'type="range"' in r.text


def test_batched_results_equal_single_ones(derainer):
  # Before rounding: three same-size images submitted together go in one batch, and each
  # result equals the image de-rained alone within 1e-6 (float sums may be ordered otherwise).
  images = RNG.random((3, 20, 28, 3), dtype=np.float32)
  batcher = Batcher(derainer, max_batch=4, wait_s=0.5)

  async def together():
    return await asyncio.gather(*(batcher.derain(im) for im in images))

  results = asyncio.run(asyncio.wait_for(together(), 60))
  batcher.close()
  assert [r.batch_size for r in results] == [3, 3, 3]
  for image, result in zip(images, results):
    alone = np.asarray(derainer.batch(image[None]))[0]
    np.testing.assert_allclose(result.image, alone, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def live_server(model, derainer):
  """The app under a real uvicorn on a free 127.0.0.1 port, batching up to 4 images that
  arrive within 300 ms of each other."""
  limits = web_app.Limits(max_bytes=300_000, max_pixels=20_000, tile=48, overlap=8,
                          max_batch=4, batch_wait_ms=300)
  app = web_app.create_app(model, "tiny", limits=limits, derainer=derainer)
  with live(app) as url:
    yield url


def test_concurrent_requests_are_batched_by_size(live_server):
  small = [png_bytes(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for _ in range(4)]
  other = [png_bytes(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(2)]
  with httpx.Client(base_url=live_server, timeout=60) as c:
    alone = [c.post("/v1/derain", content=d) for d in small + other]  # also compiles N=1
    assert all(r.status_code == 200 and r.headers["x-batch-size"] == "1" for r in alone)
  uploads = small + other
  answers = [None] * len(uploads)
  start = threading.Barrier(len(uploads))

  def post(i):
    with httpx.Client(base_url=live_server, timeout=60) as c:
      start.wait(10)
      answers[i] = c.post("/v1/derain", files={"image": (f"{i}.png", uploads[i])})

  threads = [threading.Thread(target=post, args=(i,)) for i in range(len(uploads))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(90)
  assert all(a is not None and a.status_code == 200 for a in answers), answers
  assert [a.headers["x-batch-size"] for a in answers] == ["4"] * 4 + ["2"] * 2
  for a, single in zip(answers, alone):
    assert a.content == single.content  # byte-equal PNGs: batching changes no pixel


def test_live_server_refuses_oversized_bodies_early(live_server):
  host, port = live_server.removeprefix("http://").split(":")
  with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(b"POST /v1/derain HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000000\r\n\r\n")
    answer = s.recv(65536).decode()
  assert answer.startswith("HTTP/1.1 413") and "Content-Length 5000000000" in answer
  # Chunked, with no length: answered while the client is still sending (socket buffers let
  # it send a little past the limit before the answer is seen), never read to the end.
  with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(b"POST /v1/derain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    s.settimeout(0.05)
    sent, answer = 0, b""
    while not answer and sent < 20_000_000:
      try:
        s.sendall(b"4000\r\n" + b"\0" * 0x4000 + b"\r\n")
        sent += 0x4000
        answer = s.recv(65536)
      except socket.timeout:
        pass
      except OSError:  # the server closed the connection: read its answer
        s.settimeout(5)
        answer = s.recv(65536)
  assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 300000 bytes" in answer
  assert sent < 3_000_000


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--port", "0"], "--port: must be in 1..65535"),
    (["--tile", "-1"], "--tile: must be >= 0"),
    (["--tile", "64", "--overlap", "64"], "--overlap 64 must be smaller than --tile 64"),
    (["--max-pixels", "0"], "--max-pixels must be >= 1"),
    (["--max-bytes", "-5"], "--max-bytes must be >= 1"),
    (["--batch-wait-ms", "-1"], "--batch-wait-ms must be in 0..10000"),
    (["--port", "http"], "invalid integer value"),
])
def test_cli_refuses_bad_flags_before_serving(flags, message, capsys):
  with pytest.raises(SystemExit) as exit_:
    serve.main(flags + ["--no-compile-cache"])
  assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_cli_unknown_weights_and_default_host(capsys):
  assert serve.main(["--weights", "nope", "--no-compile-cache"]) == 2
  assert "registered weights name" in capsys.readouterr().err
  args, limits = serve.parse_args([])
  assert args.host == "127.0.0.1"
  assert limits == web_app.Limits(max_batch=1)  # on a CPU, where batches were measured slower
  assert pretrained.display_name("sapnet-rain100h") == "sapnet-rain100h"
  assert pretrained.display_name(os.path.join("some", "dir", "tiny.npz")) == "tiny.npz"


def test_load_benchmark_runs_small(model, tmp_path):
  weights = tmp_path / "tiny.npz"
  model_files.save_model(model, weights)
  out = tmp_path / "load.json"
  run = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "load_serve.py"), "--weights", str(weights),
       "--clients", "4", "--seconds", "5", "--size", "32", "--out", str(out),
       "--no-compile-cache"], cwd=REPO, capture_output=True, text=True, timeout=180)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["errors"] == 0 and report["requests"] >= 4
  lat = report["latency_s"]
  assert 0 < lat["p50"] <= lat["p95"] <= lat["max"] < 60
  assert report["throughput_rps"] > 0 and report["clients"] == 4
  assert sum(report["batch_sizes"].values()) == report["requests"]
