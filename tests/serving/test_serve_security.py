"""Who may use `python -m sapnet_jax.serve` (sapnet_jax.serving.access_rules): requests addressed to
another host name (DNS rebinding) and POSTs from other sites' pages are refused before
anything is read or computed, the token closes the API but not the page, and a server bound
beyond loopback warns. The app runs under a real uvicorn on a free 127.0.0.1 port, in this
process where the test counts what the batcher ran, else as the command in a subprocess."""

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from support.paths import REPO
from support.hostile import png
from support.live_servers import live, serve_command
from sapnet_jax import serve
from sapnet_jax.serving import access_rules, web_app
from sapnet_jax.weights import model_files

LIMITS = web_app.Limits(max_bytes=300_000, max_pixels=20_000, tile=48, overlap=8, max_batch=1,
                        batch_wait_ms=0)
TOKEN = "t0ken-for-the-tests-only-0123456789"
IMAGE = png(16, 24)


def count_derains(app) -> list[int]:
  """Counts the images the app hands to its batcher (the device's only way in)."""
  batcher, calls = app.state.batcher, [0]
  original = batcher.derain

  async def counted(*args, **kwargs):
    calls[0] += 1
    return await original(*args, **kwargs)

  batcher.derain = counted
  return calls


@pytest.fixture(scope="module")
def guarded(model, derainer):
  """(URL, app, derain count) of a server with the command's default access rules, plus one
  name allowed as --allow-host would."""
  access = access_rules.access_for("127.0.0.1", ["photos.example.org"])
  app = web_app.create_app(model, "tiny", limits=LIMITS, derainer=derainer, access=access)
  calls = count_derains(app)
  with live(app) as url:
    yield url, app, calls


@pytest.fixture(scope="module")
def with_token(model, derainer):
  access = access_rules.access_for("127.0.0.1", token=TOKEN)
  app = web_app.create_app(model, "tiny", limits=LIMITS, derainer=derainer, access=access)
  with live(app) as url:
    yield url


def port_of(url: str) -> int:
  return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "localhost.evil.example",
                                  "127.0.0.1.nip.io:{port}", "10.0.0.1", "[::2]:{port}", ""])
def test_other_host_names_are_refused(guarded, host):
  # A DNS-rebinding page reaches 127.0.0.1 under its own name: that name is in the Host header.
  url, _, calls = guarded
  before = calls[0]
  host = host.format(port=port_of(url))
  with httpx.Client(base_url=url, timeout=30) as c:
    r = c.post("/v1/derain", content=IMAGE, headers={"Host": host})
    page = c.get("/", headers={"Host": host})
    models = c.get("/v1/models", headers={"Host": host})
    health = c.get("/healthz", headers={"Host": host})  # probes address servers by IP
  for answer in (r, page, models):
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert "is not a name this server answers to" in answer.json()["error"]
    assert "--allow-host" in answer.json()["error"]
  assert health.status_code == 200 and health.json()["status"] == "ok"
  assert calls[0] == before


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}",
                                  "LOCALHOST", "photos.example.org", "Photos.Example.Org.:443"])
def test_loopback_and_allowed_names_are_served(guarded, host):
  url, _, _ = guarded
  with httpx.Client(base_url=url, timeout=60) as c:
    r = c.post("/v1/derain", content=IMAGE, headers={"Host": host.format(port=port_of(url))})
  assert r.status_code == 200, r.text
  assert r.headers["x-image-size"] == "24x16"


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example", "Content-Type": "text/plain"},
    {"Origin": "http://evil.example", "Content-Type": "multipart/form-data; boundary=x"},
    {"Origin": "null", "Content-Type": "text/plain"},  # a sandboxed frame or a file: page
    {"Origin": "http://127.0.0.1:{other}", "Content-Type": "text/plain"},  # another local site
    {"Origin": "http://localhost:{port}"},  # the Host below is 127.0.0.1: not the same origin
    {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},  # a browser without Origin
    {"Sec-Fetch-Site": "same-site"},
    {"Referer": "http://evil.example/page.html", "Content-Type": "text/plain"},
])
def test_cross_site_posts_are_refused_and_compute_nothing(guarded, headers):
  url, _, calls = guarded
  before = calls[0]
  headers = {k: v.format(port=port_of(url), other=port_of(url) + 1) for k, v in headers.items()}
  r = httpx.post(f"{url}/v1/derain", content=IMAGE, headers=headers, timeout=30)
  assert r.status_code == 403, r.text
  assert r.headers["content-type"] == "application/json"
  assert r.json()["error"].startswith("cross-site request refused")
  assert calls[0] == before


