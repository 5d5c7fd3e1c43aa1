"""Everything a careless or hostile client may send to /v1/derain is answered with a 2xx or a
4xx, never a 5xx, never a stack trace, and the server keeps serving: every file of the hostile
corpus (tests/support/hostile.py) and the odd kinds, raw and multipart, as PNG and as JPEG;
malformed multipart bodies; odd query strings; and requests broken at the HTTP level, sent over
a raw socket. The app runs as `serve` runs it (with its access rules) under a real uvicorn on a
free 127.0.0.1 port, with a tiny random model and small limits."""

import io
import logging
import socket
import time

import httpx
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from support import hostile
from support.imagefiles import odd_images
from support.live_servers import live, tiny_model
from sapnet_jax import infer
from sapnet_jax.data import imageio
from sapnet_jax.serving import access_rules, web_app

# As in test_serve.py: the corpus's 4800x4800 files and its header bomb are over the pixel
# limit, its small images go through whole.
LIMITS = web_app.Limits(max_bytes=300_000, max_pixels=20_000, tile=48, overlap=8, max_batch=1,
                        batch_wait_ms=0)
EXPECTED = {"ok": (200,), "big": (413,), "unsupported": (415,), "bad": (400, 413)}


@pytest.fixture(scope="module")
def server():
  model = tiny_model()
  app = web_app.create_app(model, "tiny", limits=LIMITS, derainer=infer.Derainer(model),
                           access=access_rules.access_for("127.0.0.1"))
  with live(app) as url:
    yield url


@pytest.fixture
def server_errors(caplog):
  """The ERROR records logged while a test runs (an unhandled exception in the app, in
  uvicorn or in the device thread): a 5xx may hide behind a closed connection, never a log."""
  caplog.set_level(logging.ERROR)
  # uvicorn's loggers do not propagate to the root logger that caplog listens on.
  uvicorn_log = logging.getLogger("uvicorn")
  uvicorn_log.addHandler(caplog.handler)
  try:
    yield lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  finally:
    uvicorn_log.removeHandler(caplog.handler)


def problem(r: httpx.Response) -> str | None:
  """What is wrong with an answer to a client's mistake, or None: a 5xx, a trace, or an error
  that is not one line of JSON."""
  if r.status_code >= 500:
    return f"status {r.status_code}: {r.text[:200]}"
  if "Traceback" in r.text or 'File "' in r.text:
    return "a stack trace in the answer"
  if r.status_code >= 400:
    if r.headers.get("content-type") != "application/json":
      return f"status {r.status_code} answered as {r.headers.get('content-type')}"
    error = r.json().get("error")
    if not isinstance(error, str) or not error or "\n" in error:
      return f"error is not one line: {error!r}"
  return None


def summary(r: httpx.Response) -> str:
  """An answer in a few words: the JSON error, or the type of what came back."""
  if r.headers.get("content-type") == "application/json":
    return r.text[:200]
  return f"{r.headers.get('content-type')}, {len(r.content)} bytes"


def check_answer(r: httpx.Response, what) -> None:
  assert problem(r) is None, (what, problem(r))


def uploads(tmp_path) -> dict[str, tuple[bytes, str]]:
  """The hostile corpus and the odd kinds (all "ok"), as {name: (bytes, outcome)}."""
  found = dict(hostile.corpus())
  shapes = odd_images(tmp_path, np.random.default_rng(3), extra=True)
  found.update({name: ((tmp_path / name).read_bytes(), "ok") for name in shapes})
  return found


@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_every_hostile_file_gets_a_2xx_or_4xx(server, server_errors, tmp_path, how):
  wrong = []  # every file is sent, then all that went wrong is shown at once
  with httpx.Client(base_url=server, timeout=60) as c:
    for name, (data, outcome) in uploads(tmp_path).items():
      for query in ("", "?format=jpg&quality=80"):
        try:
          if how == "raw":
            r = c.post(f"/v1/derain{query}", content=data)
          else:  # the declared type says PNG whatever the file is: content decides
            r = c.post(f"/v1/derain{query}", files={"image": (name, data, "image/png")})
        except httpx.TransportError as e:  # the server dropped the connection: no answer
          wrong.append((name, query, "no answer", repr(e)))
          continue
        if problem(r) or r.status_code not in EXPECTED[outcome]:
          wrong.append((name, query, r.status_code, problem(r) or summary(r)))
        elif r.status_code == 200:
          kind = "JPEG" if query else "PNG"
          assert Image.open(io.BytesIO(r.content)).format == kind, name
  assert not wrong, wrong
  assert not server_errors()
  assert httpx.get(f"{server}/healthz", timeout=10).status_code == 200


