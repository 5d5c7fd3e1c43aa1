"""A hostile corpus: files a careless or malicious user or client may send, made on the fly.

Every function returns the file's bytes (write them where you need them); `corpus()` gathers
one of each kind with what the readers must do with it, and `write_corpus` writes them to a
folder. Shared by the file-side tests (derain, imageio, the decoder fuzz), the API tests and the
load test, so that each hostile kind is made in one place. Nothing here needs extra packages.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# A name that would forge a line of a command's output if printed raw.
FORGING_NAME = "evil\nerror: fake.png"

# Formats Pillow decodes but the package does not document (see imageio.ACCEPTED_FORMATS).
UNDOCUMENTED = ("DDS", "EPS", "ICO", "IM", "MSP", "PCX", "QOI", "SGI", "SPIDER", "TGA", "XBM",
                "JPEG2000")


def pixels(height: int = 16, width: int = 24, seed: int = 0) -> np.ndarray:
  """A small random uint8 RGB image (random, so a de-rained copy differs from it)."""
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(image: np.ndarray | Image.Image, format: str, **options) -> bytes:
  """`image` saved by Pillow as `format` (bytes)."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  buffer = io.BytesIO()
  image.save(buffer, format=format, **options)
  return buffer.getvalue()


def png(height: int = 16, width: int = 24, seed: int = 0) -> bytes:
  """A valid small PNG: the normal client's request, and the seed of mutations."""
  return encoded(pixels(height, width, seed), "PNG")


def sized_pngs(count: int, start: int = 17) -> list[bytes]:
  """`count` tiny valid PNGs, each of a size no other has (start x start+1, then +1 each):
  a client choosing sizes to force a compile per request."""
  return [png(start + i, start + 1 + i, seed=i) for i in range(count)]


def png_with_big_exif(exif_bytes: int = 200_000, height: int = 16, width: int = 24) -> bytes:
  """A valid PNG carrying an EXIF block of about `exif_bytes` (a maker note): legal in PNG,
  too big for JPEG, whose EXIF segment holds at most 65,533 bytes."""
  exif = Image.Exif()
  exif[0x010F] = "hostile camera"  # Make, so a reader can tell the EXIF was kept
  exif[0x927C] = b"x" * exif_bytes  # MakerNote
  return encoded(pixels(height, width), "PNG", exif=exif)


def _jpeg_resized_header(data: bytes, height: int, width: int) -> bytes:
  # The frame header (SOF0..SOF2) holds height and width after its length and precision.
  at = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1,
                                                                                   0xC2))
  return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


def jpeg_decoding_to(side: int = 4800) -> bytes:
  """A corrupt JPEG of under 1 kB whose header claims side x side: libjpeg fills the missing
  data with grey, so it decodes (no error) to side x side pixels, 23 megapixels at 4800."""
  return _jpeg_resized_header(encoded(pixels(16, 16), "JPEG", quality=90), side, side)


@functools.lru_cache(maxsize=4)
def webp_decoding_to(side: int = 4800) -> bytes:
  """A valid lossless WebP of about 1 kB that decodes to side x side (one flat colour)."""
  return encoded(Image.new("RGB", (side, side), (90, 100, 110)), "WEBP", lossless=True)


@functools.lru_cache(maxsize=4)
def png_decoding_to(side: int = 4800) -> bytes:
  """A valid PNG of side x side black pixels, compressed to about side**2 / 340 bytes."""
  rows = (b"\x00" + bytes(3 * side)) * side
  return _png_chunks(side, side, zlib.compress(rows, 9))


def _chunk(tag: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_chunks(width: int, height: int, idat: bytes) -> bytes:
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
          + _chunk(b"IEND", b""))


@functools.lru_cache(maxsize=1)
def png_text_bomb(text_bytes: int = 20_000_000) -> bytes:
  """A small valid PNG with a compressed text chunk (zTXt) that inflates to `text_bytes`, about
  20 kB on disk: a metadata bomb, which Pillow refuses above 1 MB of text."""
  data = png()
  at = data.index(b"IDAT") - 4
  text = b"Comment\x00\x00" + zlib.compress(b"A" * text_bytes, 9)
  return data[:at] + _chunk(b"zTXt", text) + data[at:]


def png_header_bomb(side: int = 100_000) -> bytes:
  """A 60-byte PNG whose header claims side x side (10 gigapixels at 100,000): must be
  refused from the header, before any pixel is allocated."""
  return _png_chunks(side, side, zlib.compress(b"\x00" * 64))


def truncated(data: bytes, keep: float = 0.5) -> bytes:
  """The first `keep` fraction of `data` (a download cut short)."""
  return data[:max(1, int(len(data) * keep))]


def undocumented_format(format: str) -> bytes:
  """A small image in `format` (one of UNDOCUMENTED), written by Pillow: it can decode it, the
  package must refuse it (EPS would reach Ghostscript where it is installed)."""
  image = Image.fromarray(pixels(16, 16))
  if format in ("XBM", "MSP"):
    image = image.convert("1")
  elif format == "SPIDER":
    image = image.convert("F")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # Pillow deprecates writing IM
    return encoded(image, format)


def not_an_image() -> bytes:
  return b"hello, this is not an image\n"


def corpus() -> dict[str, tuple[bytes, str]]:
  """{file name: (bytes, what a reader must do)}, one file of each hostile kind. The outcomes:
  "ok" decodes (metadata may be dropped with a warning when re-encoded as JPEG); "big" decodes
  to 4800 x 4800 (23 megapixels) from a few kB, so only a pixel budget stops it, or claims 10
  gigapixels in its header, which Pillow's own limit refuses; "unsupported" is a format the
  package does not accept; "bad" is not a decodable image. File stems are unique, so the files
  can be de-rained into one folder."""
  return dict(_corpus())  # a copy: callers may change theirs


@functools.lru_cache(maxsize=1)
def _corpus() -> dict[str, tuple[bytes, str]]:
  found = {
      "big_exif.png": (png_with_big_exif(), "ok"),
      "corrupt_4800.jpg": (jpeg_decoding_to(4800), "big"),
      "flat_4800_webp.webp": (webp_decoding_to(4800), "big"),
      "flat_4800_png.png": (png_decoding_to(4800), "big"),
      "header_bomb.png": (png_header_bomb(), "big"),
      "cut_png.png": (truncated(png(64, 64)), "bad"),
      "cut_jpg.jpg": (truncated(encoded(pixels(64, 64), "JPEG"), 0.3), "bad"),
      "empty.png": (b"", "bad"),
      "notes.png": (not_an_image(), "bad"),
      "text_bomb.png": (png_text_bomb(), "bad"),
  }
  for format in UNDOCUMENTED:
    found[f"{format.lower()}_as.png"] = (undocumented_format(format), "unsupported")
  return found


def write_corpus(folder: Path, outcomes: tuple[str, ...] = ("ok", "big", "unsupported", "bad")
                 ) -> dict[str, str]:
  """Writes the corpus files whose outcome is in `outcomes` into `folder`; returns
  {file name: outcome}."""
  folder.mkdir(parents=True, exist_ok=True)
  written = {}
  for name, (data, outcome) in corpus().items():
    if outcome in outcomes:
      (folder / name).write_bytes(data)
      written[name] = outcome
  return written
