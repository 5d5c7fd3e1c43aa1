"""Whole-image and tiled inference on single images (arrays in, arrays out; no file I/O).

Tiling bounds memory for large photos: tiles of `tile` x `tile` pixels overlap by `overlap`
pixels and are blended with weights that ramp linearly across the middle half of each overlap
(zero in its outer quarter). All tiles of an image have one shape, so the network is compiled
once per tile size. For a network without global attention (PReNet, PRN), a pixel therefore
equals the whole-image result whenever overlap >= 4 * model.cfg.receptive_radius + 4. SAPNet's
attention pools over each tile instead of the whole image, so its tiles differ slightly from
whole-image inference: 50 dB PSNR between the two on Rain100H with 256-pixel tiles, and the
same PSNR against the ground truth (docs/fidelity.md). The defaults (512 / 64) are the
fastest per pixel on a 2-core CPU and keep a 4000x3000 photo under 1 GB of peak RSS.

For the server: `Tiling` lets a caller run the tiles itself (it interleaves requests between
tiles), and `pad_to_bucket` mirrors an image up to one of a few sizes, so that sizes a client
chooses compile a bounded set of programs (docs/serve.md, Limits). The library pads nothing.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sapnet_jax import models, xla_options
from sapnet_jax.models import ops

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
  """Start offsets of tiles covering [0, length), the last one flush with the end."""
  if tile >= length:
    return [0]
  stride = tile - overlap
  starts = list(range(0, length - tile, stride))
  return starts + [length - tile]


def blend_ramp(start: int, tile: int, length: int, overlap: int) -> np.ndarray:
  """1-d blending weights of one tile: 1 inside, ramping down toward interior edges only."""
  pos = np.arange(tile, dtype=np.float32)
  w = np.ones(tile, np.float32)
  quarter, half = overlap / 4.0, max(overlap / 2.0, 1.0)
  if start > 0:
    w = np.minimum(w, np.clip((pos + 0.5 - quarter) / half, 0.0, 1.0))
  if start + tile < length:
    w = np.minimum(w, np.clip((tile - 1 - pos + 0.5 - quarter) / half, 0.0, 1.0))
  return w


class Derainer:
  """A jit-compiled de-raining function for one model: `derainer(image) -> image`.

  It runs on JAX's default device, with the kernel set `impl` (models/ops.py; "auto": the
  measured faster one on that device's platform, None: the model's own) and the compiler
  options measured faster there for inference (xla_options)."""

  def __init__(self, model: nnx.Module, impl: str | None = "auto"):
    platform = jax.devices()[0].platform
    if impl is not None:
      model = models.with_config(model, impl=ops.resolve(impl, platform))
    self.impl = model.cfg.impl
    options = xla_options.compiler_options(platform, "infer")
    logging.info("inference on %s: kernel set %r, compiler options %s", platform, self.impl,
                 options or "XLA's defaults")
    graphdef, state = nnx.split(model)
    self._state = state
    self._forward = jax.jit(functools.partial(_forward, graphdef), compiler_options=options)

  def update(self, params: dict) -> None:
    """Swaps in new weights of the same structure (training's validation), with no recompile."""
    nnx.replace_by_pure_dict(self._state, params)

  def batch(self, images: np.ndarray | jax.Array) -> jax.Array:
    """(N, H, W, 3) -> (N, H, W, 3), unclamped float32."""
    return self._forward(self._state, jnp.asarray(images, jnp.float32))

  def __call__(self, image: np.ndarray, tile: int | None = DEFAULT_TILE,
               overlap: int = DEFAULT_OVERLAP,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """De-rains one (H, W, 3) image in [0, 1]; returns unclamped float32 of the same shape.

    With `tile` None or not smaller than both sides, the whole image goes through at once.
    `progress(done, total)` is called with (0, total) before the first tile, so a progress bar
    shows while the first tile compiles, and after each tile; a whole image is one tile.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    report = progress or (lambda done, total: None)
    h, w, _ = image.shape
    if tile is None or (h <= tile and w <= tile):
      report(0, 1)
      out = np.asarray(self.batch(image[None]))[0]
      report(1, 1)
      return out
    tiling = Tiling(image, tile, overlap)
    report(0, len(tiling))
    for i in range(len(tiling)):
      tiling.add(i, np.asarray(self.batch(tiling.window(i)))[0])
      report(i + 1, len(tiling))
    return tiling.result()


class Tiling:
  """The tiles of one (H, W, 3) image and their blend, for a caller that runs them itself (the
  server interleaves tiles of different requests): `tiling.window(i)` is tile i as a batch of
  one; hand its output to `tiling.add(i, out)`, then take `tiling.result()`."""

  def __init__(self, image: np.ndarray, tile: int, overlap: int):
    if tile < 1 or not 0 <= overlap < tile:
      raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, "
                       f"overlap={overlap}")
    self.image, self.overlap = image, overlap
    h, w, _ = image.shape
    self.th, self.tw = min(tile, h), min(tile, w)
    self.starts = [(y, x) for y in tile_starts(h, self.th, overlap)
                   for x in tile_starts(w, self.tw, overlap)]
    self._acc = np.zeros((h, w, 3), np.float32)
    self._weight = np.zeros((h, w, 1), np.float32)

  def __len__(self) -> int:
    return len(self.starts)

  def window(self, i: int) -> np.ndarray:
    y, x = self.starts[i]
    return self.image[None, y:y + self.th, x:x + self.tw]

  def add(self, i: int, out: np.ndarray) -> None:
    y, x = self.starts[i]
    h, w, _ = self.image.shape
    wy, wx = blend_ramp(y, self.th, h, self.overlap), blend_ramp(x, self.tw, w, self.overlap)
    wt = (wy[:, None] * wx[None, :])[..., None]
    self._acc[y:y + self.th, x:x + self.tw] += out * wt
    self._weight[y:y + self.th, x:x + self.tw] += wt

  def result(self) -> np.ndarray:
    return self._acc / self._weight


def bucket_sides(tile: int | None) -> list[int]:
  """The sides an image is padded up to before a server de-rains it (`pad_to_bucket`), so
  that clients choosing sizes compile at most len(sides)**2 programs per batch size: fractions
  of the tile (a step of at most 1.5x, so padding at most doubles an image's pixels), or with
  no tile, 64 * 2**k and 96 * 2**k."""
  if tile is not None:
    return sorted({max(1, -(-tile * k // 8)) for k in (1, 2, 3, 4, 6, 8)})
  return sorted({base << k for base in (64, 96) for k in range(20)})


def bucket_side(n: int, tile: int | None) -> int:
  """The padded length of a side of `n` pixels: `n` itself when it is cut into tiles."""
  if tile is not None and n > tile:
    return n
  return next(side for side in bucket_sides(tile) if side >= n)


def pad_to_bucket(image: np.ndarray, tile: int | None) -> np.ndarray:
  """(H, W, 3) -> (bucket_side(H), bucket_side(W), 3), mirrored at the bottom and right edges
  (a mirror keeps SAPNet's attention statistics close to the image's own: docs/fidelity.md);
  crop the result with [:H, :W]."""
  h, w, _ = image.shape
  pad = ((0, bucket_side(h, tile) - h), (0, bucket_side(w, tile) - w), (0, 0))
  if pad[0][1] == pad[1][1] == 0:
    return image
  return np.pad(image, pad, mode="reflect" if min(h, w) > 1 else "edge")


def _forward(graphdef, state, images):
  return nnx.merge(graphdef, state)(images)
