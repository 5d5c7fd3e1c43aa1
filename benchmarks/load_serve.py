"""Load test of `python -m sapnet_jax.serve`: N clients posting a photo for T seconds, alone or
with hostile clients beside them (--hostile).

    python benchmarks/load_serve.py --clients 4 --seconds 30 --size 256x256 \
        --out benchmarks/results/serve_load.json
    python benchmarks/load_serve.py --hostile --clients 2 --seconds 30 --size 64x64 \
        --out benchmarks/results/serve_load_hostile.json

Starts the server as a subprocess on a free 127.0.0.1 port, warms it up (each client posts
twice together, untimed: the first calls compile the network for that size and for the batch
sizes that occur), then each client posts the photo in a loop, one request at a time, for
`--seconds`. Reports requests, errors, latency p50/p95/max, throughput and how often each
batch size occurred (the server's X-Batch-Size), as JSON to --out and on stdout. The photo is
examples/rain-064.jpg (or --image) resized to --size.

With --hostile, during the same seconds: a client posting files that decode to 4800x4800 from
a few kB (corrupt JPEG, WebP, PNG), one posting files that decode to exactly the server's pixel
budget (accepted: de-rained in tiles, for a long time), one that sends such a file and
disconnects before the answer, one posting tiny images of a new size each time, slow senders
(headers or body a byte at a time), idle connections, and declared 5 GB bodies
(tests/support/hostile.py makes the files). It reports what each hostile kind got and how long each
took (for raw connections: how long they stayed open), and the server's RSS from /proc
(before the load, sampled peak during it, VmHWM since start, after).
"""

import argparse
import io
import json
import math
import os
import platform
import re
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

import httpx
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from support import hostile  # noqa: E402 - the hostile corpus the tests use: one definition of each kind
from support.ports import free_port  # noqa: E402


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
             "--port", str(port), "--batch-wait-ms", str(args.batch_wait_ms)]
  if args.max_batch is not None:
    command += ["--max-batch", str(args.max_batch)]
  if args.no_compile_cache:
    command.append("--no-compile-cache")
  command += args.serve_flag
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


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f
                   if line.startswith("model name")), "unknown CPU")
  except OSError:
    return "unknown CPU"


def proc_status_mib(pid: int, field: str) -> float:
  """A /proc/PID/status field in MiB (VmRSS: resident now; VmHWM: the peak so far)."""
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  raise KeyError(field)


def request_head(port: int, length: int, path: str = "/v1/derain") -> bytes:
  return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
          f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n").encode()


def hold(port: int, head: bytes, trickle: bytes, every_s: float, limit_s: float
         ) -> tuple[float | None, bytes]:
  """Opens a connection, sends `head` at once and then `trickle` a byte every `every_s`,
  reading whatever the server answers, until the server closes the connection or `limit_s`
  passes; returns (seconds until it closed, or None if still open, what it answered)."""
  answer, sent = b"", 0
  started = time.monotonic()
  with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
    try:
      if head:
        s.sendall(head)
      while time.monotonic() - started < limit_s:
        readable, _, _ = select.select([s], [], [], every_s)
        if readable:
          data = s.recv(65536)
          if not data:
            return time.monotonic() - started, answer
          answer += data
        elif sent < len(trickle):
          s.sendall(trickle[sent:sent + 1])
          sent += 1
    except OSError:  # reset by the server: closed
      return time.monotonic() - started, answer
  return None, answer


class Record:
  """What the hostile clients got, by kind, from several threads."""

  def __init__(self):
    self.lock, self.answers = threading.Lock(), {}

  def add(self, kind: str, status: int | str, seconds: float) -> None:
    with self.lock:
      self.answers.setdefault(kind, []).append((str(status), seconds))

  def report(self) -> dict:
    out = {}
    for kind, answers in sorted(self.answers.items()):
      statuses = [a for a, _ in answers]
      seconds = np.asarray([s for _, s in answers])
      out[kind] = {"count": len(answers),
                   "answers": {a: statuses.count(a) for a in sorted(set(statuses))},
                   "seconds_p50": round(float(np.percentile(seconds, 50)), 3),
                   "seconds_max": round(float(seconds.max()), 3)}
    return out


