"""SAPNet as in the paper and the official code (Rain100H).

    python -m sapnet_jax.main --config=configs/default.py --workdir=W --mode=eval

The model block maps one to one onto sapnet_jax.models.pdu.PDUConfig. The eval block names the
test sets (folders of rainy and clean images paired by name; the defaults are the Rain100H test
pairs in ../shared, override them with --config.eval.sets.rain100h.rainy=DIR etc.).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # model initialisation
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
  # Official PReNet/SAPNet training: Adam lr 1e-3, MultiStepLR milestones [30, 50, 80], gamma 0.2.
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-3,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      milestones=(30, 50, 80),  # epochs from which the lr is multiplied by decay_factor again
      decay_factor=0.2,
      grad_clip_norm=0.0,  # 0: no clipping (official)
      grad_accum_steps=1,  # >1: optax.MultiSteps, one update per this many batches
  ))
  config.train = ml_collections.ConfigDict(dict(
      num_epochs=100,
      num_steps=0,  # >0 overrides num_epochs
      init_weights="",  # a pretrained name or path to fine-tune from ("" = random init)
      log_every=50,  # steps between console/TensorBoard lines (and NaN checks)
      eval_every=0,  # steps between validations on eval.sets (0: only at the end)
      save_every=1000,
      keep_checkpoints=3,  # plus the best by validation
      async_checkpoints=True,
      val_metric="psnr_rgb",  # the eval key that picks the best checkpoint
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
