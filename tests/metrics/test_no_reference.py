"""NIQE and BRISQUE against their reference implementations, and properties they must have.

Fixture: tests/fixtures/noref_expected.npz, made by tests/fixtures/make_noref_fixtures.py with
BasicSR 1.4.2's calculate_niqe and the `brisque` package 0.2.0 (versions stored in the file) on
six images/crops of ../shared (file names and crop boxes stored, pixels checked by sha256) and
two small generated images stored in the fixture.

Tolerances:
  NIQE 1e-3 absolute (measured max 4.7e-4). BasicSR's half-scale resize runs in float32 through
    torch/MKL; ours accumulates in float64 and rounds to float32 (deterministic across CPUs,
    where float32 BLAS was not: +0.012 on the 6-block crop on another CPU), so pixels differ
    by ~1 ulp, and the grid-searched AGGD shape of a block can move by one 0.001 step.
  BRISQUE 1e-8 absolute (measured max 2.4e-11). Every feature is computed op for op as the
    package does; only the SVR sum differs (libsvm's |x|²+|y|²-2x·y vs our |x-y|², 770 terms
    with |coef| <= 1024), worth ~1e-11.
"""

import hashlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from support.paths import FIXTURES, shared_path
from sapnet_jax.metrics import no_reference

NIQE_TOL, BRISQUE_TOL = 1e-3, 1e-8
EXPECTED = np.load(FIXTURES / "noref_expected.npz")
NAMES = [str(n) for n in EXPECTED["names"]]


def case_image(i: int) -> np.ndarray:
  """uint8 pixels of case i, exactly those the reference scored."""
  name, rel = NAMES[i], str(EXPECTED["files"][i])
  if not rel:
    return EXPECTED[name]
  with Image.open(shared_path(rel)) as im:
    img = np.asarray(im.convert("RGB"))
  left, top, width, height = EXPECTED["boxes"][i]
  if left >= 0:
    img = img[top:top + height, left:left + width]
  img = np.ascontiguousarray(img)
  assert hashlib.sha256(img.tobytes()).hexdigest() == EXPECTED["sha256"][i], (
      f"{rel}: decoded pixels differ from those the fixture was made from (another JPEG/PNG "
      "decoder?); the reference values do not apply")
  return img


def as_float(img: np.ndarray) -> np.ndarray:
  return img.astype(np.float32) / 255.0


@pytest.mark.parametrize("i", range(len(NAMES)), ids=NAMES)
def test_matches_reference(i):
  img = case_image(i)
  # Float input in [0, 1] (what evaluate passes) rounds back to the same 8-bit pixels.
  assert no_reference.niqe(as_float(img)) == pytest.approx(EXPECTED["niqe"][i], abs=NIQE_TOL)
  assert no_reference.brisque(as_float(img)) == pytest.approx(EXPECTED["brisque"][i],
                                                              abs=BRISQUE_TOL)


def test_niqe_crop_border_matches_reference():
  img = case_image(0)
  got = no_reference.niqe(as_float(img), crop_border=4)
  assert got == pytest.approx(float(EXPECTED["niqe_crop4_first"]), abs=NIQE_TOL)
  assert abs(got - no_reference.niqe(as_float(img))) > 1e-3  # the crop did change the input


def test_greyscale_layouts_agree():
  gray = EXPECTED["generated_gray_193x101"]
  assert gray.ndim == 2 and gray.shape[0] % 2 == 1 and gray.shape[1] % 2 == 1
  for f in (no_reference.niqe, no_reference.brisque):
    want = f(gray)
    assert f(gray[..., None]) == want
    assert f(as_float(gray)) == want
  # Replicated to RGB: Y = 16 + 219 g/255 is not g, so NIQE changes; BRISQUE's grey is g again.
  rgb = np.repeat(gray[..., None], 3, axis=-1)
  assert no_reference.brisque(rgb) == pytest.approx(no_reference.brisque(gray), abs=1e-8)


