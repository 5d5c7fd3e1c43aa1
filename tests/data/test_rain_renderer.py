"""The rain synthesizer: deterministic, vectorized, and its parameters do what they say."""

import dataclasses
import os

import numpy as np
import pytest

from support.paths import shared_path
from sapnet_jax.data import demo, imageio, rain_renderer

CLEAN = np.random.default_rng(1).random((64, 80, 3)).astype(np.float32) * 0.8


def test_same_seed_same_rain_other_seed_other_rain():
  a, pa = rain_renderer.add_rain(CLEAN, seed=5)
  b, pb = rain_renderer.add_rain(CLEAN, seed=5)
  c, _ = rain_renderer.add_rain(CLEAN, seed=6)
  np.testing.assert_array_equal(a, b)
  assert pa.to_dict() == pb.to_dict()
  assert np.abs(a - c).mean() > 1e-3


def test_rain_only_brightens_without_haze():
  style = rain_renderer.RainStyle(haze_probability=0.0)
  for seed in range(4):
    rainy, params = rain_renderer.add_rain(CLEAN, seed, style)
    assert params.haze == 0.0
    assert rainy.dtype == np.float32 and rainy.shape == CLEAN.shape
    assert np.all(rainy >= CLEAN - 1e-6) and rainy.max() <= 1.0
    assert (rainy - CLEAN).max() > 0.2  # visible streaks


def test_haze_veils_towards_the_airlight():
  style = rain_renderer.RainStyle(density=(0.0, 0.0), haze_probability=1.0, haze=(0.3, 0.3),
                          airlight=(0.9, 0.9))
  rainy, params = rain_renderer.add_rain(CLEAN, 0, style)
  np.testing.assert_allclose(rainy, CLEAN * 0.7 + 0.9 * 0.3, atol=1e-6)
  assert params.haze == pytest.approx(0.3)


@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_streaks_follow_their_angle(angle):
  # angle is measured from vertical: 0 = vertical streaks, 90 = horizontal ones.
  style = rain_renderer.RainStyle(layers=(1, 1), angle_deg=(angle, angle), angle_spread_deg=0.0,
                          length=(30, 30), width=(1.0, 1.0), blur=(0.0, 0.0))
  params = rain_renderer.sample_params(np.random.default_rng(0), style)
  rain = rain_renderer.rain_layer((128, 128), params, np.random.default_rng(0))
  vertical_change = np.abs(np.diff(rain, axis=0)).mean()
  horizontal_change = np.abs(np.diff(rain, axis=1)).mean()
  along, across = ((vertical_change, horizontal_change) if angle == 0
                   else (horizontal_change, vertical_change))
  assert along < 0.4 * across


def test_density_and_brightness_control_the_amount_of_rain():
  def mean_rain(density, brightness):
    style = rain_renderer.RainStyle(layers=(1, 1), density=(density, density),
                            brightness=(brightness, brightness))
    params = rain_renderer.sample_params(np.random.default_rng(3), style)
    return rain_renderer.rain_layer((96, 96), params, np.random.default_rng(3)).mean()
  assert mean_rain(0.002, 0.5) < mean_rain(0.008, 0.5) < mean_rain(0.008, 0.9)
  assert mean_rain(0.0, 0.9) == 0.0


def test_kernels_peak_at_one_without_defocus():
  params = rain_renderer.sample_params(np.random.default_rng(0), rain_renderer.RainStyle(blur=(0.0, 0.0)))
  kernels = rain_renderer.streak_kernels(params)
  assert kernels.shape[1] == kernels.shape[2] and kernels.shape[1] % 2 == 1
  np.testing.assert_allclose(kernels.max(axis=(1, 2)), 1.0, atol=1e-6)


def test_added_rain_is_clean_plus_rain_clipped():
  # A bright clean image: the screen blend shrinks rain there, adding does not until 1.
  clean = np.full((48, 48, 3), 0.7, np.float32)
  add = rain_renderer.RainStyle(haze_probability=0.0, blend="add", density=(0.01, 0.01))
  screen = dataclasses.replace(add, blend="screen")
  added, _ = rain_renderer.add_rain(clean, 3, add)
  screened, _ = rain_renderer.add_rain(clean, 3, screen)
  rng = np.random.default_rng(3)  # add_rain's draws: the parameters, then the layer
  rain = rain_renderer.rain_layer(clean.shape[:2], rain_renderer.sample_params(rng, add), rng)
  np.testing.assert_allclose(added, np.clip(clean + rain[..., None], 0, 1), atol=1e-6)
  np.testing.assert_allclose(screened, 1 - (1 - clean) * (1 - rain[..., None]), atol=1e-6)
  assert added.max() == 1.0 and (added - clean).mean() > (screened - clean).mean()


