"""Full-reference image metrics in each convention the de-raining literature uses.

Every function is JAX, batched over leading axes (..., H, W, C) and jit-able; it computes in
the dtype of its inputs, so callers that need the conventions' float64 pass float64 arrays
under `jax.enable_x64(True)` (`score_pair` does). Papers' numbers differ by 1-2 dB between
conventions, so reports name theirs (docs/results.md lists all three):

  rgb       PSNR / SSIM on RGB in [0, 1] (the SAPNet paper's Table 5, "sklearn"): SSIM is
            scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1, channel_axis=-1), i.e. an 11x11 Gaussian
            window over the valid region, averaged over channels.
  y         BasicSR: Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B in [0, 1], Y on the
            0..255 scale, not rounded); PSNR with peak 255; SSIM with an 11x11 Gaussian
            (sigma 1.5) over the valid region, C1 = (0.01*255)^2, C2 = (0.03*255)^2.
  y_matlab  the MATLAB scripts of PReNet-era papers: rgb2ycbcr on im2double images, PSNR on Y
            with peak 1 (the same value as `y`), and Wang's ssim.m on Y*255, which first
            averages with an f x f box filter ('symmetric' borders) and keeps every f-th pixel,
            f = max(1, round(min(H, W) / 256)); equal to `y` for images under 384 pixels a side.
Greyscale images (C = 1) are their own Y channel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

KEYS = ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y", "psnr_y_matlab", "ssim_y_matlab")
_WINDOW, _SIGMA = 11, 1.5
PADDINGS = ("valid", "same")
# Axes up to _ONE_BAND pixels are blurred by one banded matrix; longer ones in tiles of _TILE
# outputs, so the cost stays linear in the side (docs/benchmarks.md, SSIM).
_ONE_BAND, _TILE = 256, 64


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
  """PSNR per image over the last three axes (H, W, C)."""
  mse = jnp.mean((x - y) ** 2, axis=(-3, -2, -1))
  return 10.0 * jnp.log10(data_range**2 / mse)


def gaussian_taps(window: int = _WINDOW, sigma: float = _SIGMA) -> np.ndarray:
  """The normalised 1-d Gaussian of SSIM's window (float64); the 2-d window is outer(g, g)."""
  x = np.arange(window, dtype=np.float64) - (window - 1) / 2
  taps = np.exp(-(x**2) / (2 * sigma**2))
  return taps / taps.sum()


def _band(n_in: int, pad: int, taps: np.ndarray) -> np.ndarray:
  """B with (v @ B)[j] = sum_t taps[t] v[j + t - pad], zero outside v: (n_in, n_out)."""
  k = len(taps)
  t = np.arange(n_in)[:, None] - np.arange(n_in + 2 * pad - k + 1)[None] + pad
  return np.where((t >= 0) & (t < k), taps[np.clip(t, 0, k - 1)], 0.0)


def _blur_last(x: jax.Array, taps: np.ndarray, pad: int) -> jax.Array:
  """Correlation of the last axis with `taps`, zero-padded by `pad` each side, as products with
  a banded matrix: on a CPU an order of magnitude quicker than shifted-slice sums or XLA's
  depthwise convolutions, with gradients (docs/benchmarks.md, SSIM loss)."""
  # HIGHEST: float32 products on GPU/TPU too (their default may round operands to TF32/bf16).
  matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  k, n_in = len(taps), x.shape[-1]
  n_out = n_in + 2 * pad - k + 1
  if n_in <= _ONE_BAND:
    return matmul(x, jnp.asarray(_band(n_in, pad, taps), x.dtype))
  # Tiles: output j*T..j*T+T-1 needs inputs j*T..j*T+T+k-2 (the tile and the next k-1).
  tiles = -(-n_out // _TILE)
  xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, (tiles + 1) * _TILE - n_in - pad)])
  rows = x.shape[:-1] + (tiles, _TILE)
  windows = jnp.concatenate([xp[..., :tiles * _TILE].reshape(rows),
                             xp[..., _TILE:].reshape(rows)[..., :k - 1]], axis=-1)
  out = matmul(windows, jnp.asarray(_band(_TILE + k - 1, 0, taps), x.dtype))
  return out.reshape(x.shape[:-1] + (tiles * _TILE,))[..., :n_out]


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0,
         padding: str = "valid") -> jax.Array:
  """Mean SSIM per image: 11x11 Gaussian (sigma 1.5) window, channels averaged.

  "valid": over the region the window fits in (scikit-image's convention, the metrics');
  "same": every pixel, the images zero-padded (PReNet's SSIM.py, the training loss).
  """
  if padding not in PADDINGS:
    raise ValueError(f"SSIM padding must be one of {PADDINGS}, got {padding!r}")
  if padding == "valid" and min(x.shape[-3], x.shape[-2]) < _WINDOW:
    raise ValueError(f"SSIM needs images of at least {_WINDOW}x{_WINDOW} pixels, got "
                     f"{x.shape[-3]}x{x.shape[-2]}")
  taps, pad = gaussian_taps(), (_WINDOW // 2 if padding == "same" else 0)
  x, y = (jnp.moveaxis(a, -1, -3) for a in (x, y))  # (..., C, H, W): blur the last axes
  maps = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-3)
  maps = _blur_last(jnp.swapaxes(_blur_last(maps, taps, pad), -1, -2), taps, pad)
  # (..., 5C, W, H) now: left so, as only means over the last three axes follow.
  mu1, mu2, e11, e22, e12 = jnp.split(maps, 5, axis=-3)
  s11, s22, s12 = e11 - mu1 * mu1, e22 - mu2 * mu2, e12 - mu1 * mu2
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  num = (2 * mu1 * mu2 + c1) * (2 * s12 + c2)
  ssim_map = num / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
  return jnp.mean(ssim_map, axis=(-3, -2, -1))


