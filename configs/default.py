"""SAPNet as in the paper and the official code (Rain100H).

    python -m sapnet_jax.main --config=configs/default.py --workdir=W --mode=eval

The model block maps one to one onto sapnet_jax.models.pdu.PDUConfig. The eval block names the
test sets (folders of rainy and clean images paired by name; the defaults are the Rain100H test
pairs in ../shared, override them with --config.eval.sets.rain100h.rainy=DIR etc.).
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
  config.eval = ml_collections.ConfigDict(dict(
      step=-1,  # checkpoint step to evaluate; -1 = the latest in WORKDIR/checkpoints
      sets=dict(rain100h=dict(rainy="../shared/data/rain100h/rainy",
                              clean="../shared/data/rain100h/clean")),
      quantize="round",  # round | floor (official test.py) | none
      crop_border=0,
      grid_count=4,
      tile=512,  # 0 = whole images
      overlap=64,
      skip_bad=False,
  ))
  return config
