"""Robust reading and atomic writing of image files.

Reading gives RGB float32 in [0, 1] whatever the file holds: greyscale is replicated to three
channels, alpha is dropped, palettes and CMYK are converted, EXIF orientation is applied,
16-bit greyscale keeps its precision (Pillow decodes 16-bit colour PNGs to 8 bits). Paths may
be local or URIs (gs://...): files are read and folders listed through `sapnet_jax.fileio`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sapnet_jax import fileio
from sapnet_jax.fileio import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".pnm", ".gif")


class ImageReadError(ValueError):
  """An input file that is missing, not an image, or cannot be decoded."""


def is_image_name(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def natural_key(name: str) -> tuple:
  """Sort key for natural order: rain-2 before rain-10, whatever the zero padding (names equal
  but for padding then sort by the text, so the order is total)."""
  parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))
  return parts + ((1, 0, name),)


def image_names(folder: str | os.PathLike, recursive: bool = False) -> list[str]:
  """Image files (by extension) in `folder`, or under it with `recursive`, as paths relative
  to it with `/` separators, in natural order; hidden files and folders skipped. A missing
  folder has none."""
  folder = os.fspath(folder)
  if fileio.is_remote(folder):
    found = _remote_image_names(folder, "", recursive)
  elif recursive:
    found = []
    for root, dirs, files in os.walk(folder):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      rel = os.path.relpath(root, folder)
      for f in files:
        if not f.startswith(".") and is_image_name(f):
          found.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
  elif os.path.isdir(folder):
    found = [f for f in os.listdir(folder) if not f.startswith(".") and is_image_name(f)
             and os.path.isfile(os.path.join(folder, f))]
  else:
    found = []
  return sorted(found, key=natural_key)


def _remote_image_names(folder: str, prefix: str, recursive: bool) -> list[str]:
  # Buckets have no os.walk; a missing prefix lists as nothing, like a missing local folder.
  try:
    entries = list(fileio.as_path(folder).iterdir())
  except FileNotFoundError:
    return []
  found = []
  for entry in entries:
    if entry.name.startswith("."):
      continue
    if entry.is_dir():
      if recursive:
        found += _remote_image_names(fileio.join(folder, entry.name),
                                     f"{prefix}{entry.name}/", recursive)
    elif is_image_name(entry.name):
      found.append(prefix + entry.name)
  return found


def list_images(folder: str | os.PathLike) -> list[str]:
  """Paths of the image files directly in `folder`, in natural order (see `image_names`)."""
  folder = os.fspath(folder)
  if not fileio.is_dir(folder):
    raise FileNotFoundError(f"{folder}: no such folder")
  return [fileio.join(folder, n) for n in image_names(folder)]


def _to_rgb_float(im: Image.Image) -> np.ndarray:
  if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    # 16-bit greyscale (PNG/TIFF); "I" is how some Pillow versions expose it.
    a = np.asarray(im).astype(np.float32)
    if a.min() < 0 or a.max() > 65535:
      raise ImageReadError(f"integer image values outside 0..65535 (mode {im.mode})")
    return np.repeat((a / 65535.0)[..., None], 3, axis=-1)
  if im.mode == "F":
    a = np.asarray(im, dtype=np.float32)
    if not np.all(np.isfinite(a)):
      raise ImageReadError("floating-point image with NaN or infinite values")
    return np.repeat(np.clip(a, 0.0, 1.0)[..., None], 3, axis=-1)
  if im.mode != "RGB":
    if "transparency" in im.info:  # palette/grey with a transparent colour: expand it first
      im = im.convert("RGBA")
    im = im.convert("RGB")
  return np.asarray(im, dtype=np.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class Metadata:
  """What a photo carries besides its pixels and is worth keeping on the de-rained copy."""
  exif: bytes | None = None  # orientation reset to 1: the decoded pixels are already upright
  icc_profile: bytes | None = None


def _decode(f: BinaryIO, name: str) -> tuple[np.ndarray, Metadata]:
  try:
    with warnings.catch_warnings():
      # A truncated or oversized file must fail loudly, not decode partly.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(f) as im:
        im.load()
        im = ImageOps.exif_transpose(im)  # also sets the orientation tag in im.info to 1
        metadata = Metadata(im.info.get("exif") or None, im.info.get("icc_profile") or None)
        rgb = _to_rgb_float(im)
  except ImageReadError as e:
    raise ImageReadError(f"{name}: {e}") from None
  except UnidentifiedImageError:
    raise ImageReadError(f"{name}: not an image file (format not recognized)") from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
          Image.DecompressionBombError) as e:
    raise ImageReadError(f"{name}: cannot decode image ({e})") from None
  if rgb.shape[0] < 1 or rgb.shape[1] < 1:
    raise ImageReadError(f"{name}: empty image")
  return rgb, metadata


def read_image_with_metadata(path: str | os.PathLike) -> tuple[np.ndarray, Metadata]:
  """`read_image`, and the file's EXIF and ICC profile."""
  path = os.fspath(path)
  try:
    with fileio.open_read(path) as f:
      return _decode(f, path)
  except FileNotFoundError:
    raise ImageReadError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise ImageReadError(f"{path}: is a directory") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Returns the image at `path` as float32 (H, W, 3) in [0, 1], upright per its EXIF tag.

  Raises ImageReadError naming the file if it is missing, not an image, or corrupt.
  """
  return read_image_with_metadata(path)[0]


def decode_image(data: bytes, name: str = "image") -> tuple[np.ndarray, Metadata]:
  """Like `read_image_with_metadata` for bytes held in memory (an upload); errors name `name`.
  What a file holds is decided by decoding it, never by its name or a declared type."""
  if not data:
    raise ImageReadError(f"{name}: empty file")
  return _decode(io.BytesIO(data), name)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Clamps to [0, 1] and rounds to the nearest 8-bit level."""
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}


def encode_image(image: np.ndarray, format: str = "png", quality: int = 95,
                 metadata: Metadata | None = None) -> bytes:
  """Float [0, 1] or uint8 RGB as 8-bit PNG or JPEG bytes (`quality` 1..100 for JPEG), with
  the EXIF and ICC profile of `metadata` when given."""
  if format.lower() not in FORMATS:
    raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
  if not 1 <= quality <= 100:
    raise ValueError(f"quality must be in 1..100, got {quality}")
  if image.dtype != np.uint8:
    image = to_uint8(image)
  kind = FORMATS[format.lower()]
  options = {"quality": quality} if kind == "JPEG" else {}
  if metadata is not None and metadata.exif:
    options["exif"] = metadata.exif
  if metadata is not None and metadata.icc_profile:
    options["icc_profile"] = metadata.icc_profile
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=kind, **options)
  return buffer.getvalue()


def write_image(path: str | os.PathLike, image: np.ndarray, format: str = "png",
                quality: int = 95, metadata: Metadata | None = None) -> None:
  """`encode_image` into a file; an existing file is replaced whole."""
  data = encode_image(image, format, quality, metadata)
  with atomic_write(path) as f:
    f.write(data)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes float [0, 1] or uint8 RGB as an 8-bit PNG; an existing file is replaced whole."""
  write_image(path, image, "png")
