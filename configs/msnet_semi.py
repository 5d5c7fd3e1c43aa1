"""MSNet, semi-supervised (Qiu et al. 2022): labelled synthetic pairs plus unlabelled real rain.

    python -m sapnet_jax.main --config=configs/msnet_semi.py --workdir=W
    python -m sapnet_jax.main --config=configs/msnet_semi.py:demo --workdir=W   (CPU demo)

The model block maps one to one onto sapnet_jax.models.msnet.MSNetConfig; the loss block is
read by sapnet_jax.losses.msnet (supervised_loss and matching_loss). Paper §4.1 fixes 64x64
patches, Adam with lr 5e-4, batch 16, matching weight ω = 1, 3 scales and 32 channels; the
other architecture and loss choices are ours (docs/fidelity.md, MSNet). The eval block is
the default config's (the built Rain100H test split, "rain100h:test"; see configs/default.py).
"""

import ml_collections

from configs import default


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
  if variant not in ("paper", "demo"):
    raise ValueError(f"configs/msnet_semi.py:{variant}: unknown variant; known: paper, demo")
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
      impl="auto",  # kernel set: reference | cpu | gpu | auto (for the platform; models/ops.py)
      zero_init_output=True,  # the untrained net returns its input (docs/fidelity.md, MSNet)
  ))
  config.loss = ml_collections.ConfigDict(dict(
      matching_weight=1.0,  # ω (paper §4.1); 0 = purely supervised
      matching_squared=False,  # paper: unsquared norms; True: ||ΔM||² + ||ΔΣ||²_F / d²
      matching_cov_norm="unbiased",  # 1/(N-1) | biased (1/N) | none (the paper's literal scatter)
      ssim_weight=1.0,  # on -SSIM; the paper does not name its supervised loss
      l1_weight=1.0,
  ))
  # The paper: "100 64x64 image pairs are randomly cut from the training data".
  config.data.update(dict(
      dataset="rain100h",  # labelled synthetic pairs
      patch_size=64,
      patch_mode="random",
      global_batch_size=16,
      real_dataset="real_rain",  # unlabelled real rainy images; "" = supervised only
  ))
  # Adam (PyTorch defaults for betas/eps); the paper gives no schedule or epoch count.
  config.optim.update(dict(lr=5e-4, milestones=()))
  if variant == "demo":
    demo(config)
  return config


def demo(config: ml_collections.ConfigDict) -> None:
  """The CPU demo (minutes on 2 cores): embedded synthetic pairs (configs/demo.py) +
  ../shared/data/real_rainy.

  1200 steps, lr x0.2 from epochs 3.2 and 4.5 (steps ~710 and ~1000), EMA of the weights
  (0.999): the held-out PSNR then rises steadily instead of swinging by 2-5 dB between
  validations (docs/results.md has the curves of 3 seeds). Validation scores the synthetic
  pairs only; the real photos are scored afterwards (NIQE/BRISQUE through
  `python -m sapnet_jax.compare`, as benchmarks/demo_seeds.py does).
  """
  config.data.update(dict(dataset="synthetic_rain/shipped", prepare=True, flip_lr=True,
                          global_batch_size=8, real_manual_dir="../shared/data/real_rainy"))
  config.eval.sets = {"synthetic_val": "synthetic_rain/shipped:validation"}
  config.eval.grid_count = 3
  config.optim.milestones = (3.2, 4.5)  # epochs of ~222 steps (48 pairs' patches / batch 8)
  config.train.update(dict(num_steps=1200, log_every=20, eval_every=200, save_every=400,
                           ema_decay=0.999))
  return config
