"""Reading every kind of image file as RGB float, and writing PNGs atomically."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from support import hostile
from support.imagefiles import jpeg_with_orientation, png16
from sapnet_jax.data import imageio

RNG = np.random.default_rng(0)


def _rgb8(h=9, w=14):
  return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_exact(tmp_path):
  a = _rgb8()
  Image.fromarray(a).save(tmp_path / "a.png")
  got = imageio.read_image(tmp_path / "a.png")
  assert got.dtype == np.float32 and got.shape == a.shape
  np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8), a)


def test_greyscale_is_replicated(tmp_path):
  g = RNG.integers(0, 256, (7, 5), dtype=np.uint8)
  Image.fromarray(g).save(tmp_path / "g.png")
  got = imageio.read_image(tmp_path / "g.png")
  assert got.shape == (7, 5, 3)
  for ch in range(3):
    np.testing.assert_allclose(got[..., ch], g / 255.0, atol=1e-7)


def test_rgba_drops_alpha(tmp_path):
  a = np.concatenate([_rgb8(), RNG.integers(0, 256, (9, 14, 1), dtype=np.uint8)], axis=-1)
  Image.fromarray(a).save(tmp_path / "a.png")
  got = imageio.read_image(tmp_path / "a.png")
  np.testing.assert_allclose(got, a[..., :3] / 255.0, atol=1e-7)


def test_palette_with_transparency(tmp_path):
  im = Image.fromarray(_rgb8()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
  im.info["transparency"] = 0
  im.save(tmp_path / "p.png", transparency=0)
  got = imageio.read_image(tmp_path / "p.png")
  np.testing.assert_allclose(got, np.asarray(im.convert("RGB")) / 255.0, atol=1e-7)


def test_sixteen_bit_grey_keeps_precision(tmp_path):
  g = RNG.integers(0, 65536, (6, 8, 1), dtype=np.uint16)
  png16(tmp_path / "g16.png", g)
  got = imageio.read_image(tmp_path / "g16.png")
  np.testing.assert_allclose(got[..., 1], g[..., 0] / 65535.0, atol=1e-6)


@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_colour_within_one_level(tmp_path, channels):
  a = RNG.integers(0, 65536, (6, 8, channels), dtype=np.uint16)
  png16(tmp_path / "c16.png", a)
  got = imageio.read_image(tmp_path / "c16.png")
  assert got.shape == (6, 8, 3)
  assert np.abs(got - a[..., :3] / 65535.0).max() <= 1.0 / 255.0


@pytest.mark.parametrize("orientation,expected", [(1, lambda a: a), (3, lambda a: a[::-1, ::-1]),
                                                  (6, lambda a: np.rot90(a, -1)),
                                                  (8, lambda a: np.rot90(a, 1))])
def test_jpeg_exif_orientation_applied(tmp_path, orientation, expected):
  a = np.zeros((40, 64, 3), np.uint8)
  a[:20, :32] = (255, 0, 0)  # red top-left quadrant marks the orientation
  jpeg_with_orientation(tmp_path / "o.jpg", a, orientation)
  got = imageio.read_image(tmp_path / "o.jpg")
  want = expected(a) / 255.0
  assert got.shape == want.shape
  assert np.abs(got - want).mean() < 0.02


def test_cmyk_jpeg(tmp_path):
  im = Image.fromarray(_rgb8(16, 16)).convert("CMYK")
  im.save(tmp_path / "c.jpg", quality=95)
  got = imageio.read_image(tmp_path / "c.jpg")
  assert got.shape == (16, 16, 3)
  assert np.abs(got - np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB")) / 255.0).max() < 1e-6


def test_tiny_image(tmp_path):
  Image.fromarray(np.array([[[10, 20, 30]]], np.uint8)).save(tmp_path / "t.bmp")
  np.testing.assert_allclose(imageio.read_image(tmp_path / "t.bmp"), [[[10 / 255, 20 / 255, 30 / 255]]],
                             atol=1e-7)


def test_errors_name_the_file(tmp_path):
  (tmp_path / "notes.png").write_text("not an image")
  with pytest.raises(imageio.ImageReadError, match=r"notes\.png: not an image"):
    imageio.read_image(tmp_path / "notes.png")
  Image.fromarray(_rgb8(64, 64)).save(tmp_path / "cut.png")
  data = (tmp_path / "cut.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  with pytest.raises(imageio.ImageReadError, match=r"cut\.png: cannot decode"):
    imageio.read_image(tmp_path / "cut.png")
  with pytest.raises(imageio.ImageReadError, match=r"missing\.png: no such file"):
    imageio.read_image(tmp_path / "missing.png")


def test_write_png_rounds_and_clamps(tmp_path):
  x = np.array([[[-0.2, 0.6 / 255, 1.4 / 255], [0.998, 1.0, 3.0]]], np.float32)
  imageio.write_png(tmp_path / "o.png", x)
  got = np.asarray(Image.open(tmp_path / "o.png"))
  assert got.dtype == np.uint8 and Image.open(tmp_path / "o.png").mode == "RGB"
  np.testing.assert_array_equal(got, [[[0, 1, 1], [254, 255, 255]]])


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
  target = tmp_path / "o.png"
  imageio.write_png(target, np.zeros((4, 4, 3), np.float32))
  before = target.read_bytes()

  def broken_save(self, fp, *args, **kwargs):
    fp.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(Image.Image, "save", broken_save)
  with pytest.raises(OSError, match="disk full"):
    imageio.write_png(target, np.ones((4, 4, 3), np.float32))
  assert target.read_bytes() == before
  assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


@pytest.mark.parametrize("fmt", hostile.UNDOCUMENTED)
def test_only_documented_formats_are_decoded(fmt):
  data = hostile.undocumented_format(fmt)
  with pytest.raises(imageio.UnsupportedFormatError,
                     match=rf"^up\.png: {fmt} images are not accepted; send PNG, JPEG"):
    imageio.decode_image(data, "up.png")


def test_every_documented_format_is_still_decoded():
  a = _rgb8()
  for fmt in ("PNG", "BMP", "TIFF", "PPM", "GIF", "JPEG", "WEBP", "MPO"):
    got, _ = imageio.decode_image(hostile.encoded(a, fmt), fmt)
    assert got.shape == a.shape and got.dtype == np.float32, fmt


def test_pixel_budget_is_checked_from_the_header():
  # Each decodes to 4800 x 4800 from at most 68 kB; refused before a pixel is decoded, so fast.
  for data in (hostile.jpeg_decoding_to(4800), hostile.webp_decoding_to(4800),
               hostile.png_decoding_to(4800)):
    start = time.perf_counter()
    with pytest.raises(imageio.ImageTooLargeError,
                       match=r"^x: 4800x4800 is 23,040,000 pixels, more than the 4,000,000") as e:
      imageio.decode_image(data, "x", max_pixels=4_000_000)
    assert (e.value.pixels, e.value.limit) == (23_040_000, 4_000_000)
    assert time.perf_counter() - start < 0.5
  assert imageio.decode_image(hostile.png(16, 24), "x", max_pixels=16 * 24)[0].shape == (16, 24, 3)


def test_metadata_a_format_cannot_hold_is_dropped_and_the_pixels_written():
  _, metadata = imageio.decode_image(hostile.png_with_big_exif(), "big")
  assert len(metadata.exif) > 200_000
  a = _rgb8()
  with pytest.warns(imageio.MetadataDroppedWarning, match=r"EXIF metadata \(200,\d+ bytes\) "
                    r"dropped: JPEG cannot hold it"):
    data = imageio.encode_image(a, "jpg", metadata=metadata)
  notes = []
  assert imageio.encode_image(a, "jpg", metadata=metadata, notes=notes) == data
  assert len(notes) == 1 and notes[0].startswith("EXIF metadata")
  with Image.open(io.BytesIO(data)) as im:
    assert im.format == "JPEG" and im.size == (14, 9) and not im.info.get("exif")
  kept = imageio.encode_image(a, "png", metadata=metadata, notes=notes)  # PNG holds it
  assert len(notes) == 1 and Image.open(io.BytesIO(kept)).getexif()[0x010F] == "hostile camera"


def test_printed_names_cannot_forge_a_line():
  with pytest.raises(imageio.ImageReadError) as e:
    imageio.decode_image(hostile.not_an_image(), hostile.FORGING_NAME)
  assert str(e.value) == "evil\\nerror: fake.png: not an image file (format not recognized)"


def test_accepted_formats_are_those_of_the_listed_extensions():
  # Folders are listed by extension, files decoded by content: the two lists must agree.
  by_extension = Image.registered_extensions()
  assert {by_extension[e] for e in imageio.IMAGE_EXTENSIONS} == set(imageio.ACCEPTED_FORMATS)
