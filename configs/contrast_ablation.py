"""Paper Table 3: SAPNet trained without a contrastive loss, with L1-CL, or with PCL.

    --config=configs/contrast_ablation.py:no_cl | :l1_cl | :pcl   (pcl = the default config)

L1-CL is the official ContrastLoss on pixels; the official train.py revision that used it
scaled it by 10 before the 0.1 weight, hence contrast_weight 1.0.
"""

from configs import default

VARIANTS = {
    "no_cl": dict(contrast="none"),
    "l1_cl": dict(contrast="l1", contrast_weight=1.0),
    "pcl": dict(contrast="pcl"),
}


def get_config(variant: str = "pcl"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/contrast_ablation.py:{variant}: unknown variant; "
                     f"known: {sorted(VARIANTS)}")
  config = default.get_config()
  config.loss.update(VARIANTS[variant])
  return config