def test_odd_sizes_use_whole_blocks():
  img = case_image(0)
  assert img.shape[:2] == (320, 480)
  # Only whole 96x96 blocks count (bottom/right remainders dropped): 319 x 479 -> 3 x 4 blocks.
  assert no_reference.niqe(img[:-1, :-1]) == no_reference.niqe(img[:288, :384])
  assert no_reference.niqe(img) == no_reference.niqe(img[:288, :480])
  assert no_reference.niqe(img[:-1, :-1]) != no_reference.niqe(img)


@pytest.mark.parametrize("shape", [(95, 300, 3), (300, 95), (96, 96, 3), (191, 191)])
def test_niqe_too_small(shape):
  with pytest.raises(ValueError, match=r"at least 192x96 or 96x192"):
    no_reference.niqe(np.zeros(shape, np.float32))


def test_niqe_too_small_after_crop():
  with pytest.raises(ValueError, match="after cropping 5 pixels"):
    no_reference.niqe(np.zeros((100, 200, 3), np.float32), crop_border=5)
  no_reference.niqe(EXPECTED["generated_rgb_101x197"], crop_border=2)  # 193 x 97 still works


def test_brisque_too_small_and_bad_shapes():
  with pytest.raises(ValueError, match="at least 14x14"):
    no_reference.brisque(np.zeros((13, 40, 3), np.float32))
  with pytest.raises(ValueError, match=r"\(H, W, 3\) image, got shape \(40, 40, 4\)"):
    no_reference.brisque(np.zeros((40, 40, 4), np.float32))
  with pytest.raises(ValueError, match="int64"):
    no_reference.niqe(np.zeros((200, 200), np.int64))


def test_flat_images_raise_and_flat_blocks_are_left_out():
  flat = np.full((200, 200, 3), 0.5, np.float32)
  with pytest.raises(ValueError, match="only 0 of the 4 96x96 blocks have texture"):
    no_reference.niqe(flat)
  with pytest.raises(ValueError, match="brisque: the image has too little texture"):
    no_reference.brisque(flat)
  half = flat.copy()
  half[:, :96] = np.random.default_rng(1).random((200, 96, 3))
  assert np.isfinite(no_reference.niqe(half))  # the textured blocks suffice
  assert np.isfinite(no_reference.brisque(half))


def test_float_input_is_clamped_and_rounded_like_a_saved_image():
  img = EXPECTED["generated_rgb_101x197"]
  x = as_float(img) + np.float32(0.4 / 255)  # under half a level: same 8-bit image
  x[0, 0] = [1.7, -0.3, 0.5]
  y = img.copy()
  y[0, 0] = [255, 0, 128]
  assert no_reference.niqe(x) == no_reference.niqe(y)
  assert no_reference.brisque(x) == no_reference.brisque(y)


def test_opencv_half_cubic_sampling():
  # cv2 is not a test dependency (BRISQUE's parity covers it); check the sampling: a linear
  # ramp is reproduced exactly at the half-scale sample positions 2i + 0.5 away from borders,
  # and output sides round half to even as OpenCV's cvRound does.
  ramp = np.tile(np.arange(40, dtype=np.float64), (30, 1))
  half = no_reference._opencv_half_cubic(ramp)
  assert half.shape == (15, 20)
  np.testing.assert_allclose(half[:, 1:-1], np.broadcast_to(2 * np.arange(1, 19) + 0.5, (15, 18)),
                             atol=1e-12)
  assert no_reference._opencv_half_cubic(np.zeros((5, 7))).shape == (2, 4)


def test_degraded_image_scores_worse():
  clean = np.asarray(Image.open(shared_path("data/rain100h/clean/001.png")).convert("RGB"))
  x = as_float(clean)
  blurred = ndimage.gaussian_filter(x, sigma=(2.5, 2.5, 0))
  noisy = np.clip(blurred + np.random.default_rng(0).normal(0, 0.08, x.shape), 0, 1)
  for f in (no_reference.niqe, no_reference.brisque):
    sharp, bad = f(x), f(noisy.astype(np.float32))
    assert sharp + 5 < bad, f"{f.__name__}: clean {sharp:.3f} vs blurred+noisy {bad:.3f}"
