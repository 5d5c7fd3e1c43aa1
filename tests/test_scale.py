"""Scale-aware inference: the working scale, `auto`, the rain-layer transfer, the stages dial."""

import argparse
import json
import sys

import numpy as np
import pytest
from flax import nnx

from support.paths import REPO, shared_path
from sapnet_jax import infer, pretrained
from sapnet_jax.data import rain_renderer
from sapnet_jax.data.imageio import read_image
from sapnet_jax.models import msnet, pdu
from sapnet_jax.utils import flags

BENCHMARKS = REPO / "benchmarks"
LOCAL = pdu.PDUConfig(attention="none", dilation=False, stages=1, num_blocks=1, channels=4)


@pytest.fixture(scope="module")
def local_derainer():
  return infer.Derainer(pdu.PDUNet(LOCAL, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def sapnet():
  return infer.Derainer(pretrained.load())


def psnr(a, b):
  return 10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2))


@pytest.mark.parametrize("text,expected", [("1", 1.0), ("2.5", 2.5), ("16", 16.0),
                                           ("auto", "auto"), (" AUTO ", "auto")])
def test_scale_values(text, expected):
  assert infer.parse_scale(text) == expected
  assert flags.scale(text) == expected  # the flag's own copy of the rule agrees


@pytest.mark.parametrize("text", ["0.5", "0", "-2", "16.5", "nan", "inf", "", "abc", "1e400"])
def test_bad_scales_name_the_accepted_values(text):
  with pytest.raises(ValueError, match="'auto' or a number from 1 to 16"):
    infer.parse_scale(text)
  with pytest.raises(argparse.ArgumentTypeError, match="'auto' or a number from 1 to 16"):
    flags.scale(text)


def test_a_zero_rain_layer_gives_back_the_photo_exactly():
  image = np.random.default_rng(0).random((37, 53, 3), dtype=np.float32)
  small = infer.downscale(image, 3)
  assert small.shape == (12, 18, 3)
  np.testing.assert_array_equal(infer.transfer_rain(image, small, small), image)


def test_transfer_removes_a_smooth_layer_exactly_where_it_was():
  # A rain layer that is smooth at the working scale comes back at full size almost exactly.
  yy, xx = np.mgrid[0:120, 0:90] / 120.0
  layer = (0.2 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)).astype(np.float32)[..., None]
  clean = np.full((120, 90, 3), 0.4, np.float32)
  small = infer.downscale(clean + layer, 2)
  out = infer.transfer_rain(clean + layer, small, small - infer.downscale(layer * np.ones(3), 2))
  assert np.abs(out - clean)[4:-4, 4:-4].max() < 2e-3


@pytest.mark.parametrize("scale", [1.5, 2.0, 3.0])
def test_scaled_tiles_equal_the_scaled_whole_image_for_local_networks(local_derainer, scale):
  # Tiling happens at the working size and resampling on whole images: no seams from either.
  overlap = 4 * LOCAL.receptive_radius + 4
  image = np.random.default_rng(1).random((157, 131, 3), dtype=np.float32)
  whole = local_derainer(image, tile=None, scale=scale)
  tiled = local_derainer(image, tile=overlap + 16, overlap=overlap, scale=scale)
  assert whole.shape == image.shape
  np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 9, 3), (7, 1, 3), (2, 3, 3), (5, 300, 3),
                                   (33, 47, 3)])
@pytest.mark.parametrize("scale", [3.0, 16.0, "auto"])
def test_any_size_at_any_scale(local_derainer, shape, scale):
  image = np.random.default_rng(2).random(shape, dtype=np.float32)
  out = local_derainer(image, tile=64, overlap=16, scale=scale)
  assert out.shape == shape and np.isfinite(out).all()


def test_thumbnails_are_one_shape_for_every_photo():
  shapes = set()
  for hw in [(1, 1), (3, 700), (481, 321), (900, 1600)]:
    crops, index = infer.thumbnails(np.zeros((*hw, 3), np.float32))
    shapes.add(crops.shape)
    assert len(index) == len(crops)
  assert shapes == {(len(infer.SCALES) * infer.THUMB_GRID**2, infer.THUMB, infer.THUMB, 3)}


def test_choose_scale_follows_where_the_removed_rain_levels_off():
  coherence = np.full(5, 0.85)
  def choose(energy):
    return infer.choose_scale(np.array(energy, np.float64), coherence)
  assert choose([1.0, 0.5, 0.2, 0.1, 0.1]) == 1.0  # found at full size, less and less after
  assert choose([1.0, 1.0, 1.0, 1.0, 1.0]) == 1.0  # the same everywhere: keep full size
  assert choose([0.1, 0.5, 0.85, 1.0, 0.9]) == 3.0
  assert choose([0.1, 0.2, 0.4, 0.8, 1.0]) == 4.0
  assert choose([0.0, 0.0, 0.0, 0.0, 0.0]) == 1.0  # no rain found


