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
