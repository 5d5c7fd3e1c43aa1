"""SAPNet (paper losses) on a TPU pod slice: bfloat16 compute, scanned stages, data from GCS.

    launch/tpu_pod.sh --tpu NAME --zone ZONE --workdir gs://BUCKET/run --config configs/tpu_pod.py \
        -- --config.data.data_dir=gs://BUCKET/tensorflow_datasets \
           --config.loss.vgg_weights=gs://BUCKET/weights/vgg16.npz ...

The global batch must divide by the device count (the batch is split over all chips): 12 does
not divide by the chips of a pod slice, so this uses 64 and scales the learning rate by the
square-root rule of configs/gpu.py (1e-3 x sqrt(64 / 12) = 2.3e-3, where the linear rule would
give 5.3e-3 with no warm-up), a change to the paper's setting that a user may undo with
--config.data.global_batch_size and --config.optim.lr. Epoch-based milestones keep their epochs.
No TPU was lent to measure dtype, scan and remat (benchmarks/accelerator.py does, in one run):
bfloat16 is the TPU's native matmul type; scan compiles one stage, which matters on a pod.
"""

from configs import default, gpu


def get_config():
  config = default.get_config()
  config.model.dtype = "bfloat16"  # parameters stay float32
  config.model.scan = True  # one compiled stage
  config.loss.perceptual_dtype = "bfloat16"
  config.data.global_batch_size = 64
  config.data.worker_count = 4
  config.optim.lr = gpu.scaled_lr(config.data.global_batch_size)
  config.train.log_every = 100
  config.train.eval_every = 5000
  config.train.save_every = 2000
  return config
