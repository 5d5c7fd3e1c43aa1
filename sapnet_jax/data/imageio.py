"""Robust reading and atomic writing of image files.

Reading gives RGB float32 in [0, 1] whatever the file holds: greyscale is replicated to three
channels, alpha is dropped, palettes and CMYK are converted, EXIF orientation is applied,
16-bit greyscale keeps its precision (Pillow decodes 16-bit colour PNGs to 8 bits). Paths may
be local or URIs (gs://...): files are read and folders listed through `sapnet_jax.utils.fileio`.

Only the documented formats (ACCEPTED_FORMATS) reach a decoder: Pillow can decode dozens more
(EPS through Ghostscript among them), and each is attack surface nobody asked for. Callers that
take files from strangers pass `max_pixels`, checked from the header before any pixel is
decoded and again after decoding.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sapnet_jax.utils import fileio
from sapnet_jax.utils.fileio import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".pnm", ".gif")


# Pillow's names of the formats behind IMAGE_EXTENSIONS (PPM covers .pgm and .pnm; JPEG's
# opener also takes its multi-picture variant, MPO).
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM", "GIF")
ACCEPTED_TEXT = "PNG, JPEG, BMP, TIFF, WebP, PNM (PPM/PGM) or GIF"


class ImageReadError(ValueError):
  """An input file that is missing, not an image, or cannot be decoded."""


class UnsupportedFormatError(ImageReadError):
  """An image in a format Pillow knows but the package does not accept (a server's 415)."""


class ImageTooLargeError(ImageReadError):
  """An image with more pixels than the caller's budget (a server's 413)."""

  def __init__(self, message: str, pixels: int, limit: int):
    super().__init__(message)
    self.pixels, self.limit = pixels, limit


class MetadataDroppedWarning(UserWarning):
  """Metadata the output format cannot hold was left out; the pixels were written."""


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


def _identify(f: BinaryIO) -> str | None:
  """The format Pillow would read `f` as, from its header only (nothing is decoded); None if
  no format claims it."""
  f.seek(0)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      with Image.open(f) as im:
        return im.format
  except Exception:  # noqa: BLE001 - any failure only means "not identified"
    return None


def _check_size(im: Image.Image, name: str, max_pixels: int | None) -> None:
  count = im.width * im.height
  if max_pixels is not None and count > max_pixels:
    raise ImageTooLargeError(
        f"{name}: {im.width}x{im.height} is {count:,} pixels, more than the {max_pixels:,} "
        "allowed", count, max_pixels)


def _decode(f: BinaryIO, name: str, max_pixels: int | None = None) -> tuple[np.ndarray, Metadata]:
  name = fileio.printable(name)
  try:
    with warnings.catch_warnings():
      # Pillow warns of each oddity it skips over (corrupt EXIF, tags past the end): noise in a
      # server's log that any client can cause. A truncated or oversized file must fail
      # loudly, not decode partly.
      warnings.simplefilter("ignore", UserWarning)
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(f, formats=ACCEPTED_FORMATS) as im:
        _check_size(im, name, max_pixels)  # from the header, before decoding
        im.load()
        _check_size(im, name, max_pixels)  # what was decoded, whatever the header said
        im = ImageOps.exif_transpose(im)  # also sets the orientation tag in im.info to 1
        metadata = Metadata(im.info.get("exif") or None, im.info.get("icc_profile") or None)
        rgb = _to_rgb_float(im)
  except ImageReadError as e:
    if isinstance(e, ImageTooLargeError):
      raise
    raise ImageReadError(f"{name}: {e}") from None
  except UnidentifiedImageError:
    found = _identify(f)
    if found is not None:
      raise UnsupportedFormatError(f"{name}: {found} images are not accepted; send "
                                   f"{ACCEPTED_TEXT}") from None
    raise ImageReadError(f"{name}: not an image file (format not recognized)") from None
  except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
    # Pillow's own limit, checked when the header is read: the file claims too many pixels.
    found = re.search(r"\((\d+) pixels\)", str(e))
    count, limit = int(found.group(1)) if found else 0, Image.MAX_IMAGE_PIXELS or 0
    if max_pixels is not None:
      limit = min(limit, max_pixels)
    raise ImageTooLargeError(f"{name}: {count:,} pixels, more than the {limit:,} allowed",
                             count, limit) from None
  except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
    # Pillow's decoders raise many kinds on malformed data (seen by fuzzing); all are the
    # file's fault.
    raise ImageReadError(f"{name}: cannot decode image ({_one_line(e)})") from None
  if rgb.shape[0] < 1 or rgb.shape[1] < 1:
    raise ImageReadError(f"{name}: empty image")
  return rgb, metadata


def _one_line(error: BaseException) -> str:
  return fileio.printable(str(error) or type(error).__name__)


def read_image_with_metadata(path: str | os.PathLike, max_pixels: int | None = None
                             ) -> tuple[np.ndarray, Metadata]:
  """`read_image`, and the file's EXIF and ICC profile."""
  path = os.fspath(path)
  try:
    with fileio.open_read(path) as f:
      return _decode(f, path, max_pixels)
  except FileNotFoundError:
    raise ImageReadError(f"{fileio.printable(path)}: no such file") from None
  except IsADirectoryError:
    raise ImageReadError(f"{fileio.printable(path)}: is a directory") from None


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
  """Returns the image at `path` as float32 (H, W, 3) in [0, 1], upright per its EXIF tag.

  Raises ImageReadError naming the file if it is missing, not an image, or corrupt;
  UnsupportedFormatError (a subclass) if it is in a format not accepted; ImageTooLargeError
  (a subclass) if it has more than `max_pixels` pixels. Names in messages are printable.
  """
  return read_image_with_metadata(path, max_pixels)[0]


def decode_image(data: bytes, name: str = "image",
                 max_pixels: int | None = None) -> tuple[np.ndarray, Metadata]:
  """Like `read_image_with_metadata` for bytes held in memory (an upload); errors name `name`.
  What a file holds is decided by decoding it, never by its name or a declared type."""
  if not data:
    raise ImageReadError(f"{fileio.printable(name)}: empty file")
  return _decode(io.BytesIO(data), name, max_pixels)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Clamps to [0, 1] and rounds to the nearest 8-bit level (in place on one copy: a 12 MP
  result takes 0.05 s instead of 0.2-0.5 s with a temporary per step)."""
  out = np.asarray(np.clip(np.asarray(image, np.result_type(image, np.float32)), 0.0, 1.0))
  out *= 255.0
  np.rint(out, out=out)
  return out.astype(np.uint8)


FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}


def encode_image(image: np.ndarray, format: str = "png", quality: int = 95,
                 metadata: Metadata | None = None, notes: list[str] | None = None) -> bytes:
  """Float [0, 1] or uint8 RGB as 8-bit PNG or JPEG bytes (`quality` 1..100 for JPEG), with
  the EXIF and ICC profile of `metadata` when given.

  Metadata the format cannot hold (EXIF over JPEG's 64 kB segment, say) is left out and the
  pixels are still encoded: one line per dropped block is appended to `notes` when a list is
  given, else issued as a MetadataDroppedWarning.
  """
  if format.lower() not in FORMATS:
    raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
  if not 1 <= quality <= 100:
    raise ValueError(f"quality must be in 1..100, got {quality}")
  if image.dtype != np.uint8:
    image = to_uint8(image)
  kind = FORMATS[format.lower()]
  # PNG at zlib level 1, the default of OpenCV's imwrite (so of BasicSR's outputs): a 12 MP
  # result encodes in 0.9 s instead of 4.3 s at Pillow's level 6, for files 18-26% larger.
  options = {"quality": quality} if kind == "JPEG" else {"compress_level": 1}
  kept = {}
  if metadata is not None and metadata.exif:
    kept["exif"] = metadata.exif
  if metadata is not None and metadata.icc_profile:
    kept["icc_profile"] = metadata.icc_profile
  picture = Image.fromarray(image)
  while True:
    buffer = io.BytesIO()
    try:
      picture.save(buffer, format=kind, **options, **kept)
      return buffer.getvalue()
    except (ValueError, OSError, struct.error) as e:
      if not kept:
        raise
      # Drop one block at a time, EXIF first (the larger and the likelier to be refused).
      key = "exif" if "exif" in kept else "icc_profile"
      label = {"exif": "EXIF", "icc_profile": "ICC profile"}[key]
      note = (f"{label} metadata ({len(kept.pop(key)):,} bytes) dropped: {kind} cannot hold it "
              f"({_one_line(e)})")
      if notes is not None:
        notes.append(note)
      else:
        warnings.warn(note, MetadataDroppedWarning, stacklevel=2)


def write_image(path: str | os.PathLike, image: np.ndarray, format: str = "png",
                quality: int = 95, metadata: Metadata | None = None) -> None:
  """`encode_image` into a file; an existing file is replaced whole."""
  data = encode_image(image, format, quality, metadata)
  with atomic_write(path) as f:
    f.write(data)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes float [0, 1] or uint8 RGB as an 8-bit PNG; an existing file is replaced whole."""
  write_image(path, image, "png")
