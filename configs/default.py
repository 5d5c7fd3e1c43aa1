"""SAPNet as in the paper and the official code (Rain100H).

    python -m sapnet_jax.main --config=configs/default.py --workdir=W --mode=eval

The model block maps one to one onto sapnet_jax.models.pdu.PDUConfig. The eval block names the
test sets (folders of rainy and clean images paired by name; the defaults are the Rain100H test
pairs in ../shared, override them with --config.eval.sets.rain100h.rainy=DIR etc.).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
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
  # Input pipeline (sapnet_jax/data/pipeline.py). Build a dataset once with
  #   python -m sapnet_jax.data.prepare --dataset NAME --manual_dir ARCHIVE [--data_dir DIR]
  # Defaults follow the official training: stride-80 100x100 patches of RainTrainH in a new
  # random order each epoch, no flips (docs/fidelity.md, Data).
  config.data = ml_collections.ConfigDict(dict(
      dataset="rain100h",  # a sapnet_jax.data.builders name, or synthetic_rain/shipped (demo)
      train_split="train",
      data_dir=ml_collections.config_dict.placeholder(str),  # None: ~/tensorflow_datasets
      manual_dir=ml_collections.config_dict.placeholder(str),  # archive, only for building
      patch_size=100,
      patch_mode="stride",  # stride: official fixed grid | random: same count, random places
      stride=80,  # official RainTrainH/L; the official Rain12600 (rain1400) uses 100
      mirror_copies=False,  # official Rain100L trains on each image and its mirror image
      flip_lr=False,  # random horizontal flips (not in the official code)
      flip_ud=False,  # random vertical flips
      global_batch_size=12,  # paper; per process: global / jax.process_count()
      shuffle=True,
      num_epochs=0,  # 0: an endless stream (the trainer counts steps); N: stop after N epochs
      seed=0,
      worker_count=0,  # grain worker processes (0: threads in the training process)
      worker_buffer_size=2,  # batches each worker prepares ahead
      read_threads=2,
      prefetch=4,  # batches read ahead per process
      eval_datasets="rain100h:test",  # "name:split, ..." for make_eval_iterator
      real_dataset="",  # semi-supervised: unlabelled stream, e.g. "real_rain"; "" = off
      real_split="train",
      real_batch_size=0,  # 0: same as the labelled per-process batch
  ))
  return config