def test_exif_too_big_for_jpeg_is_dropped_and_said(server):
  data = hostile.png_with_big_exif()
  with httpx.Client(base_url=server, timeout=60) as c:
    as_jpeg = c.post("/v1/derain?format=jpg", content=data)
    as_png = c.post("/v1/derain", files={"image": ("camera.png", data)})
  assert as_jpeg.status_code == 200, as_jpeg.text
  im = Image.open(io.BytesIO(as_jpeg.content))
  assert im.format == "JPEG" and im.size == (24, 16)
  assert im.getexif().get(0x010F) is None  # the EXIF did not fit: none was written
  assert as_jpeg.headers["x-metadata-dropped"].startswith("EXIF metadata")
  # PNG holds it: kept, and nothing is said to be dropped.
  assert as_png.status_code == 200 and "x-metadata-dropped" not in as_png.headers
  assert Image.open(io.BytesIO(as_png.content)).getexif().get(0x010F) == "hostile camera"


@pytest.mark.parametrize("format", hostile.UNDOCUMENTED)
def test_undocumented_formats_get_415_naming_them(server, format):
  data = hostile.undocumented_format(format)
  r = httpx.post(f"{server}/v1/derain", files={"image": (f"picture.{format.lower()}", data)},
                 timeout=30)
  assert r.status_code == 415, (r.status_code, summary(r))
  error = r.json()["error"]
  assert error.startswith(f"picture.{format.lower()}: {format} images are not accepted"), error
  assert imageio.ACCEPTED_TEXT in error


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"xYz") -> bytes:
  body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n"
                  for head, data in parts)
  return body + b"--" + boundary + b"--\r\n"


IMAGE = hostile.png()
IMAGE_PART = b'Content-Disposition: form-data; name="image"; filename="a.png"'
MULTIPART = b"multipart/form-data; boundary=xYz"
ODD_BODIES = {  # name: (Content-Type, body)
    "no boundary": (b"multipart/form-data", multipart([(IMAGE_PART, IMAGE)])),
    "empty boundary": (b"multipart/form-data; boundary=", multipart([(IMAGE_PART, IMAGE)], b"")),
    "boundary of 500 bytes": (b"multipart/form-data; boundary=" + b"B" * 500,
                              multipart([(IMAGE_PART, IMAGE)], b"B" * 500)),
    "quoted boundary": (b'multipart/form-data; boundary="xYz"', multipart([(IMAGE_PART, IMAGE)])),
    "boundary of non-ASCII bytes": (b"multipart/form-data; boundary=\xff\xfe",
                                    multipart([(IMAGE_PART, IMAGE)], b"\xff\xfe")),
    "boundary not in the body": (b"multipart/form-data; boundary=other",
                                 multipart([(IMAGE_PART, IMAGE)])),
    "garbled parameters": (b"multipart/form-data;;;=;boundary", IMAGE),
    "unknown charset": (MULTIPART + b"; charset=no-such-charset", multipart([(IMAGE_PART, IMAGE)])),
    "Latin-1 file name": (MULTIPART, multipart([(
        b'Content-Disposition: form-data; name="image"; filename="\xe9t\xe9\xff.png"', IMAGE)])),
    "file name with a newline and quotes": (MULTIPART, multipart([(
        b'Content-Disposition: form-data; name="image"; filename="a\\"b\r\nX-Evil: 1.png"',
        IMAGE)])),
    "RFC 5987 file name only": (MULTIPART, multipart([(
        b"Content-Disposition: form-data; name=\"image\"; filename*=UTF-8''%e2%82%ac.png",
        IMAGE)])),
    "file name of 100 kB": (MULTIPART, multipart([(
        b'Content-Disposition: form-data; name="image"; filename="' + b"a" * 100_000 + b'.png"',
        IMAGE)])),
    "part without Content-Disposition": (MULTIPART, multipart([(b"Content-Type: image/png",
                                                                IMAGE)])),
    "two image files": (MULTIPART, multipart([(IMAGE_PART, IMAGE)] * 2)),
    "text image field, then a file": (MULTIPART, multipart([
        (b'Content-Disposition: form-data; name="image"', b"text"), (IMAGE_PART, IMAGE)])),
    "300 fields": (MULTIPART, multipart([(b'Content-Disposition: form-data; name="f%d"' % i, b"v")
                                         for i in range(300)])),
    "non-UTF-8 field name and value": (MULTIPART, multipart([
        (b'Content-Disposition: form-data; name="\xff\xfe"', b"\xff\xfe")])),
    "nested multipart": (MULTIPART, multipart([(
        b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: multipart/mixed; boundary=inner",
        multipart([(IMAGE_PART, IMAGE)], b"inner"))])),
    "no closing boundary": (MULTIPART, multipart([(IMAGE_PART, IMAGE)])[:-8]),
    "form-urlencoded": (b"application/x-www-form-urlencoded", b"image=" + IMAGE),
    "JSON": (b"application/json", b'{"image": "aGVsbG8="}'),
}


def test_malformed_multipart_bodies_get_a_4xx_or_are_read(server, server_errors):
  with httpx.Client(base_url=server, timeout=60) as c:
    for name, (content_type, body) in ODD_BODIES.items():
      r = c.post("/v1/derain", content=body, headers={"Content-Type": content_type})
      check_answer(r, name)
  assert not server_errors()


@pytest.mark.parametrize("query", [
    "format=%ff", "format=jpg&format=png", "quality=" + "9" * 5000, "%ff%fe=1", "quality=-0",
    "quality=1e2", "quality=%C2%B2", "format=jpg%00png", "&&&=&", "format"])
