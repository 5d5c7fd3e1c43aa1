"""SAPNet (paper losses) on one GPU: bfloat16 compute, a 4x larger batch, the lr scaled to it.

    python -m sapnet_jax.main --config=configs/gpu.py --workdir=W

What is measured and what awaits a device (docs/benchmarks.md, "Ready for the first
accelerator"): on an H100 one session measured the float32 loop step at 12 x 100^2 (0.041 s,
1.8x PyTorch CUDA; inference 2.2x), about 2-4% of the chip's peak, so the paper's batch leaves
it mostly idle. The values below are chosen by reasoning from that figure, not yet measured on
a GPU: `python benchmarks/accelerator.py` measures every one of them in one run (<= 8 min) and
they should follow its table when a device is lent.
- batch 48 (4 x 12) of the paper's 100 x 100 patches: more work per step for the same data;
  activations in bfloat16 ~5 GB, well inside 80 GB, so no remat (remat: ~1 more forward).
- model.dtype bfloat16 (parameters stay float32): the tensor cores' bfloat16 peak is twice
  TF32's. Measured safe on CPU: the demo in bfloat16 ends within 0.3 dB of float32
  (benchmarks/bf16_demo.py), and the non-finite guard holds (tests/training/test_train_step.py).
- scan off: the Python loop is what was measured on the H100; scan saves compile time only.

Schedule rule (here and configs/tpu_pod.py): epochs and epoch milestones stay the paper's
(100 epochs, x0.2 at 30, 50, 80), so the steps per epoch shrink by batch / 12 by themselves;
the learning rate follows the square-root rule for Adam, lr = 1e-3 x sqrt(batch / 12)
(2e-3 at 48), gentler than the linear rule, which at 4-5x the batch with no warm-up is the
usual way Adam on a small conv net diverges. Undo with --config.data.global_batch_size=12
--config.optim.lr=1e-3.
"""

import math

from configs import default

PAPER_BATCH, PAPER_LR = 12, 1e-3


def scaled_lr(batch: int) -> float:
  """The paper's Adam lr at `batch` by the square-root rule."""
  return PAPER_LR * math.sqrt(batch / PAPER_BATCH)


def get_config():
  config = default.get_config()
  config.model.dtype = "bfloat16"  # parameters stay float32
  config.model.scan = False
  config.model.remat = False
  config.loss.perceptual_dtype = "bfloat16"
  config.data.global_batch_size = 48
  config.data.patch_size = 100  # the paper's patches (stride 80 grid)
  config.data.worker_count = 4  # grain worker processes: see the feeding row of the table
  config.optim.lr = scaled_lr(config.data.global_batch_size)
  return config