HOSTILE_KINDS = ("bombs", "budget", "sizes", "disconnect", "oversized", "slow-headers",
                 "slow-body", "idle")


def hostile_clients(url: str, stop_at: float, timeout: float, record: Record,
                    kinds: Sequence[str] = HOSTILE_KINDS) -> list[threading.Thread]:
  """The hostile mix, as started threads that stop by `stop_at` (or after their last request,
  bounded by `timeout`). Each kind appends (answer, seconds) to `record`: an HTTP status; for
  a raw connection "closed" / "open" (still open when the run ended) / "gone" (the client
  left); or the name of the error the client met."""
  port = int(url.rsplit(":", 1)[1])
  bombs = [hostile.jpeg_decoding_to(4800), hostile.webp_decoding_to(4800),
           hostile.png_decoding_to(4800)]
  # The biggest image the server takes: a few kB that decode to its whole pixel budget, and
  # are de-rained (tiled, slowly) unless something else stops them.
  side = math.isqrt(httpx.get(f"{url}/v1/models", timeout=timeout).json()["limits"]["max_pixels"])
  budget = [hostile.jpeg_decoding_to(side), hostile.webp_decoding_to(side)]
  budget_kind = f"decodes to the pixel budget ({side}x{side})"

  def post_loop(kind: str, uploads):
    with httpx.Client(base_url=url, timeout=timeout) as c:
      for data in uploads:
        if time.monotonic() >= stop_at:
          return
        t = time.monotonic()
        try:
          status = c.post("/v1/derain", content=data).status_code
        except httpx.HTTPError as e:
          status = type(e).__name__
        record.add(kind, status, time.monotonic() - t)
        # At most 10 requests a second: the mix measures what each request may cost, not a
        # flood (a reverse proxy's rate limit is for that).
        time.sleep(max(0.0, t + 0.1 - time.monotonic()))

  def cycle(items):
    while True:
      yield from items

  def disconnecting():
    # A file of the whole budget, then gone 0.2 s later before any answer (its work is not
    # wanted and should stop), or gone halfway through sending it.
    for i, data in enumerate(cycle(budget)):
      if time.monotonic() >= stop_at:
        return
      kind = (f"disconnects after sending a {side}x{side} file" if i % 2 == 0 else
              f"disconnects halfway through sending a {side}x{side} file")
      sent = data if i % 2 == 0 else data[:len(data) // 2]
      t = time.monotonic()
      try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
          s.sendall(request_head(port, len(data)) + sent)
          time.sleep(0.2)
        answer = "gone"
      except OSError as e:
        answer = type(e).__name__
      record.add(kind, answer, time.monotonic() - t)
      time.sleep(0.3)

  def slow(kind: str, head: bytes, trickle: bytes):
    # Seconds are how long each connection was held open: until the server closed it, or
    # ("open") until the run ended.
    while time.monotonic() < stop_at - 1:
      t = time.monotonic()
      try:
        closed_after, _ = hold(port, head, trickle, 0.2, stop_at - t)
        answer = "open" if closed_after is None else "closed"
      except OSError as e:  # could not even connect
        answer = type(e).__name__
      record.add(kind, answer, time.monotonic() - t)

  def oversized():
    while time.monotonic() < stop_at:
      t = time.monotonic()
      try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
          s.sendall(request_head(port, 5_000_000_000))
          answer = s.recv(65536)
        status = answer.split()[1].decode() if answer else "closed"
      except OSError as e:
        status = type(e).__name__
      record.add("declares a 5 GB body", status, time.monotonic() - t)
      time.sleep(0.5)

  normal = hostile.png(64, 64)
  clients = {  # kind: [(function, its arguments)]
      "bombs": [(post_loop, ("decodes to 4800x4800", cycle(bombs)))],
      "budget": [(post_loop, (budget_kind, cycle(budget)))],
      "sizes": [(post_loop, ("new size each time", hostile.sized_pngs(200)))],
      "disconnect": [(disconnecting, ())],
      "oversized": [(oversized, ())],
      "slow-headers": [(slow, ("sends headers a byte at a time", b"",
                               request_head(port, len(normal))))],
      "slow-body": [(slow, ("sends a body a byte at a time", request_head(port, len(normal)),
                            normal))],
      "idle": [(slow, ("idle connection", b"", b""))] * 2,
  }
  threads = [threading.Thread(target=f, args=a) for kind in kinds for f, a in clients[kind]]
  for t in threads:
    t.daemon = True
    t.start()
  return threads


class RssSampler(threading.Thread):
  """Samples the server's VmRSS every 0.1 s until stopped (its VmHWM gives the exact peak)."""

  def __init__(self, pid: int):
    super().__init__(daemon=True)
    self.pid, self.samples, self.done = pid, [], threading.Event()

  def run(self):
    while not self.done.wait(0.1):
      try:
        self.samples.append(proc_status_mib(self.pid, "VmRSS"))
      except (OSError, KeyError):
        return


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
  parser.add_argument("--max-batch", type=int,
                      help="the server's --max-batch (default 4: batching on, to measure it; "
                      "with --hostile, the server's default)")
  parser.add_argument("--batch-wait-ms", type=float, default=5.0)
  parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
  parser.add_argument("--no-compile-cache", action="store_true")
  parser.add_argument("--out", help="JSON report file")
  parser.add_argument("--hostile", action="store_true",
                      help="hostile clients beside the normal ones (see above)")
  parser.add_argument("--server-log", metavar="PATH", help="the server's output (default: none)")
  parser.add_argument("--without", action="append", default=[], choices=HOSTILE_KINDS,
                      help="leave this hostile kind out of --hostile (repeatable), to see "
                      "what each costs the normal clients")
  parser.add_argument("--serve-flag", action="append", default=[], metavar="FLAG",
                      help="passed to the server as it is (repeatable): --serve-flag=--tile=256")
  args = parser.parse_args(argv)
  if args.max_batch is None and not args.hostile:
    args.max_batch = 4
  if args.clients < 1 or args.seconds <= 0:
    parser.error("--clients and --seconds must be positive")
  if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*)?", args.size):
    parser.error(f"--size must be WxH or N, got {args.size!r}")

  data, (width, height) = photo(args.image, args.size)
  port = free_port()
  url = f"http://127.0.0.1:{port}"
  with open(args.server_log or os.devnull, "wb") as log:
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
      if args.hostile:
        rss_before = proc_status_mib(server.pid, "VmRSS")
        sampler, record = RssSampler(server.pid), Record()
        sampler.start()
        kinds = [k for k in HOSTILE_KINDS if k not in args.without]
        attackers = hostile_clients(url, time.monotonic() + args.seconds, args.timeout, record,
                                    kinds)
      latencies, errors, batch_sizes, wall = run_clients(url, data, args.clients, args.seconds,
                                                         args.timeout)
      if args.hostile:
        for t in attackers:
          t.join(args.timeout + 10)
        sampler.done.set()
        hostile_report = {
            "clients": record.report(),
            "still_running": sum(t.is_alive() for t in attackers),
            "server_rss_mib": {"before": round(rss_before),
                               "peak_during_load": round(max(sampler.samples, default=0)),
                               "peak_since_start": round(proc_status_mib(server.pid, "VmHWM")),
                               "after": round(proc_status_mib(server.pid, "VmRSS"))},
            "server_alive": server.poll() is None,
        }
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
      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {cpu_model()}",
      "python": platform.python_version(),
      # Other work on the machine slows the server: the 1-minute load average around the run.
      "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
  }
  if args.hostile:
    report["serve_flags"] = args.serve_flag
    report["hostile_left_out"] = args.without
    report["hostile"] = hostile_report
  text = json.dumps(report, indent=2)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0 if not errors else 1


if __name__ == "__main__":
  sys.exit(main())
