"""Every experiment config builds the architecture it names."""

import importlib

import pytest
from flax import nnx

from sapnet_jax import models
from sapnet_jax.models import pdu


@pytest.mark.parametrize("name,preset", [("default", pdu.SAPNET), ("prenet", pdu.PRENET),
                                         ("prn", pdu.PRN)])
def test_config_model_block(name, preset):
  config = importlib.import_module(f"configs.{name}").get_config()
  cfg = models.config_from_dict(config.model.to_dict())
  assert cfg == preset
  model = nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0)))
  assert isinstance(model, pdu.PDUNet)
