"""MSNet trained on the labelled synthetic pairs only (ω = 0, no real images).

    python -m sapnet_jax.main --config=configs/msnet_supervised.py --workdir=W

The ablation baseline for configs/msnet_semi.py: the same network, data and optimiser
without the matching loss.
"""

import ml_collections

from configs import msnet_semi


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
  """Variants as configs/msnet_semi.py (paper | demo)."""
  config = msnet_semi.get_config(variant)
  config.loss.matching_weight = 0.0
  config.data.real_dataset = ""
  config.data.real_manual_dir = None
  return config
