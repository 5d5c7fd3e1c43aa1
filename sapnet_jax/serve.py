"""Serve de-raining over HTTP, with a web page: python -m sapnet_jax.serve --weights NAME|PATH.

Open the printed URL for the page (drop photos, compare before/after, download), or call the
API: curl --data-binary @photo.jpg -o out.png http://127.0.0.1:8000/v1/derain
(docs/serve.md). The server binds 127.0.0.1 unless --host says otherwise. It answers only
requests addressed to a loopback name (--allow-host adds names) and refuses POSTs from other
sites' pages; beyond this machine, give it a token (--token-file or $SAPNET_SERVE_TOKEN) and
put it behind a reverse proxy with TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from typing import Sequence

import h11
import jax
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from sapnet_jax import infer, pretrained
from sapnet_jax.runtime import compile_cache
from sapnet_jax.serving import access_rules, web_app
from sapnet_jax.utils import fileio, flags

DEFAULTS = web_app.Limits()
DRAIN_S = 10.0  # on SIGTERM: how long requests in progress may finish before they are cancelled


@dataclasses.dataclass(frozen=True)
class Connections:
  """What one connection may hold of the server (uvicorn's limits, and the head deadline)."""
  max_connections: int = 64  # open connections or requests in progress; above: 503 at once
  header_timeout_s: float = 10.0  # a request's line and headers, from connect or last answer
  keep_alive_s: float = 5.0  # an idle connection after an answer
  max_header_bytes: int = 16 * 1024  # an unfinished request head; above: 400 (h11's limit)

  def __post_init__(self):
    # Names are the command's flags: these errors reach its user as they are.
    flags.check_range("--max-connections", self.max_connections, 1)
    flags.check_range("--header-timeout", self.header_timeout_s, 0, 3600, above=True)
    flags.check_range("--keep-alive", self.keep_alive_s, 0, 3600, above=True)
    flags.check_range("--max-header-bytes", self.max_header_bytes, 1024, 2**20)


CONNECTIONS = Connections()


class HeadDeadlineProtocol(H11Protocol):
  """uvicorn's HTTP/1.1 protocol, with a deadline for each request's line and headers.

  uvicorn times out only the idle gap after an answer, and any byte received cancels that: a
  connection that never sends a request, sends its headers a byte at a time, or keeps
  trickling a body already answered is held open forever, and each counts against
  --max-connections. Here the head must arrive within `header_timeout_s` of the connection
  opening or of the previous answer, else the connection is closed (with a 408 if part of a
  head came). The body has its own deadline in the app (web_app.Limits.body_timeout_s).
  """
  header_timeout_s = Connections.header_timeout_s

  def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
    super().connection_made(transport)
    self._arm_head_deadline()

  def _arm_head_deadline(self) -> None:
    self._head_bytes = 0
    self._head_deadline: asyncio.TimerHandle | None = self.loop.call_later(
        self.header_timeout_s, self._head_timed_out)

  def _head_arrived(self) -> None:
    # h11 moves the server from IDLE to SEND_RESPONSE once a request's head is parsed; DONE
    # (answered, body still coming) keeps the deadline running.
    if self._head_deadline is not None and self.conn.our_state not in (h11.IDLE, h11.DONE):
      self._head_deadline.cancel()
      self._head_deadline = None

  def data_received(self, data: bytes) -> None:
    self._head_bytes += len(data)
    super().data_received(data)
    self._head_arrived()

  def on_response_complete(self) -> None:
    super().on_response_complete()
    if not self.transport.is_closing():
      if self._head_deadline is not None:
        self._head_deadline.cancel()
      self._arm_head_deadline()
      self._head_arrived()  # a pipelined request may have been parsed already

  def connection_lost(self, exc: Exception | None) -> None:
    if self._head_deadline is not None:
      self._head_deadline.cancel()
      self._head_deadline = None
    super().connection_lost(exc)

  def _head_timed_out(self) -> None:
    self._head_deadline = None
    if self.transport.is_closing():
      return
    if self.conn.our_state is h11.IDLE and self._head_bytes:
      body = (b'{"error": "request: its line and headers did not arrive within %g s"}'
              % self.header_timeout_s)
      self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                           b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    self.transport.close()


def uvicorn_options(connections: Connections = Connections()) -> dict:
  """uvicorn.run's (or uvicorn.Config's) keyword arguments for `connections`' limits and the
  head deadline. WebSockets are off: the app has none, and an upgraded connection would leave
  the protocol (and its deadline)."""
  protocol = type("HeadDeadlineProtocol", (HeadDeadlineProtocol,),
                  {"header_timeout_s": connections.header_timeout_s})
  return {"http": protocol, "ws": "none", "limit_concurrency": connections.max_connections,
          "timeout_keep_alive": connections.keep_alive_s,
          "h11_max_incomplete_event_size": connections.max_header_bytes}


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, web_app.Limits]:
  parser = flags.command_parser("sapnet_jax.serve", __doc__)
  flags.add_weights(parser, pretrained.DEFAULT, pretrained.WEIGHTS_HELP)
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default: 127.0.0.1, this machine only)")
  parser.add_argument("--port", type=flags.int_in(1, 65535), default=8000,
                      help="port (default: 8000)")
  parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                      help="also answer requests whose Host header is NAME (repeatable; * for "
                      "any); by default only localhost, 127.0.0.1, ::1 and the --host address")
  parser.add_argument("--token", metavar="TOKEN",
                      help="require 'Authorization: Bearer TOKEN' on the API (the page asks "
                      f"for it); visible to other users in ps: prefer ${access_rules.TOKEN_ENV}"
                      " or --token-file")
  parser.add_argument("--token-file", metavar="PATH",
                      help="read the token from the first line of PATH")
  flags.add_number(parser, "--max-bytes", int, DEFAULTS.max_bytes, "B",
                   "largest request body in bytes")
  flags.add_number(parser, "--max-pixels", int, DEFAULTS.max_pixels, "P",
                   "largest image in pixels, refused with 413 above")
  flags.add_tiling(parser, DEFAULTS.tile, DEFAULTS.overlap)
  parser.add_argument("--max-batch", type=int, metavar="N",
                      help="most same-size images de-rained in one device call (default: 1 on "
                      f"a CPU, {DEFAULTS.max_batch} on a GPU or TPU)")
  parser.add_argument("--batch-wait-ms", type=float, default=DEFAULTS.batch_wait_ms,
                      metavar="MS", help="how long an image waits for others of its size "
                      f"(default: {DEFAULTS.batch_wait_ms})")
  flags.add_scale(parser)
  flags.add_dtype(parser)
  flags.add_compile_cache(parser, "", folder=False)
  cost = parser.add_argument_group("what the device does for clients (docs/serve.md, Limits)")
  flags.add_number(cost, "--max-queue", int, DEFAULTS.max_queue, "N", "most requests waiting "
                   "for or on the device; one more is answered 503 with Retry-After")
  flags.add_number(cost, "--deadline", float, DEFAULTS.deadline_s, "S",
                   "drop a request not de-rained S seconds after it was decoded, answering 503")
  flags.add_number(cost, "--drain-timeout", float, DRAIN_S, "S", "on SIGTERM or Ctrl-C, let "
                   "requests in progress finish for up to S seconds, then cancel them; the "
                   "process exits after the device call running then")
  cost.add_argument("--warmup", choices=("tile", "all", "none"), default="tile",
                    help="programs to compile before serving, the only ones written to the "
                    "compile cache: 'tile' (the tile size, shared by every tiled image), 'all' "
                    "(every bucket size; no request compiles then), 'none' (default: tile)")
  cost.add_argument("--no-buckets", action="store_true",
                    help="de-rain each image at its own size, as sapnet_jax.derain does, instead "
                    "of mirrored up to a bucket size: each new size then compiles (seconds) and "
                    "stays in memory, so only for trusted clients")
  conn = parser.add_argument_group("connections (docs/serve.md, Connections and timeouts)")
  flags.add_number(conn, "--max-connections", int, CONNECTIONS.max_connections, "N",
                   "open connections or requests in progress above which a new request is "
                   "answered 503 at once")
  flags.add_number(conn, "--header-timeout", float, CONNECTIONS.header_timeout_s, "S",
                   "close a connection whose request line and headers have not arrived S "
                   "seconds after it opened or got its last answer")
  flags.add_number(conn, "--body-timeout", float, DEFAULTS.body_timeout_s, "S", "answer 408 to "
                   "a request whose body has not arrived S seconds after its headers")
  flags.add_number(conn, "--keep-alive", float, CONNECTIONS.keep_alive_s, "S",
                   "close an idle connection S seconds after its last answer")
  flags.add_number(conn, "--max-header-bytes", int, CONNECTIONS.max_header_bytes, "B",
                   "refuse (400) a request whose line and headers are still unfinished after "
                   "B bytes")
  args = parser.parse_args(argv)
  if args.max_batch is not None and args.max_batch < 1:
    parser.error(f"--max-batch must be >= 1, got {args.max_batch}")
  flags.check_tiling(parser, args)
  try:
    args.access = access_rules.access_for(args.host, args.allow_host, read_token(parser, args))
  except ValueError as e:
    parser.error(str(e))
  try:
    limits = web_app.Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                            tile=args.tile or None, overlap=args.overlap,
                            max_batch=args.max_batch or default_max_batch(),
                            batch_wait_ms=args.batch_wait_ms,
                            body_timeout_s=args.body_timeout, max_queue=args.max_queue,
                            deadline_s=args.deadline, buckets=not args.no_buckets,
                            scale=args.scale)
    flags.check_range("--drain-timeout", args.drain_timeout, 0, 3600)
    args.connections = Connections(max_connections=args.max_connections,
                                   header_timeout_s=args.header_timeout,
                                   keep_alive_s=args.keep_alive,
                                   max_header_bytes=args.max_header_bytes)
  except ValueError as e:
    parser.error(str(e))
  return args, limits


