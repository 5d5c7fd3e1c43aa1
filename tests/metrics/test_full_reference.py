"""Full-reference metrics against independent float64 references.

RGB SSIM is checked against scikit-image's structural_similarity with the arguments the SAPNet
paper's numbers imply; PSNR, the Y conversion, Y-SSIM and the MATLAB ssim.m downsampling against
the plain NumPy/SciPy float64 code below, written from the conventions' definitions (BasicSR's
to_y_channel/_ssim and Wang's ssim.m), not from sapnet_jax. Tolerance: 1e-6 dB and 1e-6 SSIM.
"""

import math

import numpy as np
import pytest
from scipy.signal import correlate2d
from skimage.metrics import structural_similarity

from support.paths import shared_path
from sapnet_jax.data.imageio import read_image
from sapnet_jax.metrics import full_reference

TOL = 1e-6


def ref_psnr(a, b, peak):
  return 10 * np.log10(peak**2 / np.mean((a.astype(np.float64) - b) ** 2))


def ref_y(rgb):
  if rgb.shape[-1] == 1:
    return rgb[..., 0] * 255.0
  return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def ref_ssim_2d(a, b, peak):
  g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
  window = np.outer(g, g) / np.outer(g, g).sum()
  f = lambda z: correlate2d(z, window, mode="valid")  # noqa: E731
  c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
  ma, mb = f(a), f(b)
  va, vb, cab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
  return np.mean(((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))


def ref_matlab_ssim(ya, yb):
  h, w = ya.shape
  f = max(1, int(np.floor(min(h, w) / 256 + 0.5)))
  if f > 1:
    c = (f + 1) // 2  # 1-based centre of an f-tap MATLAB kernel
    def box(z):
      zp = np.pad(z, ((c - 1, f - c), (c - 1, f - c)), mode="symmetric")
      windows = np.lib.stride_tricks.sliding_window_view(zp, (f, f))[:h, :w]
      return windows.mean(axis=(-2, -1))[::f, ::f]
    ya, yb = box(ya), box(yb)
  return ref_ssim_2d(ya, yb, 255.0)


def _check(d, c):
  got = full_reference.score_pair(d, c)
  assert abs(got["psnr_rgb"] - ref_psnr(d, c, 1.0)) <= TOL
  sk = structural_similarity(d.astype(np.float64), c.astype(np.float64), gaussian_weights=True,
                             sigma=1.5, use_sample_covariance=False, data_range=1.0,
                             channel_axis=-1)
  assert abs(got["ssim_rgb"] - sk) <= TOL
  yd, yc = ref_y(d.astype(np.float64)), ref_y(c.astype(np.float64))
  assert abs(got["psnr_y"] - ref_psnr(yd, yc, 255.0)) <= TOL
  assert abs(got["psnr_y_matlab"] - ref_psnr(yd / 255, yc / 255, 1.0)) <= TOL
  assert abs(got["ssim_y"] - ref_ssim_2d(yd, yc, 255.0)) <= TOL
  assert abs(got["ssim_y_matlab"] - ref_matlab_ssim(yd, yc)) <= TOL
  return got


def _u8(x):
  return np.round(x * 255).astype(np.uint8).astype(np.float64) / 255


@pytest.mark.parametrize("name", ["001.png", "042.png"])
def test_rain100h_pairs(name):
  rainy = read_image(shared_path(f"data/rain100h/rainy/{name}"))
  clean = read_image(shared_path(f"data/rain100h/clean/{name}"))
  got = _check(_u8(rainy), _u8(clean))
  assert got["ssim_y"] == pytest.approx(got["ssim_y_matlab"], abs=1e-12)  # 320 px < 384: f = 1


def test_odd_size_and_greyscale():
  rainy = read_image(shared_path("data/rain100h/rainy/007.png"))[3:160, 11:234]
  clean = read_image(shared_path("data/rain100h/clean/007.png"))[3:160, 11:234]
  _check(_u8(rainy), _u8(clean))
  _check(_u8(rainy[..., :1]), _u8(clean[..., :1]))


@pytest.mark.parametrize("size", [(500, 500), (650, 661)])  # MATLAB factor f = 2 and f = 3
def test_matlab_downsampling_of_large_images(size):
  clean = read_image(shared_path("data/clean_pool/kodak24_kodim05.jpg"))
  clean = np.resize(clean, size + (3,)) if size != clean.shape[:2] else clean
  noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.05, clean.shape), 0, 1)
  got = _check(_u8(noisy), _u8(clean))
  assert full_reference.matlab_ssim_factor(*size) == {500: 2, 650: 3}[size[0]]
  assert abs(got["ssim_y"] - got["ssim_y_matlab"]) > 1e-3  # the conventions really differ here


def test_paper_rainy_row_for_rain100h():
  # SAPNet paper Table 5, "Rainy" on Rain100H: 12.13 dB / 0.349 (RGB on [0,1], scikit-image SSIM).
  rainy_dir = shared_path("data/rain100h/rainy")
  names = sorted(p.name for p in rainy_dir.iterdir())
  assert len(names) == 100
  scores = [full_reference.score_pair(read_image(rainy_dir / n), read_image(rainy_dir.parent / "clean" / n))
            for n in names]
  assert round(float(np.mean([s["psnr_rgb"] for s in scores])), 2) == 12.13
  assert round(float(np.mean([s["ssim_rgb"] for s in scores])), 3) == 0.349


def test_border_crop_and_identity():
  x = np.random.default_rng(1).random((40, 30, 3))
  y = np.clip(x + 0.01, 0, 1)
  cropped = full_reference.score_pair(x, y, border=4)
  assert cropped["psnr_rgb"] == pytest.approx(ref_psnr(x[4:-4, 4:-4], y[4:-4, 4:-4], 1.0), abs=TOL)
  same = full_reference.score_pair(x, x)
  assert math.isinf(same["psnr_rgb"]) and same["ssim_rgb"] == pytest.approx(1.0, abs=1e-12)


def test_batched_and_jittable_in_float32():
  import jax
  rng = np.random.default_rng(2)
  a, b = rng.random((3, 20, 24, 3), dtype=np.float32), rng.random((3, 20, 24, 3), dtype=np.float32)
  batched = jax.jit(full_reference.all_metrics)(a, b)
  for k in full_reference.KEYS:
    assert batched[k].shape == (3,) and batched[k].dtype == np.float32
  for i in range(3):
    one = full_reference.score_pair(a[i], b[i])
    for k in full_reference.KEYS:
      assert float(batched[k][i]) == pytest.approx(one[k], rel=1e-4)


def test_errors():
  with pytest.raises(ValueError, match="sizes differ"):
    full_reference.score_pair(np.zeros((20, 20, 3)), np.zeros((20, 21, 3)))
  with pytest.raises(ValueError, match="at least 11x11"):
    full_reference.score_pair(np.zeros((8, 20, 3)), np.zeros((8, 20, 3)))
