"""MSNet trained on the labelled synthetic pairs only (ω = 0, no real images).

    python -m sapnet_jax.main --config=configs/msnet_supervised.py --workdir=W

The ablation baseline for configs/msnet_semi.py: the same network, data and optimiser
without the matching loss.
"""

import ml_collections

from configs import msnet_semi


def get_config() -> ml_collections.ConfigDict:
  config = msnet_semi.get_config()
  config.loss.matching_weight = 0.0
  config.data.real_dataset = ""
  return config