def test_rain100h_style_matches_rain100h_residuals():
  # The style's calibration (rain_renderer.RAIN100H): drawn over Rain100H's own clean images, the
  # median over images of the residual (rainy - clean) quantiles is within 0.05 of Rain100H's.
  folder = shared_path("data/rain100h")
  names = sorted(os.listdir(folder / "clean"))[:40:2]
  ours, theirs = [], []
  for seed, name in enumerate(names):
    clean = imageio.read_image(folder / "clean" / name)
    rainy = imageio.read_image(folder / "rainy" / name)
    drawn, _ = rain_renderer.add_rain(clean, seed, rain_renderer.RAIN100H)
    ours.append(np.percentile((drawn - clean).mean(-1), (10, 50, 90)))
    theirs.append(np.percentile((rainy - clean).mean(-1), (10, 50, 90)))
  np.testing.assert_allclose(np.median(ours, 0), np.median(theirs, 0), atol=0.05)
  assert np.median(theirs, 0)[1] > 0.1  # heavy rain: not two near-empty residuals agreeing


def test_grid_cli_draws_the_chosen_style(tmp_path):
  from PIL import Image
  grids = {}
  for style in ("light", "rain100h"):
    out = tmp_path / f"{style}.png"
    assert demo.main(["--grid", str(out), "--count", "2", "--cell", "64", "--style", style]) == 0
    grids[style] = np.asarray(Image.open(out).convert("RGB"), np.float32)
    assert grids[style].shape == (64 + 8, 2 * (2 * 64 + 12), 3)
  # Left cell rainy, right cell clean: Rain100H's dense rain brightens far more than light rain.
  gain = {k: g[4:68, 4:68].mean() - g[4:68, 72:136].mean() for k, g in grids.items()}
  assert gain["rain100h"] > gain["light"] + 10, gain
  with pytest.raises(SystemExit):
    demo.main(["--grid", str(tmp_path / "x.png"), "--style", "drizzle"])


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="RainStyle.length"):
    rain_renderer.RainStyle(length=(40.0, 10.0))
  with pytest.raises(ValueError, match="RainStyle.blend"):
    rain_renderer.RainStyle(blend="multiply")
  with pytest.raises(ValueError, match="expected an \\(H, W, 3\\) image"):
    rain_renderer.add_rain(np.zeros((4, 4)), 0)


def test_uint8_input_matches_float_input():
  u8 = np.round(CLEAN * 255).astype(np.uint8)
  a, _ = rain_renderer.add_rain(u8, 2)
  b, _ = rain_renderer.add_rain(u8.astype(np.float32) / 255, 2)
  np.testing.assert_array_equal(a, b)


def test_grid_lays_out_pairs():
  # Three distinct pairs of 20x24 images, two pairs a row: each cell holds the centre 16x16 crop
  # of its own image at full resolution, rainy left of clean; the empty fourth slot stays white.
  rng = np.random.default_rng(7)
  pairs = [(rng.random((20, 24, 3)), rng.random((20, 24, 3))) for _ in range(3)]
  out = demo.grid(pairs, cell=16, gap=2)
  assert out.dtype == np.uint8
  assert out.shape == (2 * (16 + 2) + 2, 2 * 2 * 16 + 5 * 2 + 2, 3)
  for i, (rainy, clean) in enumerate(pairs):
    row, col = divmod(i, 2)
    y, x = 2 + row * 18, 2 + col * 38
    np.testing.assert_array_equal(out[y:y + 16, x:x + 16], imageio.to_uint8(rainy[2:18, 4:20]))
    np.testing.assert_array_equal(out[y:y + 16, x + 18:x + 34],
                                  imageio.to_uint8(clean[2:18, 4:20]))
  assert (out[20:36, 40:74] == 255).all()
