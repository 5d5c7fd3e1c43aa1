"""`python -m sapnet_jax.serve` (a real subprocess, a tiny random model) under hostile clients:
connections that never send a request, or send it a byte at a time, are closed within the
stated timeouts, and the mix of benchmarks/load_serve.py --hostile (files decoding to 23
megapixels or to the whole pixel budget, a new size each request, clients that disconnect,
declared-oversized and trickled bodies, idle connections) leaves the normal clients answered
within a stated bound and the server's memory bounded. Raw sockets, so that the clients can
misbehave as no HTTP library lets them."""

import select
import socket
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from support import hostile
from support.paths import REPO
from support.live_servers import serve_command
from support.ports import free_port
from sapnet_jax import serve
from sapnet_jax.serving import web_app
from sapnet_jax.weights import model_files

sys.path.insert(0, str(REPO / "benchmarks"))
import load_serve  # noqa: E402 - the benchmark's hostile mix, so that both run the same one

# Short timeouts so the test runs in seconds; the defaults are checked by the CLI test below.
HEADER_TIMEOUT_S, BODY_TIMEOUT_S, KEEP_ALIVE_S = 2.0, 3.0, 1.0
SLACK_S = 2.0  # scheduling on a busy 2-core CI machine
NORMAL = hostile.png(64, 64, seed=1)  # what a normal client posts
NORMAL_BOUND_S = 10.0  # every normal request, even while the hostile ones run (2-core CPU)
LOAD_S = 12.0  # how long the mixed load lasts
HOSTILE_TIMEOUT_S = 10.0  # a hostile client gives up (and disconnects) after this
# The server's peak RSS over its RSS before the load: what --max-queue (8) requests of the
# whole default pixel budget (4 MP: about 100 MB each, decoded, as floats and de-rained) hold.
RSS_GROWTH_BOUND_MIB = 1024


def proc_status(pid: int, field: str) -> int:
  """A /proc/PID/status field in MiB (VmRSS: now; VmHWM: the peak so far)."""
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) // 1024
  raise KeyError(field)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
  """The serve command on a free 127.0.0.1 port with a tiny random model and its default
  limits, but short connection timeouts: (url, process)."""
  weights = tmp_path_factory.mktemp("serve_load") / "tiny.npz"
  model_files.save_model(model, weights)
  flags = ["--weights", str(weights), "--header-timeout", str(HEADER_TIMEOUT_S),
           "--body-timeout", str(BODY_TIMEOUT_S), "--keep-alive", str(KEEP_ALIVE_S)]
  with serve_command(flags, start_s=90) as (url, output, process):
    # The normal size compiled once, as any server that served it before.
    r = httpx.post(f"{url}/v1/derain", content=NORMAL, timeout=60)
    assert r.status_code == 200, (r.text, output()[-3000:])
    yield url, process


def test_idle_and_slow_connections_are_closed_within_the_timeouts(server):
  url, _ = server
  port = int(url.rsplit(":", 1)[1])
  limit = BODY_TIMEOUT_S + HEADER_TIMEOUT_S + 3 * SLACK_S
  kinds = {  # name: (head sent at once, bytes then sent one at a time)
      "idle": (b"", b""),
      "slow headers": (b"", load_serve.request_head(port, len(NORMAL))),
      "slow body": (load_serve.request_head(port, len(NORMAL)), NORMAL),
  }
  results: dict[tuple[str, int], tuple[float | None, bytes]] = {}

  def run(kind, i):
    head, trickle = kinds[kind]
    results[kind, i] = load_serve.hold(port, head, trickle, 0.2, limit)

  threads = [threading.Thread(target=run, args=(kind, i)) for kind in kinds for i in range(6)]
  for t in threads:
    t.start()
  time.sleep(0.5)
  # While all 18 are held, a normal client is served.
  r = httpx.post(f"{url}/v1/derain", content=NORMAL, timeout=30)
  assert r.status_code == 200, r.text
  for t in threads:
    t.join(limit + 10)
  for (kind, i), (closed_after, answer) in sorted(results.items()):
    assert closed_after is not None, f"{kind} #{i}: still open after {limit} s"
    if kind == "slow body":  # answered 408 when the body is late, closed after the answer
      assert answer.startswith(b"HTTP/1.1 408"), (kind, answer[:200])
      assert b"did not arrive within 3 s" in answer
      assert closed_after <= BODY_TIMEOUT_S + HEADER_TIMEOUT_S + SLACK_S, (kind, closed_after)
    else:
      assert closed_after <= HEADER_TIMEOUT_S + SLACK_S, (kind, closed_after)
      # Part of a head came: told why; nothing came: closed without a word.
      assert answer.startswith(b"HTTP/1.1 408") if kind == "slow headers" else answer == b""