@pytest.mark.parametrize("headers", [
    {},  # curl, scripts: no Origin
    {"Origin": "http://127.0.0.1:{port}"},  # the page itself
    {"Origin": "http://localhost:{port}", "Host": "localhost:{port}"},
    {"Sec-Fetch-Site": "same-origin"},
    {"Referer": "http://127.0.0.1:{port}/"},
])
def test_same_origin_and_non_browser_posts_are_served(guarded, headers):
  url, _, calls = guarded
  before = calls[0]
  headers = {k: v.format(port=port_of(url)) for k, v in headers.items()}
  r = httpx.post(f"{url}/v1/derain", content=IMAGE, headers=headers, timeout=60)
  assert r.status_code == 200, r.text
  assert calls[0] == before + 1


def test_refused_requests_are_answered_before_their_body_is_read(guarded):
  # Straight through the ASGI interface: a cross-site POST and a foreign Host are answered
  # without one byte of the body being pulled, so nothing was decoded or computed.
  _, app, _ = guarded
  for headers in ({"host": "127.0.0.1", "origin": "http://evil.example"},
                  {"host": "evil.example"}):
    sent, pulled = [], [0]

    async def receive():
      pulled[0] += 1
      return {"type": "http.request", "body": IMAGE, "more_body": False}

    async def send(message):
      sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/derain", "raw_path": b"/v1/derain",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80),
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    assert sent[0]["status"] in (400, 403) and pulled[0] == 0, (headers, sent[0])


def test_token_closes_the_api_but_not_the_page(with_token):
  url = with_token
  with httpx.Client(base_url=url, timeout=60) as c:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
                    {"Authorization": f"Bearer {TOKEN}x"}):
      for r in (c.post("/v1/derain", content=IMAGE, headers=headers),
                c.get("/v1/models", headers=headers)):
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer <token>" in r.json()["error"]
    for path in ("/", "/static/app.js", "/static/style.css", "/healthz"):
      assert c.get(path).status_code == 200, path
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert c.get("/v1/models", headers=auth).json()["models"][0]["name"] == "tiny"
    r = c.post("/v1/derain", content=IMAGE, headers=auth)
    assert r.status_code == 200 and r.headers["x-image-size"] == "24x16"
    # The token does not lift the other rules.
    r = c.post("/v1/derain", content=IMAGE, headers={**auth, "Origin": "http://evil.example"})
    assert r.status_code == 403


@pytest.mark.parametrize("host, exposed", [
    ("127.0.0.1", False), ("localhost", False), ("::1", False), ("127.0.0.2", False),
    ("0.0.0.0", True), ("::", True), ("192.168.1.20", True), ("photos.example.org", True)])
def test_only_loopback_binds_are_quiet(host, exposed):
  warning = access_rules.exposure_warning(host, access_rules.access_for(host))
  assert (warning is not None) == exposed
  if exposed:
    assert "anyone who can reach this port can use the server" in warning
    assert "--token-file" in warning and "reverse proxy" in warning


