"""Fixtures of the serving tests: the tiny random network they serve (support/live_servers.py)
and its de-rainer, built once per test file."""

import pytest

from sapnet_jax import infer
from support.live_servers import tiny_model


@pytest.fixture(scope="module")
def model():
  return tiny_model()


@pytest.fixture(scope="module")
def derainer(model):
  return infer.Derainer(model)
