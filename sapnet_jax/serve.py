"""Serve de-raining over HTTP, with a web page: python -m sapnet_jax.serve --weights NAME|PATH.

Open the printed URL for the page (drop photos, compare before/after, download), or call the
API: curl --data-binary @photo.jpg -o out.png http://127.0.0.1:8000/v1/derain
(docs/serve.md). The server binds 127.0.0.1 unless --host says otherwise; it has no
authentication, so expose it beyond this machine only behind something that adds it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import jax
import uvicorn

from sapnet_jax import compile_cache, infer, pretrained, serving

DEFAULTS = serving.Limits()


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, serving.Limits]:
  parser = argparse.ArgumentParser(prog="python -m sapnet_jax.serve", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", default=pretrained.DEFAULT, metavar="NAME|PATH",
                      help=pretrained.WEIGHTS_HELP)
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default: 127.0.0.1, this machine only)")
  parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
  parser.add_argument("--max-bytes", type=int, default=DEFAULTS.max_bytes, metavar="B",
                      help=f"largest request body in bytes (default: {DEFAULTS.max_bytes})")
  parser.add_argument("--max-pixels", type=int, default=DEFAULTS.max_pixels, metavar="P",
                      help=f"largest image in pixels, refused with 413 above "
                      f"(default: {DEFAULTS.max_pixels})")
  parser.add_argument("--tile", type=int, default=infer.DEFAULT_TILE, metavar="N",
                      help="images with a side over N pixels are de-rained in N x N tiles; "
                      f"0 = never tile (default: {infer.DEFAULT_TILE})")
  parser.add_argument("--overlap", type=int, default=infer.DEFAULT_OVERLAP, metavar="P",
                      help=f"overlap of neighbouring tiles (default: {infer.DEFAULT_OVERLAP})")
  parser.add_argument("--max-batch", type=int, metavar="N",
                      help="most same-size images de-rained in one device call (default: 1 on "
                      f"a CPU, {DEFAULTS.max_batch} on a GPU or TPU)")
  parser.add_argument("--batch-wait-ms", type=float, default=DEFAULTS.batch_wait_ms,
                      metavar="MS", help="how long an image waits for others of its size "
                      f"(default: {DEFAULTS.batch_wait_ms})")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="computation precision (default: float32)")
  parser.add_argument("--no-compile-cache", action="store_true",
                      help="do not keep compiled programs on disk between runs")
  args = parser.parse_args(argv)
  if not 1 <= args.port <= 65535:
    parser.error(f"--port must be in 1..65535, got {args.port}")
  if args.max_batch is not None and args.max_batch < 1:
    parser.error(f"--max-batch must be >= 1, got {args.max_batch}")
  if args.tile < 0:
    parser.error(f"--tile must be >= 0, got {args.tile}")
  try:
    limits = serving.Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                            tile=args.tile or None, overlap=args.overlap,
                            max_batch=args.max_batch or default_max_batch(),
                            batch_wait_ms=args.batch_wait_ms)
  except ValueError as e:
    parser.error(str(e))
  return args, limits


def default_max_batch() -> int:
  """1 on a CPU: there a batch of N took longer than N single images (docs/serve.md, load
  test on 2 cores); elsewhere a batch fills the device's spare parallelism."""
  return 1 if jax.devices()[0].platform == "cpu" else DEFAULTS.max_batch


def main(argv: Sequence[str] | None = None) -> int:
  args, limits = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
  if not args.no_compile_cache:
    compile_cache.enable()
  try:
    model = pretrained.load(args.weights, dtype=args.dtype)
  except (ValueError, OSError) as e:  # unknown or unfit weights, failed download
    print(f"error: {e}", file=sys.stderr)
    return 2
  name = pretrained.display_name(args.weights)
  entry = pretrained.REGISTRY.get(args.weights)
  logging.info("batching up to %d same-size images, waiting up to %g ms", limits.max_batch,
               limits.batch_wait_ms)
  app = serving.create_app(model, name, description=entry.description if entry else None,
                           limits=limits)
  host = f"[{args.host}]" if ":" in args.host else args.host
  print(f"serving {name} on http://{host}:{args.port}/ (Ctrl-C stops)", flush=True)
  uvicorn.run(app, host=args.host, port=args.port, log_level="info")
  return 0


if __name__ == "__main__":
  sys.exit(main())