@pytest.mark.parametrize("flags, env, message", [
    (["--token", "short"], None, "--token: the token must have at least 16 characters"),
    ([], "short", "$SAPNET_SERVE_TOKEN: the token must have at least 16 characters"),
    (["--token-file", "{short_file}"], None, "short.txt: the token must have at least 16"),
    (["--token", "with space in the middle"], None, "printable ASCII without spaces"),
    (["--token", TOKEN, "--token-file", "token.txt"], None, "not both"),
    (["--token-file", "no-such-token-file.txt"], None, "--token-file no-such-token-file.txt: "
     "cannot read it"),
    (["--allow-host", "evil.example/path"], None, "--allow-host: 'evil.example/path' is not"),
])
def test_cli_refuses_bad_access_flags(flags, env, message, capsys, monkeypatch, tmp_path):
  (tmp_path / "short.txt").write_text("short\n")
  flags = [f.format(short_file=tmp_path / "short.txt") for f in flags]
  if env is None:
    monkeypatch.delenv(access_rules.TOKEN_ENV, raising=False)
  else:
    monkeypatch.setenv(access_rules.TOKEN_ENV, env)
  with pytest.raises(SystemExit) as exit_:
    serve.main(flags + ["--no-compile-cache"])
  assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_token_file_and_env(tmp_path, monkeypatch):
  monkeypatch.setenv(access_rules.TOKEN_ENV, TOKEN)
  args, _ = serve.parse_args([])
  assert args.access.token == TOKEN and TOKEN not in repr(args.access)
  (tmp_path / "token.txt").write_text(f"  {TOKEN[::-1]}\nsecond line\n")
  args, _ = serve.parse_args(["--token-file", str(tmp_path / "token.txt")])
  assert args.access.token == TOKEN[::-1]  # the file wins over the environment
  monkeypatch.delenv(access_rules.TOKEN_ENV)
  args, _ = serve.parse_args(["--host", "192.168.1.20", "--allow-host", "Photos.Example.Org"])
  assert args.access.token is None
  assert args.access.hosts == ("localhost", "127.0.0.1", "::1", "192.168.1.20",
                               "photos.example.org")


@pytest.fixture(scope="module")
def tiny_weights(model, tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "tiny.npz"
  model_files.save_model(model, path)
  return path


def test_command_refuses_rebinding_and_cross_site_posts(tiny_weights):
  # The command as a user starts it, with no access flag at all.
  with serve_command(["--weights", str(tiny_weights)]) as (url, output, _):
    with httpx.Client(base_url=url, timeout=60) as c:
      rebound = c.post("/v1/derain", content=IMAGE, headers={"Host": "evil.example"})
      cross = c.post("/v1/derain", content=IMAGE, headers={
          "Origin": "http://evil.example", "Content-Type": "text/plain"})
      own = c.post("/v1/derain", content=IMAGE, headers={"Origin": url})
  assert rebound.status_code == 400 and "Host header" in rebound.json()["error"]
  assert cross.status_code == 403 and "cross-site" in cross.json()["error"]
  assert own.status_code == 200, own.text
  assert "not only this machine" not in output()


def test_command_on_every_interface_warns_and_requires_the_token(tiny_weights):
  # Bound to 0.0.0.0 (all traffic here stays on 127.0.0.1), the token given by environment.
  with serve_command(["--weights", str(tiny_weights), "--host", "0.0.0.0"],
                     {access_rules.TOKEN_ENV: TOKEN}) as (url, output, _):
    with httpx.Client(base_url=url, timeout=60) as c:
      without = c.post("/v1/derain", content=IMAGE)
      allowed = c.post("/v1/derain", content=IMAGE, headers={"Authorization": f"Bearer {TOKEN}"})
    log = output()
  assert without.status_code == 401 and allowed.status_code == 200, (without.text, allowed.text)
  (warning,) = [line for line in log.splitlines() if "not only this machine" in line]
  assert warning.startswith("WARNING: serving on every interface")
  assert "clear text" in warning and TOKEN not in log


def test_command_warns_before_loading_weights():
  # The warning comes first, so it is seen even when the weights are wrong.
  env = {k: v for k, v in os.environ.items() if k != access_rules.TOKEN_ENV}
  run = subprocess.run([sys.executable, "-m", "sapnet_jax.serve", "--host", "0.0.0.0",
                        "--weights", "nope", "--no-compile-cache"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 2
  assert "anyone who can reach this port can use the server" in run.stderr
  assert "registered weights name" in run.stderr
