"""No-reference image quality for real rainy photos: NIQE and BRISQUE (lower is better).

Both run per image in NumPy/SciPy from model parameters shipped in `sapnet_jax/metrics/iqa_params/`
(nothing is downloaded); `iqa_params/README.txt` names their origin and licences. Each follows
one reference implementation, against which `tests/metrics/test_no_reference.py` checks it:

  niqe     BasicSR 1.4.2 `basicsr.metrics.calculate_niqe(img, crop_border, convert_to='y')`, a
           port of LIVE's MATLAB niqe.m: the image is rounded to 8 bits, converted to MATLAB's
           rgb2ycbcr Y (in float32, as BasicSR does) and rounded again; cropped to whole 96x96
           blocks; 18 NSS features per block at full and half scale (MATLAB imresize bicubic
           with antialiasing); Mahalanobis-type distance of their Gaussian fit to the pristine
           model (LIVE's modelparameters.mat as BasicSR's niqe_pris_params.npz).
  brisque  the `brisque` package 0.2.0 (`BRISQUE().score(uint8 RGB)`), with LIVE's BRISQUE
           SVR model (libsvm "allmodel") and feature ranges as that package ships them: grey =
           scikit-image rgb2gray of the 8-bit image in [0, 1]; MSCN with a zero-padded 7x7
           Gaussian (sigma 7/6, C = 1/255); AGGD shape fitted by root finding from 0.2; second
           scale by OpenCV's bicubic resize to half size (no antialiasing); RBF epsilon-SVR.
           This differs from MATLAB's brisque.m (replicate padding, grid search of the shape,
           antialiased imresize), so the values are not those of papers that used MATLAB.

Inputs are (H, W, 3) RGB or (H, W) / (H, W, 1) greyscale, float in [0, 1] (clamped, then rounded
to 8 bits like a saved image) or uint8. Greyscale is its own Y / grey channel.
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np
from scipy import ndimage, optimize, signal, special

PARAMS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "iqa_params")
NIQE_PARAMS = os.path.join(PARAMS_DIR, "niqe_pris_params.npz")
BRISQUE_PARAMS = os.path.join(PARAMS_DIR, "brisque_live_svr.npz")
NIQE_BLOCK = 96  # the official block size, the one the pristine model was fitted on
BRISQUE_MIN_SIDE = 14  # the half-scale image must still cover the 7x7 MSCN window


def _as_uint8(img: np.ndarray, metric: str) -> np.ndarray:
  """(H, W, C) uint8 with C in {1, 3}: what a saved 8-bit image of `img` holds."""
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[-1] not in (1, 3):
    raise ValueError(f"{metric}: expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape "
                     f"{img.shape}")
  if img.dtype == np.uint8:
    return img
  if not np.issubdtype(img.dtype, np.floating):
    raise ValueError(f"{metric}: expected a float image in [0, 1] or uint8, got {img.dtype}")
  # Same rounding as sapnet_jax.data.imageio.to_uint8, so a score equals that of the saved file.
  return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------- NIQE

@functools.cache
def _niqe_params() -> dict[str, np.ndarray]:
  try:
    with np.load(NIQE_PARAMS) as f:
      return {k: f[k] for k in ("mu_pris_param", "cov_pris_param", "gaussian_window")}
  except (OSError, KeyError) as e:
    raise OSError(f"{NIQE_PARAMS}: cannot read the NIQE model ({e}); reinstall sapnet_jax") from e


@functools.cache
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
  """The shape grid 0.2:0.001:10 of niqe.m and its ratio Γ(2/a)² / (Γ(1/a) Γ(3/a))."""
  gam = np.arange(0.2, 10.001, 0.001)
  rec = np.reciprocal(gam)
  return gam, np.square(special.gamma(rec * 2)) / (special.gamma(rec) * special.gamma(rec * 3))


def _aggd_grid(block: np.ndarray) -> tuple[float, float, float]:
  """AGGD (alpha, beta_l, beta_r) by grid search, in BasicSR's dtypes (float32 statistics)."""
  block = block.ravel()
  gam, r_gam = _aggd_table()
  left_std = np.sqrt(np.mean(block[block < 0] ** 2))
  right_std = np.sqrt(np.mean(block[block > 0] ** 2))
  gammahat = left_std / right_std
  rhat = (np.mean(np.abs(block))) ** 2 / np.mean(block ** 2)
  rhatnorm = (rhat * (gammahat ** 3 + 1) * (gammahat + 1)) / ((gammahat ** 2 + 1) ** 2)
  alpha = gam[np.argmin((r_gam - rhatnorm) ** 2)]
  scale = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
  return alpha, left_std * scale, right_std * scale


