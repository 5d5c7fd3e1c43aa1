"""Every experiment config builds the architecture it names."""

import importlib

import pytest
from flax import nnx

from sapnet_jax import models
from sapnet_jax.models import msnet, pdu


@pytest.mark.parametrize("name,preset", [("default", pdu.SAPNET), ("prenet", pdu.PRENET),
                                         ("prn", pdu.PRN)])
def test_config_model_block(name, preset):
  config = importlib.import_module(f"configs.{name}").get_config()
  cfg = models.config_from_dict(config.model.to_dict())
  assert cfg == preset
  model = nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0)))
  assert isinstance(model, pdu.PDUNet)


@pytest.mark.parametrize("name,matching_weight,real", [("msnet_semi", 1.0, "real_rain"),
                                                        ("msnet_supervised", 0.0, "")])
def test_msnet_configs(name, matching_weight, real):
  config = importlib.import_module(f"configs.{name}").get_config()
  cfg = models.config_from_dict(config.model.to_dict())
  assert cfg == msnet.MSNET
  assert isinstance(nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0))), msnet.MSNet)
  assert config.loss.matching_weight == matching_weight and config.data.real_dataset == real
  # Paper §4.1: 64x64 patches, batch 16, Adam lr 5e-4.
  assert (config.data.patch_size, config.data.global_batch_size, config.optim.lr) == (64, 16, 5e-4)
