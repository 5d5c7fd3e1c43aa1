"""Datasets and images: TFDS builders, the grain input pipeline, pairing files by name, image
reading and atomic writing, the rain renderer, the demo dataset and `python -m
sapnet_jax.data.prepare`.

May import: utils. Training, evaluation and the demo all read data, so it needs nothing more.
"""
