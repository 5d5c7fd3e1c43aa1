"""The demo: SAPNet trained from scratch on the embedded synthetic rain, on a CPU, in minutes.

    python -m sapnet_jax.main --config=configs/demo.py --workdir=/tmp/sapnet_demo

Trains a slimmed SAPNet (16 channels, 4 stages) on synthetic rain over the photos shipped in
the package (sapnet_jax/data/demo.py; built on first use, nothing downloaded) with -SSIM + L1
(the perceptual terms need VGG/AlexNet weights), validates on the held-out photo's
pairs and writes W/eval/step_N/.
`:pool` adds every photo of ../shared/data/clean_pool (more data, same time budget).
"""

from configs import default


def get_config(variant: str = "shipped"):
  if variant not in ("shipped", "pool"):
    raise ValueError(f"configs/demo.py:{variant}: unknown variant; known: shipped, pool")
  config = default.get_config()
  # SAPNet's architecture (CRA, dilations, ConvLSTM) at a CPU demo's size: 16 channels and 4
  # stages train several times faster than 32/6: minutes on 2 cores (docs/results.md).
  config.model.update(dict(channels=16, stages=4, reduction=4))
  config.data.dataset = f"synthetic_rain/{variant}"
  config.data.manual_dir = "../shared/data/clean_pool" if variant == "pool" else None
  config.data.prepare = True  # build the dataset on first use (idempotent)
  config.data.patch_mode = "random"
  config.data.flip_lr = True
  config.data.global_batch_size = 8
  config.data.patch_size = 64
  config.eval.sets = {"synthetic_val": f"synthetic_rain/{variant}:validation"}
  config.eval.grid_count = 3
  config.loss.l1_weight = 1.0  # few steps of -SSIM alone shift brightness (docs/fidelity.md)
  config.loss.contrast = "none"
  config.loss.lpips_weight = 0.0
  config.loss.seg_weight = 0.0
  config.train.num_steps = 500
  config.train.log_every = 20
  config.train.eval_every = 100
  config.train.save_every = 100
  config.optim.lr = 1e-3
  # Epochs of 222 steps: x0.2 at steps ~300 and ~400. At a constant lr the held-out PSNR swung
  # by up to 3 dB from one evaluation to the next (docs/fidelity.md, Training).
  config.optim.milestones = (1.35, 1.8)
  return config
