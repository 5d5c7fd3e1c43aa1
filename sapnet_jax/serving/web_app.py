"""The de-raining web app: an HTTP API and a page, as an ASGI app (Starlette).

    app = serving.create_app(model, "sapnet-rain100h")   # then: uvicorn.run(app)

POST /v1/derain takes one image (the raw body, or the multipart field `image`) and answers the
de-rained image (PNG, or JPEG with ?format=jpg), keeping the upload's EXIF and ICC profile.
What an upload holds is decided by decoding it, never by its name or declared type. Bad input
is answered with a 4xx and JSON `{"error": "<reason>"}`; nothing a client sends can cause a
500 or show a stack trace. The body is read in chunks and refused (413) as soon as it passes
`max_bytes`, so an oversized upload is never held in memory, and with 408 if it has not all
come `body_timeout_s` after the headers (uvicorn has no such timeout; `serve` adds one for the
headers themselves); images over `max_pixels` are refused from their header, before they are
decoded, and again once decoded. Same-size images arriving together are de-rained in one batch
(serving.batching), which also bounds what the device does for clients: compiled programs, the
queue (503 above `max_queue`), a deadline (503), and work for a client that disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import time
import warnings
from typing import AsyncIterator

import numpy as np
from flax import nnx
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sapnet_jax import infer, models
from sapnet_jax.data import imageio
from sapnet_jax.serving.access_rules import Access, AccessGuard
from sapnet_jax.serving.batching import (SERVER_TILE, Batcher, ClientGone, Closed,
                                         DeadlineExceeded, QueueFull, watched)
from sapnet_jax.utils import flags

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
# The page loads only its own files and the images it makes (blob: URLs); nothing from a CDN.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
               "script-src 'self'; connect-src 'self' blob:; object-src 'none'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
QUERY_FIELDS = ("format", "quality", "scale")
RETRY_AFTER_S = 10  # told to a client refused for being busy (503)


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask of the server, and how requests are batched."""
  max_bytes: int = 25 * 2**20  # request body, multipart framing included
  # Decoded image; bigger ones get 413. SAPNet took 14 to 32 s per megapixel on 2 busy CPU
  # cores (docs/serve.md, Limits): 4 MP (2448x1632) is one to two minutes there.
  max_pixels: int = 4_000_000
  tile: int | None = SERVER_TILE  # images with a side over this are de-rained in tiles
  overlap: int = infer.DEFAULT_OVERLAP
  max_batch: int = 4
  batch_wait_ms: float = 5.0
  body_timeout_s: float = 60.0  # the whole body, from its headers (25 MiB at 3.5 Mbit/s)
  max_queue: int = 8  # requests waiting for or on the device; above: 503 with Retry-After
  deadline_s: float = 300.0  # a request not de-rained this long after decoding: dropped, 503
  buckets: bool = True  # pad to bucket sizes: clients cannot make the server compile per size
  scale: float | str = 1.0  # working scale when a request names none (?scale=): 1, F or auto

  def __post_init__(self):
    # Names are the command's flags: these errors reach its user as they are.
    flags.check_range("--max-bytes", self.max_bytes, 1)
    flags.check_range("--max-pixels", self.max_pixels, 1)
    if self.max_pixels > Image.MAX_IMAGE_PIXELS:
      raise ValueError(f"--max-pixels must be <= {Image.MAX_IMAGE_PIXELS} (Pillow refuses "
                       f"bigger images as decompression bombs), got {self.max_pixels}")
    if self.tile is not None and not 0 <= self.overlap < self.tile:
      raise ValueError(f"--tile and --overlap must satisfy 0 <= overlap < tile, got "
                       f"tile={self.tile}, overlap={self.overlap}")
    if self.tile is not None and self.tile < 1:
      raise ValueError(f"--tile must be >= 1 (or 0 for never), got {self.tile}")
    flags.check_range("--max-batch", self.max_batch, 1)
    flags.check_range("--batch-wait-ms", self.batch_wait_ms, 0, 10_000)
    flags.check_range("--body-timeout", self.body_timeout_s, 0, 3600, above=True)
    flags.check_range("--max-queue", self.max_queue, 1)
    flags.check_range("--deadline", self.deadline_s, 0, 86_400, above=True)
    try:
      object.__setattr__(self, "scale", infer.parse_scale(self.scale))
    except ValueError as e:
      raise ValueError(f"--{e}") from None


