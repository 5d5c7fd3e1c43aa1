"""SAPNet as in the paper and the official code (Rain100H).

    python -m sapnet_jax.main --config=configs/default.py --workdir=W --mode=eval

The model block maps one to one onto sapnet_jax.models.pdu.PDUConfig. The eval block names the
test sets: each entry is a built TFDS split "NAME:split" or a pair of folders of rainy and clean
images paired by name. The default is the built Rain100H test split "rain100h:test"; build it
once (DIR: Rain100H's test pairs, e.g. the project's ../shared/data/rain100h with rainy/ and
clean/; --data_dir as config.data.data_dir, default ~/tensorflow_datasets):

    python -m sapnet_jax.data.prepare --dataset rain100h --manual_dir DIR [--data_dir DIR]

Training checks every eval set before step 1 and stops, naming config.eval.sets.NAME and the
build command, if one is not built. Folders instead, on the command line (the whole dict):

    --config.eval.sets='{"rain100h": {"rainy": "DIR/rainy", "clean": "DIR/clean"}}'
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # model initialisation
  config.model = ml_collections.ConfigDict(dict(
      family="pdu",
      attention="cra",  # cra | ca | se | none (paper Table 2)
      reduction=16,
      dilation=True,
      recurrent=True,
      stages=6,
      channels=32,
      num_blocks=5,
      scan=False,  # Python loop over stages; True: one lax.scan step (CPU training >10x slower)
      dtype="float32",  # compute dtype (float32 | bfloat16 | float64); parameters stay float32
      remat=False,  # recompute each stage's activations in the backward pass (less memory)
      impl="auto",  # kernel set: reference | cpu | gpu | auto (for the platform; models/ops.py)
  ))
  # Official PReNet/SAPNet training: Adam lr 1e-3, MultiStepLR milestones [30, 50, 80], gamma 0.2.
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-3,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      milestones=(30, 50, 80),  # epochs from which the lr is multiplied by decay_factor again
      decay_factor=0.2,
      grad_clip_norm=0.0,  # 0: no clipping (official)
      grad_accum_steps=1,  # >1: optax.MultiSteps, one update per this many batches
  ))
  config.train = ml_collections.ConfigDict(dict(
      num_epochs=100,
      num_steps=0,  # >0 overrides num_epochs
      init_weights="",  # a pretrained name or path to fine-tune from ("" = random init)
      log_every=50,  # steps between console/TensorBoard lines (and NaN checks)
      eval_every=1000,  # steps between validations on eval.sets (0: only at the end)
      save_every=1000,
      keep_checkpoints=3,  # plus the best by validation
      async_checkpoints=True,
      val_metric="psnr_rgb",  # the eval key that picks the best checkpoint
      # >0: validate, save as params and evaluate an exponential moving average of the
      # weights (train.py; 0.999 as BasicSR); 0 = off, the official code's plain weights.
      ema_decay=0.0,
  ))
  config.eval = ml_collections.ConfigDict(dict(
      step=-1,  # checkpoint step to evaluate; -1 = the latest in WORKDIR/checkpoints
      weights="",  # --mode=eval: a pretrained name or weights path to score instead of a step
      # name -> "NAME:split" (a built dataset, see the docstring) or dict(rainy=DIR, clean=DIR)
      sets=dict(rain100h="rain100h:test"),
      quantize="round",  # round | floor (official test.py) | none
      crop_border=0,
      grid_count=4,
      tile=512,  # 0 = whole images
      overlap=64,
      skip_bad=False,
  ))
  # Losses (sapnet_jax/losses/sapnet.py, paper §3.5). Weights are the official code's effective ones
  # (train2.py: -SSIM + 0.1*(4*PCL) + 0.1*(10*LPIPS) + 0.1*seg); the paper writes
  # lambda = 1, 0.1, 0.1, 0.1 for ssim, seg, pcl, lpisl. Differences: docs/fidelity.md.
  config.loss = ml_collections.ConfigDict(dict(
      ssim_weight=1.0,  # on -SSIM (11x11 Gaussian, sigma 1.5, zero padding)
      l1_weight=0.0,  # pixel L1 (not in SAPNet; the CPU demo uses it)
      contrast="pcl",  # pcl | l1 (paper Table 3 "L1-CL") | none ("No-CL")
      contrast_weight=0.4,  # official 0.1 x 4; paper 0.1
      contrast_eps=1e-7,
      pcl_layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
      pcl_layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4),
      pcl_imagenet_norm=False,  # official: VGG sees [0, 1] images as they are
      lpips_weight=1.0,  # official 0.1 x 10 (but detached there); paper 0.1
      lpips_net="alex",  # alex (official) | vgg
      lpips_size=256,  # whole image resized to size x size; None keeps the patch size
      lpips_preprocess="standard",  # standard: [-1, 1] as lpips expects | official
      lpips_reduction="mean",  # over the batch | sum | first (official: image 0 only)
      seg_weight=0.1,
      seg_alpha=1.0,
      seg_gamma=2.0,
      seg_eps=1e-7,  # probabilities clamped to [eps, 1 - eps] (official FocalLoss)
      seg_start_epoch=51.0,  # 0-based epoch (may be fractional) of the first seg step: `epoch > 50`
      seg_num_classes=21,
      seg_resnet_depth=101,
      seg_decoder_init_std=0.01,  # official fpn.py; the paper says 0.05
      seg_imagenet_norm=False,  # official: the FPN sees [0, 1] images as they are
      seg_seed=0,  # decoder init (and the encoder when no weights are given)
      # Weight files: a converted .npz (python -m sapnet_jax.convert) or the original
      # torchvision / timm / lpips file. None: the term fails naming the field, except seg,
      # which then runs a random but fixed encoder and logs that.
      vgg_weights=ml_collections.config_dict.placeholder(str),
      alexnet_weights=ml_collections.config_dict.placeholder(str),
      # lpips_weights: the LPIPS v0.1 linear layers of lpips_net; seg_encoder_weights: a
      # torchvision/timm ResNet-101. placeholder(str): None, settable from the command line.
      lpips_weights=ml_collections.config_dict.placeholder(str),
      seg_encoder_weights=ml_collections.config_dict.placeholder(str),
      perceptual_dtype="float32",  # float32 | bfloat16 (slower on CPU: docs/fidelity.md)
      remat=False,  # recompute the frozen nets' activations in backward (slower on CPU)
  ), type_safe=False)
  # Input pipeline (sapnet_jax/data/pipeline.py). Build a dataset once with
  #   python -m sapnet_jax.data.prepare --dataset NAME --manual_dir ARCHIVE [--data_dir DIR]
  # Defaults follow the official training: stride-80 100x100 patches of RainTrainH in a new
  # random order each epoch, no flips (docs/fidelity.md, Data).
  config.data = ml_collections.ConfigDict(dict(
      dataset="rain100h",  # a sapnet_jax.data.builders name, or synthetic_rain/shipped (demo)
      train_split="train",
      data_dir=ml_collections.config_dict.placeholder(str),  # None: ~/tensorflow_datasets
      manual_dir=ml_collections.config_dict.placeholder(str),  # archive, only for building
      prepare=False,  # build the dataset from manual_dir on first use (idempotent)
      real_manual_dir=ml_collections.config_dict.placeholder(str),  # with prepare: photos for real_dataset
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
      real_dataset="",  # semi-supervised: unlabelled stream, e.g. "real_rain"; "" = off
      real_split="train",
      real_batch_size=0,  # 0: same as the labelled per-process batch
  ))
  return config
