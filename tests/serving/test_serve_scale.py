"""Scale-aware de-raining through the HTTP API (sapnet_jax.serving.web_app) with a tiny random model:
`?scale=F|auto`, the server's default (`Limits.scale`, `serve --scale`), the `X-Scale`
header, refusals of bad values, degenerate sizes, and the command's `--scale` and `--stages`
checks. Starlette's in-process client; no real server is started."""

import dataclasses

import numpy as np
import pytest
from starlette.testclient import TestClient

from support.live_servers import pixels, png_bytes
from sapnet_jax import infer, serve
from sapnet_jax.data.imageio import to_uint8
from sapnet_jax.serving import web_app

RNG = np.random.default_rng(11)
# No buckets, so what the server computes is what infer.Derainer computes for the same image
# (padding to a bucket would change pixels near the edges); max_batch 1 keeps one program.
LIMITS = web_app.Limits(max_pixels=20_000, tile=48, overlap=8, max_batch=1, batch_wait_ms=0,
                        buckets=False)


def make_client(model, derainer, limits=LIMITS) -> TestClient:
  return TestClient(web_app.create_app(model, "tiny", limits=limits, derainer=derainer))


@pytest.fixture(scope="module")
def client(model, derainer):
  with make_client(model, derainer) as c:
    yield c


def noise(h: int, w: int) -> np.ndarray:
  return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def stripes(h: int = 64, w: int = 96) -> np.ndarray:
  """Vertical stripes about 19 pixels apart: wide "streaks" for which the tiny model's auto
  estimate is above 1 (checked where it matters), unlike noise."""
  x = np.arange(w)
  row = np.round(255 * (np.sin(x / 3.0) + 1) / 2).astype(np.uint8)
  return np.repeat(np.broadcast_to(row[None, :, None], (h, w, 1)), 3, axis=-1).copy()


def test_scale_2_derains_at_half_size_and_says_so(client, derainer):
  image = noise(40, 60)
  r = client.post("/v1/derain?scale=2", content=png_bytes(image))
  assert r.status_code == 200, r.text
  assert r.headers["X-Scale"] == "2"
  assert r.headers["X-Image-Size"] == "60x40"
  out = pixels(r.content)
  assert out.shape == image.shape
  # What the library gives at scale 2 for the same pixels, and not the full-size result.
  expected = to_uint8(derainer(image.astype(np.float32) / 255, tile=48, overlap=8, scale=2))
  assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
  full = client.post("/v1/derain?scale=1", content=png_bytes(image))
  assert full.status_code == 200 and full.headers["X-Scale"] == "1"
  assert np.abs(pixels(full.content).astype(int) - out.astype(int)).max() > 2


def test_fractional_scale_is_reported_as_asked(client):
  r = client.post("/v1/derain?scale=1.5", files={"image": ("photo.png", png_bytes(noise(30, 45)),
                                                           "image/png")})
  assert r.status_code == 200, r.text
  assert r.headers["X-Scale"] == "1.5"
  assert pixels(r.content).shape == (30, 45, 3)


def test_auto_picks_one_of_the_scales_and_reports_it(client, derainer):
  for image in (noise(40, 60), stripes()):
    r = client.post("/v1/derain?scale=auto", content=png_bytes(image))
    assert r.status_code == 200, r.text
    used = float(r.headers["X-Scale"])
    assert used in infer.SCALES
    assert used == derainer.estimate_scale(image.astype(np.float32) / 255)
    assert pixels(r.content).shape == image.shape
  assert client.post("/v1/derain?scale=AUTO", content=png_bytes(noise(8, 8))).status_code == 200


@pytest.mark.parametrize("value", ["0.5", "17", "nan", "abc", "", "0", "-2", "inf", "2,5"])
def test_bad_scales_are_refused_naming_scale(client, value):
  r = client.post(f"/v1/derain?scale={value}", content=png_bytes(noise(8, 8)))
  assert r.status_code == 400, (value, r.text)
  error = r.json()["error"]
  assert "scale" in error and "auto" in error, error
  assert "X-Scale" not in r.headers


def test_bad_scale_is_refused_before_the_body_is_read(client):
  # A body that is not an image: a 400 about the scale, not about the upload.
  r = client.post("/v1/derain?scale=0", content=b"not an image at all")
  assert r.status_code == 400 and r.json()["error"].startswith("query: scale"), r.text


def test_server_default_scale_applies_without_the_query(model, derainer):
  image = stripes()
  auto = derainer.estimate_scale(image.astype(np.float32) / 255)
  assert auto != 1  # else this test could not tell auto from full size
  for default, expected in (("auto", auto), (2, 2.0), ("1.5", 1.5)):
    limits = dataclasses.replace(LIMITS, scale=default)
    with make_client(model, derainer, limits) as c:
      assert c.get("/v1/models").json()["limits"]["scale"] == (
          "auto" if default == "auto" else float(default))
      r = c.post("/v1/derain", content=png_bytes(image))
      assert r.status_code == 200, r.text
      assert float(r.headers["X-Scale"]) == expected, default
      # The query still wins over the server's default.
      r = c.post("/v1/derain?scale=1", content=png_bytes(image))
      assert r.status_code == 200 and r.headers["X-Scale"] == "1"


def test_default_limits_scale_is_full_size(client):
  assert web_app.Limits().scale == 1
  assert client.get("/v1/models").json()["limits"]["scale"] == 1
  r = client.post("/v1/derain", content=png_bytes(noise(16, 16)))
  assert r.status_code == 200 and r.headers["X-Scale"] == "1"


@pytest.mark.parametrize("value", [0.5, 17, "nan", "abc", "", 0])
def test_bad_default_scale_raises_naming_the_flag(value):
  with pytest.raises(ValueError, match="--scale"):
    web_app.Limits(scale=value)


@pytest.mark.parametrize("h, w", [(1, 1), (1, 37), (29, 1), (2, 3)])
@pytest.mark.parametrize("scale", ["auto", "3", "16"])
def test_degenerate_sizes_keep_their_size(client, h, w, scale):
  r = client.post(f"/v1/derain?scale={scale}", content=png_bytes(noise(h, w)))
  assert r.status_code == 200, (h, w, scale, r.text)
  assert r.headers["X-Image-Size"] == f"{w}x{h}"
  assert float(r.headers["X-Scale"]) in (infer.SCALES if scale == "auto" else (float(scale),))
  assert pixels(r.content).shape == (h, w, 3)


@pytest.mark.parametrize("flags, flag", [
    (["--scale", "0.5"], "--scale"),
    (["--scale", "17"], "--scale"),
    (["--scale", "nan"], "--scale"),
    (["--scale", "big"], "--scale"),
    (["--stages", "0"], "--stages"),
    (["--stages", "7"], "--stages"),
    (["--stages", "two"], "--stages"),
])
def test_cli_refuses_bad_scale_and_stages(flags, flag, capsys):
  with pytest.raises(SystemExit) as exit_:
    serve.parse_args(flags)
  assert exit_.value.code == 2
  err = capsys.readouterr().err.splitlines()
  assert flag in err[-1] and "error" in err[-1], err
  assert sum(flag in line for line in err if "error" in line) == 1, err


def test_cli_scale_reaches_the_limits():
  args, limits = serve.parse_args([])
  assert limits.scale == 1 and args.stages is None
  args, limits = serve.parse_args(["--scale", "auto", "--stages", "3"])
  assert limits.scale == "auto" and args.stages == 3
  _, limits = serve.parse_args(["--scale", "2.5"])
  assert limits.scale == 2.5