def _niqe_block_features(block: np.ndarray) -> list[float]:
  alpha, beta_l, beta_r = _aggd_grid(block)
  feat = [alpha, (beta_l + beta_r) / 2]
  # Products of neighbours; np.roll wraps around the block, as BasicSR (and circshift in niqe.m).
  for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
    alpha, beta_l, beta_r = _aggd_grid(block * np.roll(block, shift, axis=(0, 1)))
    mean = (beta_r - beta_l) * (special.gamma(2 / alpha) / special.gamma(1 / alpha))
    feat.extend([alpha, mean, beta_l, beta_r])
  return feat


def _cubic(x: np.ndarray) -> np.ndarray:
  ax = np.abs(x)
  ax2, ax3 = ax ** 2, ax ** 3
  return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
          + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))).astype(x.dtype)


def _matlab_half_weights(n: int) -> np.ndarray:
  """(ceil(n/2), n) matrix of MATLAB imresize(x, 0.5, 'bicubic') with antialiasing along one
  axis, 'symmetric' borders folded in; float32 like BasicSR's torch port."""
  scale, width = np.float32(0.5), 4 / 0.5  # antialiasing widens the kernel by 1/scale
  out = math.ceil(n * 0.5)
  x = np.arange(1, out + 1, dtype=np.float32)
  u = x / scale + np.float32(0.5 * (1 - 1 / 0.5))
  left = np.floor(u - np.float32(width / 2))
  p = math.ceil(width) + 2
  indices = left[:, None] + np.arange(p, dtype=np.float32)[None, :]
  weights = scale * _cubic((u[:, None] - indices) * scale)
  weights = weights / np.sum(weights, axis=1, keepdims=True)
  idx = indices.astype(np.int64) - 1  # 1-based MATLAB positions -> 0-based
  idx = np.where(idx < 0, -idx - 1, idx)
  idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
  matrix = np.zeros((out, n), np.float32)
  np.add.at(matrix, (np.repeat(np.arange(out), p), idx.ravel()), weights.ravel())
  return matrix


def _matlab_half(img: np.ndarray) -> np.ndarray:
  """MATLAB imresize(img, 0.5) (bicubic, antialiased) of a 2-D float32 image."""
  rows, cols = _matlab_half_weights(img.shape[0]), _matlab_half_weights(img.shape[1])
  # Accumulated in float64, then rounded: float32 BLAS products differ by CPU kernel, and one
  # ulp can move a block's grid-searched AGGD shape (measured: NIQE +0.012 on a 6-block crop).
  f64 = np.float64
  return (rows.astype(f64) @ img.astype(f64) @ cols.T.astype(f64)).astype(np.float32)


def _y_channel(u8: np.ndarray) -> np.ndarray:
  """MATLAB rgb2ycbcr Y on the 0..255 scale, through float32 exactly as BasicSR's
  to_y_channel (it rounds at .5 boundaries the way BasicSR does); greyscale passes through."""
  img = u8.astype(np.float32)
  if img.shape[-1] == 1:
    return img[..., 0]
  bgr = img[..., ::-1] / np.float32(255.0)
  y = (np.dot(bgr, [24.966, 128.553, 65.481]) + 16.0) / 255.0
  return y.astype(np.float32) * np.float32(255.0)