def test_odd_query_strings(server, server_errors, query):
  r = httpx.post(f"{server}/v1/derain?{query}", content=IMAGE, timeout=60)
  check_answer(r, query)
  assert not server_errors()


def raw_exchange(url: str, request: bytes, close_after: bool = False) -> bytes:
  """Sends `request` bytes on a new connection and reads the answer until the server closes
  it (each request asks it to), for at most 10 s."""
  host, port = url.removeprefix("http://").split(":")
  with socket.create_connection((host, int(port)), timeout=10) as s:
    try:
      s.sendall(request)
      if close_after:
        s.shutdown(socket.SHUT_WR)
    except OSError:  # refused mid-send: read what it said
      pass
    answer, deadline = b"", time.monotonic() + 10
    while time.monotonic() < deadline:
      try:
        chunk = s.recv(65536)
      except OSError:
        break
      if not chunk:
        break
      answer += chunk
  return answer


def post(headers: bytes, body: bytes = IMAGE, host: bytes = b"127.0.0.1") -> bytes:
  return (b"POST /v1/derain HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n" + headers
          + b"\r\n" + body)


RAW_REQUESTS = {  # name: (request bytes, close the sending side after it)
    "Content-Length shorter than the body": (post(b"Content-Length: 10\r\n"), False),
    "Content-Length longer than the body": (post(b"Content-Length: 5000\r\n"), True),
    "negative Content-Length": (post(b"Content-Length: -1\r\n"), False),
    "Content-Length not a number": (post(b"Content-Length: abc\r\n"), False),
    "two different Content-Lengths": (
        post(b"Content-Length: %d\r\nContent-Length: 3\r\n" % len(IMAGE)), False),
    "Content-Length and chunked": (
        post(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), False),
    "bad chunk size": (post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"), False),
    "header value of 100 kB": (
        post(b"X-Big: " + b"a" * 100_000 + b"\r\nContent-Length: %d\r\n" % len(IMAGE)), False),
    "500 headers": (post(b"".join(b"X-H%d: v\r\n" % i for i in range(500))
                         + b"Content-Length: %d\r\n" % len(IMAGE)), False),
    "non-ASCII header bytes": (
        post(b"Content-Type: image/\xff\xfe\r\nX-Name: \xe9\r\nContent-Length: %d\r\n"
             % len(IMAGE)), False),
    "header name with spaces": (post(b"Bad Header: 1\r\nContent-Length: %d\r\n" % len(IMAGE)),
                                False),
    "HTTP/1.0 without Host": (
        b"POST /v1/derain HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(IMAGE) + IMAGE, False),
    "absolute URI naming another host": (
        b"POST http://evil.example/v1/derain HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
        b"\r\nContent-Length: %d\r\n\r\n" % len(IMAGE) + IMAGE, False),
    "path with NUL and non-UTF-8 bytes": (
        b"POST /v1/derain%00%ff?format=%ff HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
        + b"\r\nContent-Length: %d\r\n\r\n" % len(IMAGE) + IMAGE, False),
    "Expect: 100-continue": (post(b"Expect: 100-continue\r\nContent-Length: %d\r\n"
                                  % len(IMAGE)), False),
    "unknown method": (b"BREW /v1/derain HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
                       b"\r\n\r\n", False),
    "not HTTP": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64, True),
}


@pytest.mark.parametrize("name", sorted(RAW_REQUESTS))
def test_requests_broken_at_the_http_level(server, server_errors, name):
  request, close_after = RAW_REQUESTS[name]
  answer = raw_exchange(server, request, close_after)
  head, _, body = answer.partition(b"\r\n\r\n")
  # An answer with a status under 500, or, for a client gone half-way (it closed its side),
  # possibly none; never a 5xx or a trace.
  assert answer or close_after, name
  if answer:
    status = int(head.split(b" ", 2)[1])
    assert status < 500, (name, head)
    assert b"Traceback" not in body, name
  assert not server_errors(), name
  r = httpx.post(f"{server}/v1/derain", content=IMAGE, timeout=60)  # still serving
  assert r.status_code == 200, (name, r.text)


def test_a_fault_of_the_server_is_still_a_500_without_a_trace(caplog):
  # A network whose weights do not fit it (a kernel of the wrong shape): the device call fails
  # for real, which is the server's fault, not the client's. Its answer says so in one line;
  # the trace goes to the log only.
  model = tiny_model()
  first = next(v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Param))
  first.set_value(jnp.zeros((3, 5, 7), first.get_value().dtype))
  app = web_app.create_app(model, "broken", limits=LIMITS,
                           access=access_rules.access_for("127.0.0.1"))
  caplog.set_level(logging.ERROR)
  with live(app) as url:
    r = httpx.post(f"{url}/v1/derain", files={"image": ("a.png", IMAGE)}, timeout=60)
  assert r.status_code == 500 and r.headers["content-type"] == "application/json"
  assert r.json() == {"error": "a.png: de-raining failed on the server"}
  assert any(record.exc_info for record in caplog.records), "the fault was not logged"