class ApiError(Exception):
  """A request the server refuses: answered as JSON {"error": message} with `status`."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers


def model_info(model: nnx.Module, name: str, description: str | None) -> dict:
  config = models.config_to_dict(model.cfg)
  return {"name": name, "description": description, "family": config.pop("family"),
          "config": config, "parameters": models.count_params(model)}


def create_app(model: nnx.Module, name: str, *, description: str | None = None,
               limits: Limits = Limits(), derainer: infer.Derainer | None = None,
               access: Access | None = None) -> Starlette:
  """The app serving `model` (shown to clients as `name`, with `description`). `derainer`
  may be given to share one already compiled. `access` (the Host allow-list, the same-origin
  rule and the token; serving.access_rules) is what `serve` always passes; without it the app
  checks none of them, for embedding behind one's own guard."""
  derainer = derainer or infer.Derainer(model)
  batcher = Batcher(derainer, limits.max_batch, limits.batch_wait_ms / 1000.0, limits.tile,
                    limits.overlap, buckets=limits.buckets, max_queue=limits.max_queue)
  info = model_info(model, name, description)
  public_limits = dataclasses.asdict(limits)

  async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "model": name})

  async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [info], "limits": public_limits})

  async def index(request: Request) -> Response:
    return FileResponse(os.path.join(WEB_DIR, "index.html"),
                        headers={"Content-Security-Policy": PAGE_POLICY,
                                 "Cache-Control": "no-cache"})

  async def derain(request: Request) -> Response:
    started = time.perf_counter()
    fmt, quality = output_format(request)
    scale = request_scale(request, limits.scale)
    data, upload_name = await read_upload(request, limits.max_bytes, limits.body_timeout_s)
    t_read = time.perf_counter()
    image, metadata = await run_in_threadpool(decode_upload, data, upload_name,
                                              limits.max_pixels)
    t_decode = time.perf_counter()
    try:
      result = await watched(batcher.derain(image, scale), limits.deadline_s,
                             client_gone(request.receive))
    except (QueueFull, DeadlineExceeded, Closed) as e:  # busy: the client may come back
      raise ApiError(503, f"{upload_name}: {e}; retry later",
                     {"Retry-After": str(RETRY_AFTER_S)}) from None
    except ClientGone:  # nobody reads this answer; a 4xx keeps the logs' 5xx for real faults
      raise ApiError(400, f"{upload_name}: the client disconnected") from None
    except Exception:  # noqa: BLE001 - the device failed, not the client: log it, say little
      logging.exception("de-raining %s (%dx%d) failed", upload_name, image.shape[1],
                        image.shape[0])
      raise ApiError(500, f"{upload_name}: de-raining failed on the server") from None
    t_derain = time.perf_counter()
    dropped: list[str] = []  # metadata the output format cannot hold (EXIF over 64 kB in JPEG)
    body = await run_in_threadpool(imageio.encode_image, result.image, fmt, quality, metadata,
                                   dropped)
    t_encode = time.perf_counter()
    ext = "png" if fmt == "png" else "jpg"
    stem = "image" if upload_name == "upload" else os.path.splitext(upload_name)[0]
    headers = {
        "Content-Disposition": f'inline; filename="{safe_filename(stem)}_derained.{ext}"',
        "X-Image-Size": f"{image.shape[1]}x{image.shape[0]}",
        "X-Batch-Size": str(result.batch_size),
        "X-Tiles": str(result.tiles),
        "X-Scale": infer.format_scale(result.scale),
        "X-Model": name,
        "Server-Timing": (f"read;dur={ms(started, t_read)}, decode;dur={ms(t_read, t_decode)}, "
                          f"queue;dur={result.queue_s * 1000:.1f}, "
                          f"derain;dur={result.compute_s * 1000:.1f}, "
                          f"encode;dur={ms(t_derain, t_encode)}, "
                          f"total;dur={ms(started, t_encode)}"),
    }
    if dropped:  # the pixels are what was asked for: say what is missing rather than refuse
      headers["X-Metadata-Dropped"] = header_text("; ".join(dropped))
    return Response(body, media_type=imageio.MEDIA_TYPES[imageio.FORMATS[fmt]], headers=headers)

  @contextlib.asynccontextmanager
  async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    batcher.close()

  app = Starlette(
      routes=[Route("/", index, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"]),
              Route("/v1/models", list_models, methods=["GET"]),
              Route("/v1/derain", derain, methods=["POST"]),
              Mount("/static", StaticFiles(directory=WEB_DIR), name="static")],
      exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
      lifespan=lifespan)
  app.state.batcher = batcher
  if access is not None:
    app.add_middleware(AccessGuard, access=access)
  return app


def output_format(request: Request) -> tuple[str, int]:
  """(format, JPEG quality) from the query, else from Accept; refuses what it does not know
  before the body is read."""
  unknown = sorted(set(request.query_params) - set(QUERY_FIELDS))
  if unknown:
    raise ApiError(400, f"query: unknown parameter(s) {unknown}; known: {list(QUERY_FIELDS)}")
  fmt = request.query_params.get("format")
  if fmt is None:
    accept = request.headers.get("accept", "")
    fmt = "jpg" if "image/jpeg" in accept and "image/png" not in accept else "png"
  fmt = fmt.lower()
  if fmt not in imageio.FORMATS:
    raise ApiError(400, f"query: format must be png or jpg, got {fmt[:40]!r}")
  quality = request.query_params.get("quality", "95")
  try:
    q = int(quality)
  except ValueError:
    q = 0
  if not 1 <= q <= 100:
    raise ApiError(400, f"query: quality must be an integer in 1..100, got {quality[:40]!r}")
  return ("png" if fmt == "png" else "jpg"), q


def request_scale(request: Request, default: float | str) -> float | str:
  """?scale=auto|F (1 to infer.MAX_SCALE), else the server's --scale; refused before the body
  is read."""
  text = request.query_params.get("scale")
  if text is None:
    return default
  try:
    return infer.parse_scale(text)
  except ValueError:
    raise ApiError(400, f"query: scale must be 'auto' or a number from 1 to "
                   f"{infer.MAX_SCALE:g}, got {text[:40]!r}") from None


async def limited_stream(request: Request, max_bytes: int,
                         timeout_s: float = Limits.body_timeout_s) -> AsyncIterator[bytes]:
  """The request body in chunks, stopping with 413 as soon as it passes `max_bytes`, and with
  408 if it has not all come `timeout_s` after the first chunk was asked for: uvicorn has no
  body timeout, so a client trickling a body would hold its request and connection forever."""
  total = 0
  deadline = asyncio.get_running_loop().time() + timeout_s
  stream = request.stream().__aiter__()
  try:
    while True:
      try:
        async with asyncio.timeout_at(deadline):
          chunk = await anext(stream)
      except StopAsyncIteration:
        return
      except TimeoutError:
        raise ApiError(408, f"upload: the body did not arrive within {timeout_s:g} s") from None
      total += len(chunk)
      if total > max_bytes:
        raise ApiError(413, f"upload: request body over the limit of {max_bytes} bytes")
      yield chunk
  except ClientDisconnect:
    raise ApiError(400, "upload: the client disconnected before sending the whole body") from None


async def read_upload(request: Request, max_bytes: int,
                      timeout_s: float = Limits.body_timeout_s) -> tuple[bytes, str]:
  """(the image's bytes, a name for errors): the raw body, or the multipart field `image`,
  which must all come within `timeout_s`."""
  length = request.headers.get("content-length")
  if length is not None and length.isdigit() and int(length) > max_bytes:
    raise ApiError(413, f"upload: Content-Length {length} is over the limit of {max_bytes} bytes")
  content_type = request.headers.get("content-type", "")
  if content_type.split(";")[0].strip().lower() != "multipart/form-data":
    chunks = [chunk async for chunk in limited_stream(request, max_bytes, timeout_s)]
    data = b"".join(chunks)
    if not data:
      raise ApiError(400, "upload: empty request body (send the image as the body or as the "
                     "multipart field 'image')")
    return data, "upload"
  parser = MultiPartParser(request.headers, limited_stream(request, max_bytes, timeout_s),
                           max_files=1, max_fields=16, max_part_size=64 * 1024)
  try:
    form = await parser.parse()
  except MultiPartException as e:
    raise ApiError(400, f"upload: bad multipart body ({e.message})") from None
  try:
    field = form.get("image")
    if field is None:
      raise ApiError(400, f"upload: multipart body has no field 'image' (fields: "
                     f"{sorted(form.keys())[:16]})")
    if not isinstance(field, UploadFile):
      raise ApiError(415, "upload: multipart field 'image' is text, not a file (send it as a "
                     "file: curl -F image=@photo.jpg)")
    name = os.path.basename((field.filename or "upload").replace("\\", "/"))[:200] or "upload"
    data = await field.read()
    if not data:
      raise ApiError(400, f"{name}: empty file")
    return data, name
  finally:
    await form.close()


def decode_upload(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, imageio.Metadata]:
  """Decodes an upload, refusing (413) one over `max_pixels` from its header, before decoding,
  and from the decoded array."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      # Only the accepted formats' header parsers see a client's bytes (others: 415 below).
      with Image.open(io.BytesIO(data), formats=imageio.ACCEPTED_FORMATS) as im:
        width, height = im.size
  except Image.DecompressionBombError as e:  # too big for Pillow even to open
    raise ApiError(413, f"{name}: over the limit of {max_pixels} pixels ({e})") from None
  except Exception:  # noqa: BLE001 - not readable as an image: decode_image says why below
    width = height = 0
  if width * height > max_pixels:
    raise ApiError(413, f"{name}: {width}x{height} is {width * height} pixels, over the limit "
                   f"of {max_pixels}")
  try:
    image, metadata = imageio.decode_image(data, name)
  except imageio.UnsupportedFormatError as e:  # an image, in a format the API does not take
    raise ApiError(415, str(e)) from None
  except imageio.ImageReadError as e:
    raise ApiError(400, str(e)) from None
  # Again on what was decoded: a header that could not be read, or a decoder that makes more
  # than its header said, must not carry an image past the budget to the device.
  h, w = image.shape[:2]
  if h * w > max_pixels:
    raise ApiError(413, f"{name}: decoded to {w}x{h}, {w * h} pixels, over the limit of "
                   f"{max_pixels}")
  return image, metadata


async def client_gone(receive) -> None:
  """Returns when the client disconnects. Called once the body is read, so every message
  left is the disconnect (uvicorn sends it when the socket closes, a test client after the
  answer)."""
  while (await receive())["type"] != "http.disconnect":
    pass


def ms(start: float, end: float) -> str:
  return f"{(end - start) * 1000:.1f}"


def header_text(text: str) -> str:
  """`text` fit for a header value: printable ASCII, at most 500 characters."""
  return "".join(c if c.isascii() and c.isprintable() else "?" for c in text)[:500]


def safe_filename(stem: str) -> str:
  """A stem fit for a Content-Disposition header: printable ASCII without quotes."""
  cleaned = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_"
                    for c in stem)
  return cleaned[:100] or "image"


async def api_error(request: Request, exc: Exception) -> Response:
  assert isinstance(exc, ApiError)
  # A refused body may be only partly read: the connection is closed after the answer.
  return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
  # The router's 404 and 405 (and any other HTTPException) in the API's JSON form.
  assert isinstance(exc, HTTPException)
  reason = exc.detail
  if exc.status_code == 404:
    reason = f"{request.url.path}: no such endpoint"
  elif exc.status_code == 405:
    reason = f"{request.url.path}: method {request.method} not allowed"
  return JSONResponse({"error": reason}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
  logging.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
  return JSONResponse({"error": "internal server error"}, status_code=500)
