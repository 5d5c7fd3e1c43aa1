"""PRN: PReNet without the ConvLSTM."""

from configs import prenet


def get_config():
  config = prenet.get_config()
  config.model.recurrent = False
  return config