def read_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
  """--token, else the first line of --token-file, else $SAPNET_SERVE_TOKEN, else None."""
  if args.token is not None and args.token_file is not None:
    parser.error("give --token or --token-file, not both")
  if args.token_file is not None:
    source = f"--token-file {args.token_file}"
    try:
      lines = fileio.read_text(args.token_file).splitlines()
    except (OSError, UnicodeDecodeError) as e:
      parser.error(f"{source}: cannot read it ({e})")
    token = lines[0].strip() if lines else ""
    if not token:
      parser.error(f"{source}: the first line is empty")
  elif args.token is not None:
    source, token = "--token", args.token
  else:
    source, token = f"${access_rules.TOKEN_ENV}", os.environ.get(access_rules.TOKEN_ENV)
  if token is not None:
    try:
      access_rules.check_token(token, source)
    except ValueError as e:
      parser.error(str(e))
  return token


def default_max_batch() -> int:
  """1 on a CPU: there a batch of N took longer than N single images (docs/serve.md, load
  test on 2 cores); elsewhere a batch fills the device's spare parallelism."""
  return 1 if jax.devices()[0].platform == "cpu" else DEFAULTS.max_batch


def main(argv: Sequence[str] | None = None) -> int:
  args, limits = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
  warning = access_rules.exposure_warning(args.host, args.access)
  if warning:  # on stderr, before the weights load, so it is seen even if loading fails
    logging.warning(warning)
  if args.no_compile_cache:
    compile_cache.disable()  # even where $JAX_COMPILATION_CACHE_DIR would turn it on
  else:
    compile_cache.enable()
  try:
    model = pretrained.load(args.weights, dtype=args.dtype)
  except (ValueError, OSError) as e:  # unknown or unfit weights, failed download
    print(f"error: {fileio.printable(str(e))}", file=sys.stderr)
    return 2
  name = pretrained.display_name(args.weights)
  entry = pretrained.REGISTRY.get(args.weights)
  logging.info("batching up to %d same-size images, waiting up to %g ms", limits.max_batch,
               limits.batch_wait_ms)
  try:
    derainer = infer.Derainer(model, stages=args.stages)
  except ValueError as e:  # --stages on a model without stages, or more than it has
    print(f"error: {fileio.printable(str(e))}", file=sys.stderr)
    return 2
  app = web_app.create_app(model, name, description=entry.description if entry else None,
                           limits=limits, access=args.access, derainer=derainer)
  warm_up(app.state.batcher, args.warmup)
  if not args.no_compile_cache:
    compile_cache.freeze()  # what clients send never reaches the disk (docs/serve.md, Limits)
  host = f"[{args.host}]" if ":" in args.host else args.host
  print(f"serving {name} on http://{host}:{args.port}/ (Ctrl-C stops)", flush=True)
  uvicorn.run(app, host=args.host, port=args.port, log_level="info",
              timeout_graceful_shutdown=args.drain_timeout, **uvicorn_options(args.connections))
  return 0


def warm_up(batcher: web_app.Batcher, which: str) -> None:
  """Compiles the programs `which` names (--warmup) before the server listens."""
  tile = batcher.tile
  if which == "none" or tile is None:  # --tile 0: no fixed set of sizes to warm
    return
  shapes = batcher.shapes() if which == "all" else [(tile, tile)]
  started = time.perf_counter()
  batcher.warm_up(shapes)
  logging.info("warm-up (%s): %d image size(s) compiled or loaded in %.1f s", which,
               len(shapes), time.perf_counter() - started)


if __name__ == "__main__":
  sys.exit(main())