def niqe(img: np.ndarray, crop_border: int = 0) -> float:
  """NIQE of one image (lower is better), as BasicSR 1.4.2's calculate_niqe(convert_to='y').

  The image is rounded to 8 bits; its Y channel (MATLAB rgb2ycbcr; greyscale as is), less
  `crop_border` pixels on each side, is rounded and cropped to whole 96x96 blocks (bottom and
  right remainders dropped). The features of the blocks are fitted with a Gaussian, so at least
  two blocks are needed (192x96 or 96x192 pixels; BasicSR fails on one, MATLAB's cov of one
  sample is 0): smaller images raise ValueError. Blocks without texture give NaN features and
  are left out of the fit, as in the reference; if fewer than two remain (BasicSR then fails in
  pinv), ValueError.
  """
  y = _y_channel(_as_uint8(img, "niqe"))
  if crop_border:
    y = y[crop_border:-crop_border, crop_border:-crop_border]
  h, w = y.shape
  nh, nw = h // NIQE_BLOCK, w // NIQE_BLOCK
  if nh * nw < 2:
    cropped = f" after cropping {crop_border} pixels per side" if crop_border else ""
    raise ValueError(
        f"niqe: the image must hold two {NIQE_BLOCK}x{NIQE_BLOCK} blocks, i.e. be at least "
        f"{2 * NIQE_BLOCK}x{NIQE_BLOCK} or {NIQE_BLOCK}x{2 * NIQE_BLOCK} pixels (width x height)"
        f"{cropped}; got {w}x{h}")
  params = _niqe_params()
  y = y[:nh * NIQE_BLOCK, :nw * NIQE_BLOCK].round()

  with warnings.catch_warnings():
    # Blocks without texture have empty AGGD sides: NaN features, left out below, as BasicSR.
    warnings.simplefilter("ignore", RuntimeWarning)
    feats = _niqe_features(y, params["gaussian_window"], nh, nw)
  valid = feats[~np.isnan(feats).any(axis=1)]
  if len(valid) < 2:
    raise ValueError(f"niqe: only {len(valid)} of the {nh * nw} {NIQE_BLOCK}x{NIQE_BLOCK} blocks "
                     "have texture (a flat image?); NIQE needs two")
  mu_dist = np.nanmean(feats, axis=0)
  cov_dist = np.cov(valid, rowvar=False)
  diff = params["mu_pris_param"] - mu_dist
  invcov = np.linalg.pinv((params["cov_pris_param"] + cov_dist) / 2)
  return float(np.squeeze(np.sqrt(diff @ invcov @ diff.T)))


def _niqe_features(y: np.ndarray, window: np.ndarray, nh: int, nw: int) -> np.ndarray:
  """(blocks, 36) features: 18 per block at full scale, 18 at half scale."""
  feats = []
  for scale in (1, 2):
    # float32 throughout, as BasicSR: ndimage.convolve returns its input's dtype.
    mu = ndimage.convolve(y, window, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.convolve(np.square(y), window, mode="nearest") - np.square(mu)))
    normalized = (y - mu) / (sigma + 1)
    b = NIQE_BLOCK // scale
    feats.append(np.array([_niqe_block_features(normalized[i * b:(i + 1) * b, j * b:(j + 1) * b])
                           for j in range(nw) for i in range(nh)]))
    if scale == 1:
      y = _matlab_half(y / np.float32(255.0)) * np.float32(255.0)
  return np.concatenate(feats, axis=1)


# -------------------------------------------------------------------------------------- BRISQUE

@functools.cache
def _brisque_params() -> dict[str, np.ndarray]:
  keys = ("support_vectors", "dual_coef", "rho", "gamma", "feature_min", "feature_max")
  try:
    with np.load(BRISQUE_PARAMS) as f:
      return {k: f[k] for k in keys}
  except (OSError, KeyError) as e:
    raise OSError(f"{BRISQUE_PARAMS}: cannot read the BRISQUE model ({e}); reinstall "
                  "sapnet_jax") from e


@functools.cache
def _brisque_window() -> np.ndarray:
  # Op for op as the brisque package: in flat (e.g. saturated) regions the MSCN products are
  # rounding noise around 0, and whether one is < 0 or >= 0 moves the AGGD fit by ~1e-6.
  y, x = np.indices((7, 7)) - 3
  k = 1 / (2 * np.pi * (7 / 6) ** 2) * np.exp(-(x ** 2 + y ** 2) / (2 * (7 / 6) ** 2))
  return k / np.sum(k)


def _mscn(gray: np.ndarray) -> np.ndarray:
  """Mean-subtracted contrast-normalised coefficients; zero-padded 'same' convolutions."""
  k = _brisque_window()
  mu = signal.convolve2d(gray, k, "same")
  sd = np.sqrt(np.abs(mu ** 2 - signal.convolve2d(gray ** 2, k, "same")))
  return (gray - mu) / (sd + 1 / 255)


