"""The demo config (configs/demo.py) shrunk to train in seconds: the training-loop, bucket and
multi-process tests override it with these."""

TINY_DEMO = {"model.stages": 2, "model.channels": 8, "model.num_blocks": 1, "model.reduction": 4,
             "data.patch_size": 32, "data.global_batch_size": 4, "train.log_every": 2,
             "train.save_every": 2, "train.eval_every": 0, "eval.tile": 0}
