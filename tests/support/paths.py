"""Where the repository, its test fixtures and ../shared are; skipping cleanly when ../shared is
absent (it holds data and weights too large for the repository)."""

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
SHARED = Path(os.environ.get("SAPNET_SHARED", REPO.parent / "shared"))


def shared_path(rel: str) -> Path:
  """Returns ../shared/<rel>, skipping the test with the reason when it is not there."""
  path = SHARED / rel
  if not path.exists():
    pytest.skip(f"needs {path} (the project's shared data/weights); not present here")
  return path