def rgb_to_y(x: jax.Array) -> jax.Array:
  """(..., H, W, 3) RGB in [0, 1] -> (..., H, W, 1) Y on the 0..255 scale (BasicSR/MATLAB)."""
  if x.shape[-1] == 1:
    return x * 255.0
  coeffs = jnp.asarray([65.481, 128.553, 24.966], x.dtype)
  return 16.0 + jnp.sum(x * coeffs, axis=-1, keepdims=True)


def matlab_ssim_factor(height: int, width: int) -> int:
  """Downsampling factor of Wang's ssim.m: max(1, round(min(H, W) / 256)), MATLAB rounding."""
  return max(1, math.floor(min(height, width) / 256 + 0.5))


def matlab_downsample(x: jax.Array, f: int) -> jax.Array:
  """imfilter(x, ones(f)/f^2, 'symmetric', 'same') then x(1:f:end, 1:f:end), on axes H, W."""
  if f == 1:
    return x
  before = (f + 1) // 2 - 1  # MATLAB puts an even kernel's centre at floor((f + 1) / 2)
  pad = [(0, 0)] * (x.ndim - 3) + [(before, f - 1 - before)] * 2 + [(0, 0)]
  xp = jnp.pad(x, pad, mode="symmetric")
  h, w = x.shape[-3], x.shape[-2]
  box = sum(xp[..., i:i + h, j:j + w, :] for i in range(f) for j in range(f)) / (f * f)
  return box[..., ::f, ::f, :]


def crop_border(x: jax.Array, n: int) -> jax.Array:
  return x if n == 0 else x[..., n:-n, n:-n, :]


def all_metrics(derained: jax.Array, clean: jax.Array, border: int = 0) -> dict[str, jax.Array]:
  """Every convention's PSNR and SSIM for (..., H, W, C) images in [0, 1]."""
  d, c = crop_border(derained, border), crop_border(clean, border)
  yd, yc = rgb_to_y(d), rgb_to_y(c)
  f = matlab_ssim_factor(yd.shape[-3], yd.shape[-2])
  psnr_y = psnr(yd, yc, 255.0)
  return {
      "psnr_rgb": psnr(d, c), "ssim_rgb": ssim(d, c),
      "psnr_y": psnr_y, "ssim_y": ssim(yd, yc, 255.0),
      "psnr_y_matlab": psnr(yd / 255.0, yc / 255.0, 1.0),
      "ssim_y_matlab": ssim(matlab_downsample(yd, f), matlab_downsample(yc, f), 255.0),
  }


_all_metrics_jit = jax.jit(all_metrics, static_argnames="border")


def score_pair(derained: np.ndarray, clean: np.ndarray, border: int = 0) -> dict[str, float]:
  """All six metrics of one image pair, computed in float64; inputs (H, W, C) in [0, 1].

  Pass what you would save: uint8 images divided by 255 (the conventions are defined on
  8-bit images).
  """
  if derained.shape != clean.shape:
    raise ValueError(f"image sizes differ: {derained.shape} vs {clean.shape}")
  with jax.enable_x64(True):
    out = _all_metrics_jit(jnp.asarray(derained, jnp.float64), jnp.asarray(clean, jnp.float64),
                           border=border)
    return {k: float(v) for k, v in out.items()}
