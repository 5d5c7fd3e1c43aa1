"""A bounded mutation fuzz of the image decoder path: whatever bytes arrive, decode_image returns
an (H, W, 3) float32 image or raises ImageReadError, quickly; no other exception, no hang.

Seeds are small valid files of every accepted format (and a few refused ones), made here; each
case applies one to three mutations (bit flips, truncation, a splice from another seed, a
header field overwritten with an extreme value, bytes inserted or deleted) drawn from a fixed
seed, so a failure names a case that can be replayed. 20,000 cases take about 5 s of CPU.
"""

import random
import signal
import time

import numpy as np
import pytest
from PIL import Image

from support import hostile
from sapnet_jax.data import imageio

CASES = 20_000
MAX_PIXELS = 1 << 20  # a header mutated to claim more is refused before decoding
CASE_SECONDS = 5  # far above the slowest case seen (under 0.1 s): a hang, not a slow machine


def _seeds() -> dict[str, bytes]:
  a = hostile.pixels(20, 28, seed=3)
  exif = Image.Exif()
  exif.update({0x0112: 6, 0x010F: "cam"})
  frames = [Image.fromarray(np.roll(a, i, axis=1)).convert("P") for i in range(3)]
  seeds = {
      "rgb.png": hostile.encoded(a, "PNG"),
      "palette.png": hostile.encoded(Image.fromarray(a).convert("P"), "PNG", transparency=3),
      "grey16.png": hostile.encoded(Image.fromarray(a[..., 0].astype(np.uint16) * 257), "PNG"),
      "rgba.png": hostile.encoded(np.dstack([a, a[..., :1]]), "PNG"),
      "base.jpg": hostile.encoded(a, "JPEG", quality=80),
      "progressive.jpg": hostile.encoded(a, "JPEG", progressive=True, quality=80),
      "exif.jpg": hostile.encoded(a, "JPEG", exif=exif),
      "rgb.bmp": hostile.encoded(a, "BMP"),
      "palette.bmp": hostile.encoded(Image.fromarray(a).convert("P"), "BMP"),
      "raw.tif": hostile.encoded(a, "TIFF"),
      "lzw.tif": hostile.encoded(a, "TIFF", compression="tiff_lzw"),
      "deflate.tif": hostile.encoded(a, "TIFF", compression="tiff_adobe_deflate"),
      "lossy.webp": hostile.encoded(a, "WEBP", quality=60),
      "lossless.webp": hostile.encoded(a, "WEBP", lossless=True),
      "rgb.ppm": hostile.encoded(a, "PPM"),
      "grey.pgm": hostile.encoded(Image.fromarray(a[..., 0]), "PPM"),
      "anim.gif": hostile.encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
  }
  for name, data in seeds.items():  # each seed is what it claims to be
    assert imageio.decode_image(data, name)[0].shape[2] == 3, name
  for fmt in ("ICO", "PCX", "TGA", "EPS"):  # refused formats: the refusal path is fuzzed too
    seeds[f"{fmt.lower()}.png"] = hostile.undocumented_format(fmt)
  return seeds


def _mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
  d = bytearray(data or b"\0")
  kind = rng.randrange(6)
  if kind == 0:  # bit flips
    for _ in range(rng.randint(1, 8)):
      i = rng.randrange(len(d))
      d[i] ^= 1 << rng.randrange(8)
  elif kind == 1:  # cut short
    d = d[:rng.randrange(1, max(2, len(d)))]
  elif kind == 2:  # a piece of another file spliced in
    other = rng.choice(others)
    i, j, n = rng.randrange(len(other)), rng.randrange(len(d)), rng.randint(1, 64)
    d[j:j + n] = other[i:i + n]
  elif kind == 3:  # a header field (size, count, offset) set to an extreme
    i, width = rng.randrange(min(64, len(d))), rng.choice([1, 2, 4])
    value = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                        rng.randrange(1 << 32)])
    d[i:i + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, rng.choice(["big",
                                                                                 "little"]))
  elif kind == 4:  # bytes inserted
    i = rng.randrange(len(d))
    d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
  else:  # bytes deleted
    i = rng.randrange(len(d))
    del d[i:i + rng.randint(1, 16)]
  return bytes(d)


class _Hang(Exception):
  pass


def _alarm(signum, frame):
  raise _Hang()


def test_mutated_images_decode_or_fail_cleanly_and_quickly():
  seeds = _seeds()
  rng, items, others = random.Random(20261206), list(seeds.items()), list(seeds.values())
  counts = {"decoded": 0, "refused": 0, "too large": 0, "unsupported": 0}
  slowest, start = 0.0, time.perf_counter()
  previous = signal.signal(signal.SIGALRM, _alarm)
  try:
    for case in range(CASES):
      name, data = items[case % len(items)]
      for _ in range(rng.choice([1, 1, 2, 3])):
        data = _mutate(data, rng, others)
      began = time.perf_counter()
      signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
      try:
        image, _ = imageio.decode_image(data, name, max_pixels=MAX_PIXELS)
      except imageio.ImageTooLargeError:
        counts["too large"] += 1
      except imageio.UnsupportedFormatError:
        counts["unsupported"] += 1
      except imageio.ImageReadError as e:
        assert "\n" not in str(e), (case, name)
        counts["refused"] += 1
      except _Hang:
        pytest.fail(f"case {case} (a mutated {name}) took over {CASE_SECONDS} s")
      else:
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3, case
        assert image.shape[0] * image.shape[1] <= MAX_PIXELS
        counts["decoded"] += 1
      finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
      slowest = max(slowest, time.perf_counter() - began)
  finally:
    signal.signal(signal.SIGALRM, previous)
  elapsed = time.perf_counter() - start
  print(f"{CASES} mutated files in {elapsed:.1f} s (slowest {slowest:.3f} s): {counts}")
  # Every outcome occurs, so the mutations reach past the header checks and the decoders.
  assert all(counts.values()), counts


def test_a_refused_format_is_named_from_its_header_only():
  # EPS would need Ghostscript to decode; it is named without running it.
  with pytest.raises(imageio.UnsupportedFormatError, match="EPS images are not accepted"):
    imageio.decode_image(hostile.undocumented_format("EPS"), "x.png")
  with pytest.raises(imageio.ImageReadError, match="not an image file"):
    imageio.decode_image(bytes(32), "zeros.png")
