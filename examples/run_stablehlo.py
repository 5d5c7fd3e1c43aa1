"""Runs an exported de-raining network with jax and numpy alone (no sapnet_jax, no flax).

    pip install jax==VERSION jaxlib==VERSION numpy flatbuffers  # VERSION: manifest.json's
    python run_stablehlo.py model.stablehlo rainy.npy derained.npy

rainy.npy holds float32 in [0, 1], (N, H, W, 3) or one (H, W, 3) image; the result is float32
of the same shape, unclamped (clip to [0, 1] before saving it as an image).
"""
import sys

import jax
import numpy as np


def derain(model_file: str, images: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) float32 in [0, 1] -> (N, H, W, 3); any N, H, W >= 1."""
  with open(model_file, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return np.asarray(exported.call(np.asarray(images, np.float32)))


if __name__ == "__main__":
  model_file, src, dst = sys.argv[1:4]
  images = np.load(src)
  out = derain(model_file, images if images.ndim == 4 else images[None])
  np.save(dst, out if images.ndim == 4 else out[0])
