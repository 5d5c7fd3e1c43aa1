"""The synthetic-rain record recipe: the full SAPNet from scratch on Rain100H-like synthetic rain
over clean photos that are not Rain100H's, scored on Rain100H.

    launch/synthetic_record.sh W            # :gpu, then Rain100H in every convention

which runs `python -m sapnet_jax.main --config=configs/synthetic_rain100h.py:gpu --workdir=W`
(`:smoke` for the CPU test) and then `python -m sapnet_jax.evaluate` on Rain100H's pairs.

Training data: `synthetic_rain/pool_rain100h`, rain drawn like Rain100H's (`rain_renderer.RAIN100H`)
over the photos shipped in the package and the 150 clean photos of ../shared/data/clean_pool
(non-BSD: no Rain100H pixel enters training; built from there on first use). Validation and
the best checkpoint use that dataset's held-out scenes, never Rain100H, which is scored once at
the end. The paper's losses (-SSIM, PCL, LPIPS, the seg term) with the frozen nets' weights
from ../shared/weights (the seg encoder stays random: no ImageNet ResNet-101 is shipped there).

`:gpu`   SAPNet as in the paper (32 channels, 6 stages), batch 12 of 100x100 patches, 6 epochs
         (about 4000 steps), Adam 1e-3 x0.2 at 30/50/80 % of training, the seg term from 51 %:
         the official schedule compressed. Sized for <= 8 minutes on one current GPU from the
         H100 step time of docs/benchmarks.md; not yet run on one (docs/experiments.md).
`:smoke` the same recipe at 8 channels, 2 stages, 32x32 patches, 6 steps: the CPU test.
"""

from configs import default

WEIGHTS = "../shared/weights"
VARIANTS = ("gpu", "smoke")


def get_config(variant: str = "gpu"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/synthetic_rain100h.py:{variant}: unknown variant; known: "
                     f"{', '.join(VARIANTS)}")
  config = default.get_config()
  dataset = "synthetic_rain/pool_rain100h"
  config.data.update(dict(dataset=dataset, manual_dir="../shared/data/clean_pool", prepare=True,
                          patch_mode="random"))
  config.eval.sets = {"synthetic_val": f"{dataset}:validation"}
  config.loss.update(dict(
      vgg_weights=f"{WEIGHTS}/vgg16_imagenet/vgg16_features_hwio.npz",
      alexnet_weights=f"{WEIGHTS}/alexnet_imagenet/alexnet_features_hwio.npz",
      lpips_weights=f"{WEIGHTS}/lpips/alex_v0.1.pth"))
  # The official 100 epochs with milestones 30/50/80 and the seg term from epoch 51, at the
  # same fractions of 6 epochs.
  epochs = 6
  config.train.update(dict(num_epochs=epochs, log_every=100, eval_every=1000, save_every=1000))
  config.optim.milestones = tuple(m * epochs / 100 for m in (30, 50, 80))
  config.loss.seg_start_epoch = 51 * epochs / 100
  if variant == "smoke":
    config.model.update(dict(channels=8, stages=2, reduction=4))
    config.data.update(dict(patch_size=32, global_batch_size=2))
    config.loss.update(dict(lpips_size=32, seg_resnet_depth=50))
    config.train.update(dict(num_steps=6, log_every=3, eval_every=3, save_every=3))
  return config
