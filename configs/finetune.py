"""Fine-tune the converted official SAPNet (Rain100H) weights on the embedded synthetic rain.

    python -m sapnet_jax.main --config=configs/finetune.py --workdir=/tmp/sapnet_finetune

Starts from `sapnet-rain100h` (shipped in the package), trains with -SSIM at lr 1e-5 (about the
official schedule's last lr, 1e-3 x 0.2^3) on batches of 12 official-size 100x100 patches of
`synthetic_rain/shipped_rain100h` (the shipped photos under rain drawn like Rain100H's,
synth.RAIN100H), and validates on those pairs and on the built Rain100H test split
("rain100h:test") at the end. Build that once first (DIR: the Rain100H test pairs, e.g.
../shared/data/rain100h with rainy/ and clean/; the run checks every eval set before step 1 and
stops naming config.eval.sets.rain100h if it is not built):

    python -m sapnet_jax.data.prepare --dataset rain100h --manual_dir DIR [--data_dir DIR]

or give its folders instead, as the whole dict (configs/default.py):

    --config.eval.sets='{"synthetic_val": "synthetic_rain/shipped_rain100h:validation",
                         "rain100h": {"rainy": "DIR/rainy", "clean": "DIR/clean"}}'

(pool_rain100h for the :pool variants). Three training scenes are over-fitted: the released
weights lose Rain100H PSNR as steps go (docs/fidelity.md, Training, has the measurements).
`:cpu` (4 patches of 64x64) fits a 2-core CPU: minutes rather than hours (docs/benchmarks.md).

`:pool` / `:cpu_pool` fine-tune at lr 1e-6 on `synthetic_rain/pool_rain100h` instead: the same
rain over the shipped photos plus the 150 clean photos of ../shared/data/clean_pool (built from
there on first use). More scenes and the smaller lr keep the released weights' Rain100H score.
`--config.train.init_weights=PATH` starts from another .pth or Orbax directory instead.
"""

from configs import default


VARIANTS = ("gpu", "cpu", "pool", "cpu_pool")


def get_config(variant: str = "gpu"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/finetune.py:{variant}: unknown variant; known: "
                     f"{', '.join(VARIANTS)}")
  pool = variant.endswith("pool")
  dataset = f"synthetic_rain/{'pool' if pool else 'shipped'}_rain100h"
  config = default.get_config()
  config.train.init_weights = "sapnet-rain100h"
  config.data.dataset = dataset
  config.data.prepare = True
  config.data.patch_mode = "random"
  config.data.flip_lr = True
  config.eval.sets = {"synthetic_val": f"{dataset}:validation", "rain100h": "rain100h:test"}
  # -SSIM only: the perceptual terms need VGG/AlexNet weights that a fresh machine lacks.
  config.loss.update(dict(contrast="none", lpips_weight=0.0, seg_weight=0.0))
  config.optim.lr = 1e-6 if pool else 1e-5
  config.optim.milestones = ()
  config.train.update(dict(num_steps=300, log_every=20, eval_every=0, save_every=100))
  if variant.startswith("cpu"):
    config.data.global_batch_size = 4
    config.data.patch_size = 64
  if pool:
    config.data.manual_dir = "../shared/data/clean_pool"
  return config