def _aggd_root(x: np.ndarray) -> tuple[float, float, float, float]:
  """AGGD (alpha, mean, sigma_l², sigma_r²) as the brisque package fits it: the shape by
  scipy.optimize.root from 0.2 (not niqe.m's grid); zeros count on the right side."""
  left, right = x[x < 0], x[x >= 0]
  r_hat = (np.sum(np.abs(x)) / x.size) ** 2 / (np.sum(x ** 2) / x.size)
  var_l, var_r = np.sum(left ** 2) / left.size, np.sum(right ** 2) / right.size
  g = np.sqrt(var_l) / np.sqrt(var_r)
  big_r = r_hat * ((g ** 3 + 1) * (g + 1)) / ((g ** 2 + 1) ** 2)

  def phi(a):
    return special.gamma(2 / a) ** 2 / (special.gamma(1 / a) * special.gamma(3 / a)) - big_r

  alpha = optimize.root(phi, [0.2]).x[0]
  const = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
  ratio = special.gamma(2 / alpha) / special.gamma(1 / alpha)
  mean = (np.sqrt(var_r) - np.sqrt(var_l)) * const * ratio
  return alpha, mean, var_l, var_r


def _brisque_scale_features(gray: np.ndarray) -> list[float]:
  m = _mscn(gray)
  alpha, _, var_l, var_r = _aggd_root(m)
  feats = [alpha, (var_l + var_r) / 2]
  for pair in (m[:, :-1] * m[:, 1:], m[:-1, :] * m[1:, :], m[:-1, :-1] * m[1:, 1:],
               m[1:, :-1] * m[:-1, 1:]):
    feats.extend(_aggd_root(pair))
  return feats


def _opencv_half_cubic(img: np.ndarray) -> np.ndarray:
  """cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=INTER_CUBIC) of a 2-D float64 image:
  Keys cubic (a = -0.75) sampled at offset 0.5, replicated borders, output sides rounded half
  to even. Bit-identical to OpenCV in the tests."""
  taps = (-0.09375, 0.59375, 0.59375, -0.09375)

  def along(x: np.ndarray, axis: int) -> np.ndarray:
    n = x.shape[axis]
    start = 2 * np.arange(int(np.rint(n * 0.5)))
    out = 0.0
    for k, t in enumerate(taps):
      out = out + t * np.take(x, np.clip(start + k - 1, 0, n - 1), axis=axis)
    return out

  return along(along(img, 1), 0)


def brisque(img: np.ndarray) -> float:
  """BRISQUE of one image (lower is better), as the `brisque` package 0.2.0 scores the 8-bit
  RGB image; greyscale input is used as the grey channel directly. Sides under 14 pixels raise
  ValueError (the half-scale image would not cover the 7x7 window), and so does a featureless
  (flat) image, for which the reference gives NaN."""
  u8 = _as_uint8(img, "brisque")
  h, w = u8.shape[:2]
  if min(h, w) < BRISQUE_MIN_SIDE:
    raise ValueError(f"brisque: the image must be at least {BRISQUE_MIN_SIDE}x{BRISQUE_MIN_SIDE} "
                     f"pixels, got {w}x{h} (width x height)")
  # scikit-image's img_as_float multiplies by 1/255 (not divides): kept, because the root
  # finding below turns 1-ulp differences into ~1e-6 in the shape features.
  x = u8 * (1.0 / 255.0)
  gray = x[..., 0] if x.shape[-1] == 1 else x @ np.array([0.2125, 0.7154, 0.0721])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # empty AGGD sides: checked just below
    feats = np.array(_brisque_scale_features(gray)
                     + _brisque_scale_features(_opencv_half_cubic(gray)), np.float64)
  if not np.all(np.isfinite(feats)):
    # The reference returns NaN here (no negative or no positive MSCN coefficients).
    raise ValueError("brisque: the image has too little texture (a flat image?); BRISQUE is "
                     "undefined for it")
  p = _brisque_params()
  lo, hi = p["feature_min"], p["feature_max"]
  scaled = -1 + (2.0 / (hi - lo) * (feats - lo))
  # libsvm epsilon-SVR with an RBF kernel: sum_i coef_i exp(-gamma |sv_i - x|²) - rho.
  dist2 = np.sum((p["support_vectors"] - scaled) ** 2, axis=1)
  return float(p["dual_coef"] @ np.exp(-p["gamma"] * dist2) - p["rho"])
