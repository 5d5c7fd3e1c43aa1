"""Writers for the odd image files the tests feed to the readers (no extra dependencies)."""

import struct
import zlib

import numpy as np
from PIL import Image


def png16(path, array: np.ndarray) -> None:
  """Writes a 16-bit PNG (grey, RGB or RGBA) from a uint16 (H, W, C) array, by hand: Pillow
  cannot write 16-bit colour PNGs."""
  h, w, c = array.shape
  color_type = {1: 0, 3: 2, 4: 6}[c]
  rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

  def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

  header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def jpeg_with_orientation(path, array: np.ndarray, orientation: int) -> None:
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(array).save(path, quality=98, exif=exif)


def odd_images(folder, rng: np.random.Generator, extra: bool = False) -> dict[str, tuple[int, int]]:
  """Writes one file per odd kind the readers must take (grey, RGBA, 16-bit colour and grey,
  EXIF-rotated JPEG, 1x1, odd-width BMP; with `extra` also a palette GIF and a CMYK JPEG) into
  `folder`; returns {file name: the (height, width) it decodes to}."""
  folder.mkdir(exist_ok=True)
  rgb = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
  Image.fromarray(rgb[..., 0]).save(folder / "grey.png")
  Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(folder / "rgba.png")
  png16(folder / "deep.png", rng.integers(0, 65536, (21, 34, 3), dtype=np.uint16))
  png16(folder / "deepgrey.png", rng.integers(0, 65536, (21, 34, 1), dtype=np.uint16))
  jpeg_with_orientation(folder / "rotated.jpg", rgb, 6)  # stored 21x34, shown 34x21
  Image.fromarray(rgb[:1, :1]).save(folder / "dot.png")
  Image.fromarray(rgb[:, :33]).save(folder / "odd.bmp")
  shapes = {"grey.png": (21, 34), "rgba.png": (21, 34), "deep.png": (21, 34),
            "deepgrey.png": (21, 34), "rotated.jpg": (34, 21), "dot.png": (1, 1),
            "odd.bmp": (21, 33)}
  if extra:
    Image.fromarray(rgb).convert("P").save(folder / "palette.gif")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    shapes.update({"palette.gif": (21, 34), "cmyk.jpg": (21, 34)})
  return shapes
