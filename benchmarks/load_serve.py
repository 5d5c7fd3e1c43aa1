"""Load test of `python -m sapnet_jax.serve`: N clients posting a photo for T seconds.

    python benchmarks/load_serve.py --clients 4 --seconds 30 --size 256x256 \
        --out benchmarks/results/serve_load.json

Starts the server as a subprocess on a free 127.0.0.1 port, warms it up (each client posts
twice together, untimed: the first calls compile the network for that size and for the batch
sizes that occur), then each client posts the photo in a loop, one request at a time, for
`--seconds`. Reports requests, errors, latency p50/p95/max, throughput and how often each
batch size occurred (the server's X-Batch-Size), as JSON to --out and on stdout. The photo is
examples/rain-064.jpg (or --image) resized to --size.
"""

import argparse
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def photo(path: str, size: str) -> tuple[bytes, tuple[int, int]]:
  """JPEG bytes of `path` resized to `size` ("WxH", or "N" pixels on its longer side), and
  (width, height)."""
  im = Image.open(path).convert("RGB")
  if "x" in size:
    width, height = (int(v) for v in size.split("x"))
  else:
    scale = int(size) / max(im.size)
    width, height = max(1, round(im.width * scale)), max(1, round(im.height * scale))
  im = im.resize((width, height), Image.Resampling.LANCZOS)
  buffer = io.BytesIO()
  im.save(buffer, format="JPEG", quality=92)
  return buffer.getvalue(), im.size


def start_server(args, port: int, log) -> subprocess.Popen:
  command = [sys.executable, "-m", "sapnet_jax.serve", "--weights", args.weights,
             "--port", str(port), "--max-batch", str(args.max_batch),
             "--batch-wait-ms", str(args.batch_wait_ms)]
  if args.no_compile_cache:
    command.append("--no-compile-cache")
  return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, server: subprocess.Popen, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if server.poll() is not None:
      raise RuntimeError(f"the server exited with status {server.returncode} before it was ready")
    try:
      if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
        return
    except httpx.TransportError:
      pass
    time.sleep(0.2)
  raise RuntimeError(f"the server was not ready within {timeout} s")


def warm_up(url: str, data: bytes, clients: int, timeout: float) -> None:
  """Each client posts once, all together."""
  errors = []

  def post():
    try:
      r = httpx.post(f"{url}/v1/derain", content=data, timeout=timeout)
      if r.status_code != 200:
        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
    except httpx.HTTPError as e:
      errors.append(f"{type(e).__name__}: {e}")

  threads = [threading.Thread(target=post, daemon=True) for _ in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout + 10)
  if errors:
    raise RuntimeError(f"warm-up failed: {errors[0]}")


def run_clients(url: str, data: bytes, clients: int, seconds: float, timeout: float):
  """Each client posts in a loop until `seconds` have passed; returns (latencies of the
  successful requests, errors, batch sizes, wall seconds)."""
  latencies, errors, batch_sizes, lock = [], [], [], threading.Lock()
  start = threading.Barrier(clients)
  stop_at = [0.0]

  def client():
    with httpx.Client(base_url=url, timeout=timeout) as c:
      if start.wait(30) == 0:
        stop_at[0] = time.monotonic() + seconds
      start.wait(30)  # all see stop_at set
      while time.monotonic() < stop_at[0]:
        t = time.perf_counter()
        try:
          r = c.post("/v1/derain", content=data)
          ok = r.status_code == 200
          reason = f"HTTP {r.status_code}: {r.text[:200]}" if not ok else ""
        except httpx.HTTPError as e:
          ok, reason = False, f"{type(e).__name__}: {e}"
        elapsed = time.perf_counter() - t
        with lock:
          if ok:
            latencies.append(elapsed)
            batch_sizes.append(int(r.headers.get("x-batch-size", "0")))
          else:
            errors.append(reason)

  t0 = time.monotonic()
  threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(seconds + timeout + 60)
  return latencies, errors, batch_sizes, time.monotonic() - t0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", default="sapnet-rain100h")
  parser.add_argument("--clients", type=int, default=4)
  parser.add_argument("--seconds", type=float, default=30.0)
  parser.add_argument("--size", default="256x256",
                      help="the photo's size: WxH, or N pixels on its longer side "
                      "(default: 256x256)")
  parser.add_argument("--image", default=os.path.join(ROOT, "examples", "rain-064.jpg"))
  parser.add_argument("--max-batch", type=int, default=4,
                      help="the server's --max-batch (default 4: batching on, to measure it)")
  parser.add_argument("--batch-wait-ms", type=float, default=5.0)
  parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
  parser.add_argument("--no-compile-cache", action="store_true")
  parser.add_argument("--out", help="JSON report file")
  args = parser.parse_args(argv)
  if args.clients < 1 or args.seconds <= 0:
    parser.error("--clients and --seconds must be positive")
  if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*)?", args.size):
    parser.error(f"--size must be WxH or N, got {args.size!r}")

  data, (width, height) = photo(args.image, args.size)
  port = free_port()
  url = f"http://127.0.0.1:{port}"
  with open(os.devnull, "wb") as log:
    server = start_server(args, port, log)
    try:
      t = time.monotonic()
      wait_ready(url, server, 120)
      startup = time.monotonic() - t
      t = time.monotonic()
      for _ in range(2):  # untimed warm-up: compiles for the size and the batch sizes seen
        warm_up(url, data, args.clients, args.timeout)
      warmup = time.monotonic() - t
      load_before = os.getloadavg()[0]
      latencies, errors, batch_sizes, wall = run_clients(url, data, args.clients, args.seconds,
                                                         args.timeout)
    finally:
      server.terminate()
      try:
        server.wait(20)
      except subprocess.TimeoutExpired:
        server.kill()
  lat = np.asarray(latencies) if latencies else np.zeros(1)
  report = {
      "weights": args.weights, "clients": args.clients, "seconds": args.seconds,
      "image": os.path.relpath(args.image, ROOT) if args.image.startswith(ROOT) else
               os.path.basename(args.image),
      "image_size": f"{width}x{height}", "upload_bytes": len(data),
      "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
      "requests": len(latencies) + len(errors), "errors": len(errors),
      "error_examples": errors[:3],
      "latency_s": {"p50": round(float(np.percentile(lat, 50)), 4),
                    "p95": round(float(np.percentile(lat, 95)), 4),
                    "max": round(float(lat.max()), 4), "mean": round(float(lat.mean()), 4)},
      "throughput_rps": round(len(latencies) / wall, 3),
      "batch_sizes": {str(k): batch_sizes.count(k) for k in sorted(set(batch_sizes))},
      "startup_s": round(startup, 2), "warmup_s": round(warmup, 2),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
      "python": platform.python_version(),
      # Other work on the machine slows the server: the 1-minute load average around the run.
      "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
  }
  text = json.dumps(report, indent=2)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0 if not errors else 1


if __name__ == "__main__":
  sys.exit(main())
