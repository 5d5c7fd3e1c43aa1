"""Paper Table 4: SAPNet built up component by component (M1 ... M5, then the full model).

    python -m sapnet_jax.main --config=configs/components_ablation.py:m3 --workdir=W

M1 CRA only; M2 + unsupervised background segmentation loss (seg); M3 + perceptual contrastive
loss; M4 + dilated residual blocks; M5 + learning-rate decay; ours (= configs/default.py)
+ LPIPS loss.
"""

from configs import default

ORDER = ("m1", "m2", "m3", "m4", "m5", "ours")


def get_config(variant: str = "ours"):
  if variant not in ORDER:
    raise ValueError(f"configs/components_ablation.py:{variant}: unknown variant; known: {ORDER}")
  config = default.get_config()
  level = ORDER.index(variant)
  if level < 1:
    config.loss.seg_weight = 0.0
  if level < 2:
    config.loss.contrast = "none"
  if level < 3:
    config.model.dilation = False
  if level < 4:
    config.optim.milestones = ()
  if level < 5:
    config.loss.lpips_weight = 0.0
  return config
