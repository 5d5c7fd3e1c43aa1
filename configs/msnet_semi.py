"""MSNet, semi-supervised (Qiu et al. 2022): labelled synthetic pairs plus unlabelled real rain.

    python -m sapnet_jax.main --config=configs/msnet_semi.py --workdir=W

The model block maps one to one onto sapnet_jax.models.msnet.MSNetConfig; the loss block is
read by sapnet_jax.matching_loss (supervised_loss and matching_loss). Paper §4.1 fixes 64x64
patches, Adam with lr 5e-4, batch 16, matching weight ω = 1, 3 scales and 32 channels; the
other architecture and loss choices are ours (docs/fidelity.md, MSNet). The eval block is
the default config's (Rain100H test pairs).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict(dict(
      family="msnet",
      units=4,  # densely connected multi-scale units (paper: not given)
      scales=3,  # paper: n = 3; scale i max-pools by 2^(i-1)
      cclb_depth=3,  # 3x3 conv + ReLU layers per CCLB (paper: not given)
      channels=32,  # paper
      feature_layers=2,  # convs of the matching network (paper: not given)
      dtype="float32",
      remat=False,
      conv_wgrad="xla",  # "matmul" trains faster on CPU (models/conv.py)
  ))
  config.loss = ml_collections.ConfigDict(dict(
      matching_weight=1.0,  # ω (paper §4.1); 0 = purely supervised
      matching_squared=False,  # paper: unsquared norms; True: ||ΔM||² + ||ΔΣ||²_F / d²
      matching_cov_norm="unbiased",  # 1/(N-1) | biased (1/N) | none (the paper's literal scatter)
      ssim_weight=1.0,  # on -SSIM; the paper does not name its supervised loss
      l1_weight=1.0,
  ))
  # The paper: "100 64x64 image pairs are randomly cut from the training data".
  config.data = ml_collections.ConfigDict(dict(
      dataset="rain100h",  # labelled synthetic pairs
      train_split="train",
      patch_size=64,
      patch_mode="random",
      global_batch_size=16,
      real_dataset="real_rain",  # unlabelled real rainy images; "" = supervised only
      real_split="train",
      real_batch_size=0,  # 0: same as the labelled per-process batch
  ))
  # Adam (PyTorch defaults for betas/eps); the paper gives no schedule or epoch count.
  config.optim = ml_collections.ConfigDict(dict(
      lr=5e-4,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      milestones=(),  # epochs at which lr is multiplied by decay_factor
      decay_factor=1.0,
  ))
  return config
