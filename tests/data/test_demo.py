"""The embedded demo dataset: held-out scenes, identical pairs on every build, streaks only
(Rain100H-like rain in the *_rain100h configs)."""

import numpy as np

from sapnet_jax.data import demo, imageio, prepare, rain_renderer, synthetic_builder

CLEAN = np.random.default_rng(1).random((64, 80, 3)).astype(np.float32) * 0.8


def _orientation(image):
  """(angle of the dominant gradient in degrees, coherence in [0, 1]) of the structure tensor
  summed over the image: coherence is ~0 for noise, near 1 for parallel streaks."""
  gy, gx = np.gradient(image)
  jxx, jyy, jxy = np.sum(gx * gx), np.sum(gy * gy), np.sum(gx * gy)
  angle = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))
  return angle, np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)


def _check_demo_rain(record):
  """What the demo promises of a shipped pair: the rainy image is rain_renderer.add_rain of the stored
  clean one with the pair's own seed and style (`synthetic_builder.pair_seed`, DRAW_STYLES, no
  veil), and it looks like it: grey streaks screen-blended over the photo, falling the way synth
  drew them. The last two hold without synth's code, so a broken synthesizer fails here too."""
  name = record["name"].decode() if isinstance(record["name"], bytes) else str(record["name"])
  item = {i.name: i for s in synthetic_builder.demo_items(None).values() for i in s}[name]
  style = synthetic_builder.DRAW_STYLES[item.draw % len(synthetic_builder.DRAW_STYLES)]
  seed = synthetic_builder.pair_seed(synthetic_builder.SEED, item.source, item.draw)
  want, params = rain_renderer.add_rain(record["clean"], seed, style)
  np.testing.assert_array_equal(record["rainy"], imageio.to_uint8(want), err_msg=name)
  assert params.haze == 0.0, name
  clean, diff = record["clean"].astype(float), record["rainy"].astype(float) - record["clean"]
  # Screen blend 1 - (1 - c)(1 - r) never darkens, and the clean pixels are the ones it blended.
  assert diff.min() >= 0, (name, diff.min())
  # One grey rain layer: (rainy - clean) / (255 - clean) is the same r in R, G and B (where the
  # denominator keeps 8-bit rounding under 0.03). Coloured noise or a colour shift fails this.
  dark = (clean <= 200).all(axis=-1)
  implied = diff[dark] / (255 - clean[dark])
  assert np.quantile(implied.max(axis=-1) - implied.min(axis=-1), 0.99) < 0.03, name
  # Streaks: the residual's gradients run across the drawn fall direction (synth's angle from
  # vertical, layers weighted by density x brightness; up to 11 degrees off measured, with the
  # photo's own edges and the layers' spread); white noise has coherence ~0.004.
  angle, coherence = _orientation(diff.mean(axis=-1))
  weight = params.density * params.brightness
  fall = float(np.sum(weight * params.angle_deg) / np.sum(weight))
  assert coherence > 0.5 and abs(angle + fall) < 15, (name, angle, fall, coherence)
  assert np.mean(diff.max(axis=-1) > 2) > 0.01, name  # it rains on more than a few drops


def test_demo_items_hold_out_whole_scenes(tmp_path):
  for n in range(12):
    imageio.write_png(tmp_path / f"p{n:02d}.png", CLEAN)
  for clean_dir in (None, str(tmp_path)):
    items = synthetic_builder.demo_items(clean_dir)
    train = {i.source for i in items["train"]}
    held = {i.source for i in items["validation"]}
    assert train and held and not train & held
    assert "shipped/chelsea.jpg" in held
  items = synthetic_builder.demo_items(str(tmp_path))
  assert {i.source for i in items["validation"]} == {"shipped/chelsea.jpg", "p09.png"}
  assert len(items["train"]) == 2 * (3 + 11) and len(items["validation"]) == 2


def test_demo_dataset_is_the_same_synth_rain_on_every_build(tmp_path):
  specs = [demo.build_demo(str(tmp_path / d)) for d in ("a", "b")]
  assert specs[0].name == "synthetic_rain/shipped"
  sources = []
  for spec in specs:
    b = prepare.builder(spec.name, spec.data_dir)
    assert b.info.splits["train"].num_examples == 48
    assert b.info.splits["validation"].num_examples == 3
    sources.append(b.as_data_source("validation"))
  for i in range(3):
    first, second = sources[0][i], sources[1][i]
    assert first["name"] == second["name"]
    np.testing.assert_array_equal(first["rainy"], second["rainy"])
    np.testing.assert_array_equal(first["clean"], second["clean"])
    _check_demo_rain(first)
  train = b.as_data_source("train")
  for i in range(0, len(train), 4):  # 12 of the 48 training pairs, from all three photos
    _check_demo_rain(train[i])


def test_rain100h_configs_draw_the_same_scenes_with_rain100h_rain(tmp_path):
  b = prepare.build("synthetic_rain/shipped_rain100h", data_dir=str(tmp_path))
  assert b.info.splits["train"].num_examples == 48
  source = b.as_data_source("validation")
  assert [source[i]["name"].decode() for i in range(3)] == [
      i.name for i in synthetic_builder.demo_items(None)["validation"]]
  train = b.as_data_source("train")
  medians = []
  for i in range(len(train)):
    diff = train[i]["rainy"].astype(int) - train[i]["clean"]
    assert diff.min() >= 0  # added to the stored clean pixels: never darkens
    medians.append(np.median(diff))
  # Rain100H's median residual is 0.19 of full scale (rain_renderer.RAIN100H); the demo's own styles
  # stay far below that.
  assert np.median(medians) > 0.1 * 255, np.median(medians)
  assert "synthetic_rain/pool_rain100h" in prepare.known_datasets()
  assert "synthetic_rain/pool_rain100h" not in prepare.NO_MANUAL_DIR