def test_the_shipped_regression_is_what_the_calibration_rows_fit():
  # infer.SCALE_WEIGHTS must be reproducible from the committed calibration results.
  rows = json.loads((BENCHMARKS / "results" / "scale_calibration.json").read_text())["rows"]
  sys.path.insert(0, str(BENCHMARKS))
  try:
    import scale_bench
  finally:
    sys.path.remove(str(BENCHMARKS))
  np.testing.assert_allclose(scale_bench.ridge(rows, 1.0), infer.SCALE_WEIGHTS, atol=6e-4)


def test_auto_chooses_full_size_for_rain100h(sapnet):
  rainy = shared_path("data/rain100h/rainy")
  files = sorted(rainy.iterdir())[:3]
  assert [sapnet.estimate_scale(read_image(f)) for f in files] == [1.0, 1.0, 1.0]


def _photo(name):
  return read_image(shared_path("data/clean_pool") / name)[:384, :384]


# Held out from auto's calibration photos (benchmarks/scale_bench.py, CALIBRATION).
PHOTOS = ["kodak24_kodim04.jpg", "mcmaster_12.jpg", "sunhays80_brewery_sun_admdlkpsznknrcqi.jpg"]


def test_auto_chooses_about_a_third_for_rain_three_times_wider(sapnet):
  chosen = []
  for i, name in enumerate(PHOTOS):
    rainy, _ = rain_renderer.add_rain(_photo(name), seed=30 + i, style=rain_renderer.magnified(rain_renderer.RAIN100H, 3))
    chosen.append(sapnet.estimate_scale(rainy))
  # Per photo the choice is noisy (docs/scale.md, What auto gets wrong): none stays at full
  # size, and the middle choice is within one step of 3.
  assert min(chosen) > 1 and 2 <= sorted(chosen)[1] <= 4, chosen


def test_auto_chooses_full_size_for_training_scale_rain(sapnet):
  chosen = []
  for i, name in enumerate(PHOTOS):
    rainy, _ = rain_renderer.add_rain(_photo(name), seed=10 + i, style=rain_renderer.RAIN100H)
    chosen.append(sapnet.estimate_scale(rainy))
  assert chosen == [1.0] * len(PHOTOS)


def test_a_rain_free_photo_passes_through_auto_nearly_unchanged(sapnet):
  # The bound: over 30 dB PSNR against the photo itself (a JPEG at quality 90 is about 35-40
  # dB), or no more changed than at full size, where the network itself alters some textured
  # photos (mcmaster_12: 24.7 dB at full size, and auto keeps full size there).
  for name in PHOTOS:
    clean = _photo(name)
    auto, native = psnr(sapnet(clean, scale="auto"), clean), psnr(sapnet(clean), clean)
    assert auto > min(30.0, native - 0.5), (name, auto, native)


def test_scale_three_rain_is_removed_far_better_than_at_full_size(sapnet):
  clean = _photo(PHOTOS[0])
  rainy, _ = rain_renderer.add_rain(clean, seed=5, style=rain_renderer.magnified(rain_renderer.RAIN100H, 3))
  native, scaled = psnr(sapnet(rainy), clean), psnr(sapnet(rainy, scale=3), clean)
  assert scaled > native + 3, (native, scaled)


def test_stages_equal_the_stage_outputs_of_a_full_pass():
  cfg = pdu.PDUConfig(channels=4, reduction=2, stages=4, num_blocks=2)
  model = pdu.PDUNet(cfg, rngs=nnx.Rngs(0))
  image = np.random.default_rng(3).random((1, 24, 20, 3), dtype=np.float32)
  _, stages = model(image, return_stages=True)
  for n in range(1, 5):
    out = np.asarray(infer.Derainer(model, impl=None, stages=n).batch(image))
    np.testing.assert_allclose(out, np.asarray(stages[n - 1]), atol=1e-5)


def test_stages_outside_the_model_are_refused():
  model = pdu.PDUNet(pdu.PDUConfig(channels=4, reduction=2, stages=3, num_blocks=1),
                     rngs=nnx.Rngs(0))
  for bad in (0, 4):
    with pytest.raises(ValueError, match="stages must be from 1 to 3"):
      infer.Derainer(model, stages=bad)
  small = msnet.MSNetConfig(units=1, channels=4)
  with pytest.raises(ValueError, match="only the progressive networks"):
    infer.Derainer(msnet.MSNet(small, rngs=nnx.Rngs(0)), stages=2)
