"""Whole-image and tiled inference on single images (arrays in, arrays out; no file I/O).

Tiling bounds memory for large photos: tiles of at most `tile` rows and `tile` x `tile` pixels
(the rows and columns that compute the fewest pixels: `balanced_tiles`) overlap by `overlap`
pixels and are blended with weights that ramp linearly across the middle half of each overlap
(zero in its outer quarter). All tiles of an image have one shape, so the network is compiled
once per image size. For a network without global attention (PReNet, PRN), a pixel therefore
equals the whole-image result whenever overlap >= 4 * model.cfg.receptive_radius + 4. SAPNet's
attention pools over each tile instead of the whole image, so its tiles differ slightly from
whole-image inference: 50 dB PSNR between the two on Rain100H with 256-pixel tiles, and the
same PSNR against the ground truth (docs/fidelity.md). The defaults are DEFAULT_TILE and
DEFAULT_OVERLAP.

Scale-aware inference (`scale=`): the networks learned rain 1-2 pixels wide (Rain100H), and a
photo's streaks are often several times wider. With `scale=F` the photo is shrunk by F (an
area average), de-rained there, and the rain layer the network removed (input - output) is
enlarged (Lanczos) and subtracted from the full-size photo, so the photo's own detail stays.
`scale="auto"` picks F from the network's response on thumbnails (`estimate_scale`).
docs/scale.md has the measurements behind each choice.

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
from PIL import Image

from sapnet_jax import models
from sapnet_jax.models import ops
from sapnet_jax.runtime import xla_options

# Tiles of at most 1024 rows and 1024 x 1024 pixels: less overlap computed twice than with 512
# (a 2000x1500 image: 3.23 MP of tiles instead of 3.82), closer to the official whole-image
# inference for SAPNet's attention, and a 4000x3000 photo stays under 2 GB of peak RSS
# (docs/scale.md, Large photos). The server keeps 512 (serving/batching.py, SERVER_TILE).
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 64

AUTO = "auto"
# The working scales `auto` chooses from, and the largest a caller may ask for: the photo is
# shrunk by the scale, so a scale above 16 leaves too few pixels of any streak to de-rain.
SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
MAX_SCALE = 16.0
# `auto` runs the network on THUMB x THUMB crops of the photo shrunk by each candidate scale,
# at 2 x 2 places (one program for every photo; 20 crops, 0.33 MP in all), and predicts from
# their statistics how many dB each scale loses to the best (`choose_scale`).
THUMB = 128
THUMB_GRID = 2
# The prediction: a ridge regression (lambda 1, chosen by leave-one-photo-out) from
# `scale_features` to each scale's PSNR minus the best scale's, fitted on 15 photos x 5 streak
# scales of rendered rain that the benchmark never scores: `python benchmarks/scale_bench.py --fit
# benchmarks/results/scale_calibration.json` prints these rows (docs/scale.md, auto).
SCALE_WEIGHTS = np.array([
    [3.656, 0.665, 1.746, -0.778, 0.086, 3.561, 0.563, 1.209, -1.187, -0.134, -1.879, -2.337,
     -1.645, -1.459, -1.216, -2.134],
    [-0.056, 2.162, 2.796, 0.357, 0.421, 0.147, 1.136, 1.083, -1.131, -0.949, -1.447, -1.492,
     -1.079, -1.287, -0.934, -2.008],
    [-1.910, 1.617, 2.861, 0.729, 0.230, -1.455, 0.726, 1.335, -0.587, -1.023, -1.087, -0.801,
     -0.570, -0.798, -0.539, -1.626],
    [-3.101, -0.082, 0.500, 1.032, 0.273, -2.130, -0.131, -0.053, 0.687, -0.503, -0.910,
     -0.234, -0.138, -0.376, 0.106, 0.137],
    [-3.146, -0.803, -0.443, 0.352, 0.675, -1.935, -0.315, -0.420, 0.621, 0.082, -1.206,
     -0.452, -0.233, -0.457, 0.347, 0.988],
])


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


def parse_scale(value: str | float) -> float | str:
  """`auto`, or a number in [1, MAX_SCALE] (how many times wider the photo's streaks are than
  the training data's); raises ValueError naming the accepted values."""
  if isinstance(value, str) and value.strip().lower() == AUTO:
    return AUTO
  try:
    scale = float(value)
  except (TypeError, ValueError):
    scale = float("nan")
  if not 1.0 <= scale <= MAX_SCALE:  # also refuses nan
    raise ValueError(f"scale must be 'auto' or a number from 1 to {MAX_SCALE:g}, got {value!r}")
  return scale


def format_scale(scale: float) -> str:
  """A working scale as people write it: 2, 1.5, 2.3456789 (never rounded, no trailing .0)."""
  return repr(float(scale)).removesuffix(".0")


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
  """The working size of a (height, width) photo at `scale` (each side at least 1)."""
  return max(1, round(height / scale)), max(1, round(width / scale))


def resize(image: np.ndarray, shape: tuple[int, int], method: int) -> np.ndarray:
  """(H, W, C) float32 -> (shape, C) with a Pillow filter, channel by channel (Pillow resamples
  32-bit float images in C, with a support widened by the factor when shrinking: antialiased)."""
  h, w = shape
  out = np.empty((h, w, image.shape[-1]), np.float32)
  for c in range(image.shape[-1]):
    plane = Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F")
    out[..., c] = np.asarray(plane.resize((w, h), method), np.float32)
  return out


def downscale(image: np.ndarray, scale: float) -> np.ndarray:
  """Shrinks by `scale` with an area average (the box filter): after de-raining at scale 2,
  0.17 dB better than bicubic shrinking, which sharpens texture the network then mistakes for
  rain; a tie at scale 3 (docs/scale.md, Ways back to full size)."""
  return resize(image, scaled_shape(*image.shape[:2], scale), Image.BOX)


def transfer_rain(image: np.ndarray, small: np.ndarray, small_out: np.ndarray) -> np.ndarray:
  """The full-size result: `image` minus the rain layer removed at the working scale
  (small - small_out), enlarged with Lanczos. Only the rain layer is enlarged, so the photo
  keeps its own detail: enlarging the de-rained image instead scored 0.3-1.3 dB lower."""
  rain = resize(small - small_out, image.shape[:2], Image.LANCZOS)
  np.subtract(image, rain, out=rain)
  return rain


def _crop_starts(length: int, region: int, grid: int) -> list[int]:
  """Starts of `grid` regions of `region` pixels centred at even spacings along `length`,
  clamped inside it (repeated when they coincide: the crop count, so the program, is fixed)."""
  centres = [length * (2 * i + 1) / (2 * grid) for i in range(grid)]
  return [min(max(round(c - region / 2), 0), max(length - region, 0)) for c in centres]


def thumbnails(image: np.ndarray, scales=SCALES, side: int = THUMB, grid: int = THUMB_GRID
               ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
  """The crops `estimate_scale` de-rains: for each scale, regions of side * scale pixels at
  grid x grid places, shrunk to side x side (mirrored up to it where the photo is smaller).
  Returns (crops (len(scales) * grid**2, side, side, 3): one shape for every photo, so one
  program; per crop (scale index, valid height, valid width))."""
  h, w, _ = image.shape
  crops, index = [], []
  for k, scale in enumerate(scales):
    region = max(1, round(side * scale))
    for y in _crop_starts(h, region, grid):
      for x in _crop_starts(w, region, grid):
        part = image[y:y + region, x:x + region]
        small = part if scale == 1 else downscale(part, scale)
        small = small[:side, :side]
        vh, vw = small.shape[:2]
        pad = ((0, side - vh), (0, side - vw), (0, 0))
        crops.append(np.pad(small, pad, mode="symmetric"))
        index.append((k, vh, vw))
  return np.stack(crops), index


def rain_statistics(crops: np.ndarray, outputs: np.ndarray, index, count: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Per scale: (mean square of the removed rain layer, its gradients' coherence in [0, 1])."""
  energy, pixels = np.zeros(count), np.zeros(count)
  tensor = np.zeros((count, 3))
  for crop, out, (k, vh, vw) in zip(crops, outputs, index):
    rain = (crop - out)[:vh, :vw]
    energy[k] += np.sum(rain**2) / 3
    pixels[k] += vh * vw
    if vh > 1 and vw > 1:
      gy, gx = np.gradient(rain.mean(axis=-1))
      tensor[k] += (np.sum(gx * gx), np.sum(gx * gy), np.sum(gy * gy))
  xx, xy, yy = tensor.T
  spread = np.sqrt((xx - yy)**2 + 4 * xy**2)  # lambda1 - lambda2
  coherence = np.divide(spread, xx + yy, out=np.zeros(count), where=xx + yy > 0)
  return energy / np.maximum(pixels, 1), coherence


def scale_features(energy: np.ndarray, coherence: np.ndarray) -> np.ndarray:
  """What `choose_scale` reads, per photo: each scale's energy x coherence and energy as
  fractions of their largest, the coherences, and a constant."""
  score = energy * coherence
  return np.concatenate([score / np.max(score), energy / np.max(energy), coherence, [1.0]])


def choose_scale(energy: np.ndarray, coherence: np.ndarray, scales=SCALES,
                 weights: np.ndarray = SCALE_WEIGHTS) -> float:
  """The scale predicted to lose the fewest dB to the best one. The removed rain grows as the
  working scale approaches the streaks' and then levels off, while the detail a coarser scale
  loses keeps growing; where the energy levels off no longer tells how much rain is left, so
  the trade is learned rather than set by hand (docs/scale.md, auto). No rain found: 1."""
  if not (np.max(energy) > 0 and np.max(energy * coherence) > 0):
    return float(scales[0])
  predicted = weights @ scale_features(np.asarray(energy), np.asarray(coherence))
  return float(scales[int(np.argmax(predicted))])


class Derainer:
  """A jit-compiled de-raining function for one model: `derainer(image) -> image`.

  It runs on JAX's default device, with the kernel set `impl` (models/ops.py; "auto": the
  measured faster one on that device's platform, None: the model's own) and the compiler
  options measured faster there for one image, or for a batch of several (xla_options)."""

  def __init__(self, model: nnx.Module, impl: str | None = "auto", stages: int | None = None):
    platform = jax.devices()[0].platform
    if stages is not None:
      model = with_stages(model, stages)
    if impl is not None:
      model = models.with_config(model, impl=ops.resolve(impl, platform))
    self.impl = model.cfg.impl
    self._graphdef, self._state = nnx.split(model)
    self._platform = platform
    # One image (a photo or a tile) and many small ones (auto's thumbnails) may want different
    # compiler options (runtime/xla_options.py): a jitted function per workload, made (and its
    # options measured, once per machine) on first use.
    self._forward: dict[str, Callable] = {}

  def update(self, params: dict) -> None:
    """Swaps in new weights of the same structure (training's validation), with no recompile."""
    nnx.replace_by_pure_dict(self._state, params)

  def batch(self, images: np.ndarray | jax.Array) -> jax.Array:
    """(N, H, W, 3) -> (N, H, W, 3), unclamped float32."""
    return self._jitted("infer_image" if len(images) == 1 else "infer_batch")(
        self._state, jnp.asarray(images, jnp.float32))

  def _jitted(self, workload: str) -> Callable:
    if workload not in self._forward:
      options = xla_options.compiler_options(self._platform, workload)
      logging.info("%s on %s: kernel set %r, compiler options %s", workload, self._platform,
                   self.impl, options or "XLA's defaults")
      self._forward[workload] = jax.jit(functools.partial(_forward, self._graphdef),
                                        compiler_options=options)
    return self._forward[workload]

  def estimate_scale(self, image: np.ndarray) -> float:
    """The working scale `auto` picks for an (H, W, 3) image: one device call on thumbnails."""
    return choose_scale(*self.scale_statistics(image))

  def scale_statistics(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`rain_statistics` of an (H, W, 3) image at each of SCALES."""
    _check_image(image)
    crops, index = thumbnails(image)
    outputs = np.asarray(self.batch(crops))
    return rain_statistics(crops, outputs, index, len(SCALES))

  def __call__(self, image: np.ndarray, tile: int | None = DEFAULT_TILE,
               overlap: int = DEFAULT_OVERLAP,
               progress: Callable[[int, int], None] | None = None,
               scale: float | str = 1.0) -> np.ndarray:
    """De-rains one (H, W, 3) image in [0, 1]; returns unclamped float32 of the same shape.

    With `tile` None or an image (at the working size) within one tile (`balanced_tiles`), the
    whole image goes through at once. `scale`: 1 de-rains at full size; F > 1 at 1/F of it,
    the removed rain put back at full size (`transfer_rain`); "auto" picks F
    (`estimate_scale`).
    `progress(done, total)` is called with (0, total) before the first tile, so a progress bar
    shows while the first tile compiles, and after each tile; a whole image is one tile.
    """
    _check_image(image)
    scale = parse_scale(scale)
    if scale == AUTO:
      scale = self.estimate_scale(image)
    if scale == 1:
      return self._derain(image, tile, overlap, progress)
    small = downscale(image, scale)
    return transfer_rain(image, small, self._derain(small, tile, overlap, progress))

  def _derain(self, image: np.ndarray, tile: int | None, overlap: int,
              progress: Callable[[int, int], None] | None) -> np.ndarray:
    report = progress or (lambda done, total: None)
    h, w, _ = image.shape
    if tile is None or balanced_tiles(h, w, tile, overlap) == (h, w):
      report(0, 1)
      out = np.asarray(self.batch(image[None]))[0]
      report(1, 1)
      return out
    tiling = Tiling(image, tile, overlap, balanced=True)
    report(0, len(tiling))
    for i in range(len(tiling)):
      tiling.add(i, np.asarray(self.batch(tiling.window(i)))[0])
      report(i + 1, len(tiling))
    return tiling.result()


def balanced_tiles(height: int, width: int, tile: int, overlap: int) -> tuple[int, int]:
  """Tile sides (th, tw) for an image: tiles of at most `tile` rows and tile * tile pixels
  (what bounds memory), in the rows and columns that compute the fewest pixels (ties: fewer
  tiles), each side shared evenly. Only the width may exceed `tile`: on the 2-core EPYC wide
  tiles ran 13.2-14.5 s per megapixel and tall ones (1043 rows) 16-17.5. A 2000x1500 image at
  tile 1024 takes 4 tiles of 782x1032 rather than 6 of 782x710, 13% faster there (docs/scale.md,
  Large photos). Never more pixels than tiles of at most `tile` a side."""
  _check_tiling(tile, overlap)
  if height <= tile and height * width <= tile * tile:
    return height, width
  best = None
  fewest = -(-(max(height, tile) - overlap) // (tile - overlap))  # rows of at most `tile`
  for rows in range(fewest, height + 1):
    th = _shared(height, rows, overlap)
    if rows > 1 and th <= overlap:
      break
    widest = tile * tile // th  # >= tile > overlap
    cols = 1 if width <= widest else -(-(width - overlap) // (widest - overlap))
    tw = _shared(width, cols, overlap)
    key = (rows * cols * th * tw, rows * cols)
    if best is None or key < best[0]:
      best = key, (th, tw)
    if cols == 1:
      break
  return best[1]


def _check_tiling(tile: int, overlap: int) -> None:
  if tile < 1 or not 0 <= overlap < tile:
    raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, "
                     f"overlap={overlap}")


def _shared(length: int, count: int, overlap: int) -> int:
  """The side of `count` tiles that cover `length` with `overlap` between neighbours."""
  return -(-(length + (count - 1) * overlap) // count)


class Tiling:
  """The tiles of one (H, W, 3) image and their blend, for a caller that runs them itself (the
  server interleaves tiles of different requests): `tiling.window(i)` is tile i as a batch of
  one; hand its output to `tiling.add(i, out)`, then take `tiling.result()`. With `balanced`
  (what Derainer uses) tiles take `balanced_tiles`' shape, one per image size; without it
  every tile is `tile` pixels, one shape for all images (what the server needs)."""

  def __init__(self, image: np.ndarray, tile: int, overlap: int, balanced: bool = False):
    _check_tiling(tile, overlap)
    self.image, self.overlap = image, overlap
    h, w, _ = image.shape
    self.th, self.tw = (balanced_tiles(h, w, tile, overlap) if balanced
                        else (min(tile, h), min(tile, w)))
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


def with_stages(model: nnx.Module, stages: int) -> nnx.Module:
  """The same progressive network run for `stages` of its recurrent stages (1 up to the
  number it was trained with): the speed/quality dial (docs/scale.md, Stages)."""
  trained = getattr(model.cfg, "stages", None)
  if trained is None:
    raise ValueError(f"stages: only the progressive networks (SAPNet, PReNet, PRN) have "
                     f"stages; this model is {type(model).__name__}")
  if not 1 <= stages <= trained:
    raise ValueError(f"stages must be from 1 to {trained} (the stages this model was trained "
                     f"with), got {stages}")
  return models.with_config(model, stages=stages)


def _check_image(image: np.ndarray) -> None:
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")


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
