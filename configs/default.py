"""SAPNet as in the paper and the official code (Rain100H).

Only the model block exists so far; the trainer and evaluator fill in the rest of the
experiment. The model block maps one to one onto sapnet_jax.models.pdu.PDUConfig.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      family="pdu",
      attention="cra",  # cra | ca | se | none (paper Table 2)
      reduction=16,
      dilation=True,
      recurrent=True,
      stages=6,
      channels=32,
      num_blocks=5,
      scan=False,  # a Python loop over stages; True uses one lax.scan step
      dtype="float32",
  ))
  return config
