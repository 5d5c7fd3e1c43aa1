"""PReNet (Ren et al., CVPR 2019): SAPNet's network without attention or dilation.

    python -m sapnet_jax.main --config=configs/prenet.py --workdir=W
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.attention = "none"
  config.model.dilation = False
  return config
