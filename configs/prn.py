"""PRN: PReNet without the ConvLSTM.

    python -m sapnet_jax.main --config=configs/prn.py --workdir=W
"""

from configs import prenet


def get_config():
  config = prenet.get_config()
  config.model.recurrent = False
  return config