def test_long_request_heads_are_refused(server):
  # h11 buffers an unfinished head up to --max-header-bytes (16 KiB here), then answers 400:
  # headers sent without end cannot fill the server's memory.
  url, _ = server
  port = int(url.rsplit(":", 1)[1])
  with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
    s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
    answer = b""
    for i in range(100):  # 2 kB a line, up to 200 kB
      try:
        s.sendall(b"X-Filler-%d: %s\r\n" % (i, b"a" * 2000))
      except OSError:
        break
      readable, _, _ = select.select([s], [], [], 0.01)
      if readable:
        break
    answer = s.recv(65536)
  assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
  assert i < 20, i
  assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_normal_clients_are_served_under_a_hostile_mix(server):
  # The mix of benchmarks/load_serve.py --hostile, its clients run from here: files that
  # decode to 4800x4800, a new size each request, clients gone before their answer, slow
  # senders, idle connections, declared 5 GB bodies; beside them 3 normal clients.
  url, process = server
  rss_before = proc_status(process.pid, "VmRSS")
  record = load_serve.Record()
  attackers = load_serve.hostile_clients(url, time.monotonic() + LOAD_S, HOSTILE_TIMEOUT_S,
                                         record)
  latencies, errors, _, _ = load_serve.run_clients(url, NORMAL, 3, LOAD_S, 30)
  for t in attackers:
    t.join(HOSTILE_TIMEOUT_S + 10)
  peak = proc_status(process.pid, "VmHWM")
  hostile_report = record.report()
  figures = {"normal requests": len(latencies), "errors": errors[:3],
             "p50": np.percentile(latencies, 50) if latencies else None,
             "max": max(latencies, default=None), "rss before, peak (MiB)": (rss_before, peak),
             "hostile": hostile_report}
  assert process.poll() is None, figures
  assert not any(t.is_alive() for t in attackers), figures
  assert not errors and len(latencies) >= 6, figures
  assert max(latencies) <= NORMAL_BOUND_S, figures
  assert peak - rss_before <= RSS_GROWTH_BOUND_MIB, figures
  for kind, got in hostile_report.items():
    # Never a 500 for what a client sent: at most a 503 (the server is full, try later).
    assert all(not a.isdigit() or int(a) < 500 or a == "503" for a in got["answers"]), figures
  assert hostile_report["declares a 5 GB body"]["answers"] == {"413": hostile_report[
      "declares a 5 GB body"]["count"]}, figures
  for kind in ("idle connection", "sends headers a byte at a time",
               "sends a body a byte at a time"):  # closed in time, or opened near the end
    bound = HEADER_TIMEOUT_S + SLACK_S + (BODY_TIMEOUT_S if "body" in kind else 0)
    assert hostile_report[kind]["seconds_max"] <= bound, figures
  # And the server answers at once afterwards.
  r = httpx.post(f"{url}/v1/derain", content=NORMAL, timeout=NORMAL_BOUND_S)
  assert r.status_code == 200, figures


def test_max_connections_counts_idle_ones_until_the_header_timeout_closes_them(model):
  # uvicorn counts open connections against its limit, idle ones included: without the head
  # deadline, three idle sockets would shut this server (limit 3) for good.
  app = web_app.create_app(model, "tiny")
  connections = serve.Connections(max_connections=3, header_timeout_s=1.0)
  port = free_port()
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                         **serve.uvicorn_options(connections)))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  try:
    deadline = time.monotonic() + 30
    while not server.started:
      assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
      time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/healthz"
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    time.sleep(0.2)
    assert httpx.get(url, timeout=10).status_code == 503
    time.sleep(1.0 + SLACK_S)  # the head deadline closes the idle ones
    assert httpx.get(url, timeout=10).status_code == 200
    assert all(s.recv(1) == b"" for s in idle)
    for s in idle:
      s.close()
  finally:
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("flags, message", [
    (["--header-timeout", "0"], "--header-timeout must be in (0, 3600]"),
    (["--body-timeout", "-1"], "--body-timeout must be in (0, 3600]"),
    (["--keep-alive", "0"], "--keep-alive must be in (0, 3600]"),
    (["--max-connections", "0"], "--max-connections must be >= 1"),
    (["--max-header-bytes", "10"], "--max-header-bytes must be in 1024..1048576"),
])
def test_cli_refuses_bad_connection_flags(flags, message, capsys):
  with pytest.raises(SystemExit) as exit_:
    serve.main(flags + ["--no-compile-cache"])
  assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_connection_defaults_reach_uvicorn():
  args, limits = serve.parse_args([])
  assert args.connections == serve.Connections() and limits.body_timeout_s == 60
  options = serve.uvicorn_options(args.connections)
  assert options["limit_concurrency"] == 64 and options["timeout_keep_alive"] == 5
  assert options["h11_max_incomplete_event_size"] == 16384 and options["ws"] == "none"
  assert options["http"].header_timeout_s == 10
