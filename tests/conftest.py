"""Shared test helpers: where ../shared is, and skipping cleanly when it is absent."""

import os
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
