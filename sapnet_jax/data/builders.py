"""TFDS builders for the de-raining benchmarks, read from a user's `manual_dir`.

None of these datasets can be downloaded by a script (they live on Baidu/OneDrive/Google Drive
links), so each builder reads the unpacked public archive from `manual_dir` and writes an
ArrayRecord dataset that `tfds.data_source` (and so grain) reads with random access. Building
needs no TensorFlow. Build once with

    python -m sapnet_jax.data.prepare --dataset rain100h --manual_dir DIR --data_dir DIR

Every paired builder has the same features:
  rainy, clean  uint8 RGB images (H, W, 3); stored as the source file's own bytes when it is an
                8-bit RGB PNG or JPEG without an EXIF rotation (decoding them gives exactly the
                source pixels), otherwise as a lossless PNG of what `imageio.read_image` decodes
  name          the rainy file's path relative to the folder it was found in
  size          int32 [height, width]
The unlabelled `real_rain` builder has `rainy`, `name` and `size` only. Records keep the
natural order of the names (shuffling is the input pipeline's job), and the dataset's
metadata holds every record's size (`info.metadata["sizes"][split]`), so the pipeline can plan
patches without decoding images.

Each split of a builder is looked for in a list of folders under `manual_dir` (the first that
exists is used; "." means `manual_dir` itself, used only when a layout fits it). Inside a split
folder the builder's layouts are tried in order (see `pairs.py`); a split folder that exists
but fits no layout, unpaired names, or a corrupt image stop the build with a message naming the
folder or file.
"""

from __future__ import annotations

import inspect
import io
import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, UnidentifiedImageError

from sapnet_jax.data import imageio
from sapnet_jax.data.imageio import image_names
from sapnet_jax.data.pairs import (SAME_NAME_LAYOUTS, Layout, LayoutError, Pair, describe_folder,
                                   find_folder, find_pairs, pairs_from_list)

_ORIENTATION = 0x0112


def encode_image_file(path: str) -> tuple[bytes, np.ndarray]:
  """Returns (bytes to store, decoded uint8 RGB) for an image file.

  The whole file is decoded first (a corrupt or truncated file raises ImageReadError naming
  it). 8-bit RGB PNGs and JPEGs with no EXIF rotation are stored as they are: Pillow decodes
  those bytes to exactly the pixels `read_image` gives, and nothing is recompressed.
  """
  pixels = imageio.to_uint8(imageio.read_image(path))
  with open(path, "rb") as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as im:
      verbatim = (im.format in ("PNG", "JPEG") and im.mode == "RGB"
                  and im.getexif().get(_ORIENTATION, 1) == 1)
  except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
    verbatim = False
  if not verbatim:
    data = png_bytes(pixels)
  return data, pixels


def png_bytes(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  return buf.getvalue()


def decode_record_image(data: bytes) -> np.ndarray:
  """Decodes the image bytes of a built dataset's record to uint8 RGB (H, W, 3) with Pillow,
  as `encode_image_file` stored them (trusted, already upright; uploads and files go through
  imageio's checked decoders instead).

  The pipeline decodes with this rather than TFDS's decoder, which switches to OpenCV when it
  is installed; Pillow is what `encode_image_file` checked the bytes against.
  """
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)


def _image_feature() -> tfds.features.Image:
  return tfds.features.Image(shape=(None, None, 3), dtype=np.uint8)


class PairedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: splits found in `manual_dir`, pairs by `LAYOUTS`, one record per pair."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # split -> folders (relative to manual_dir) to look for it in, in order; "." is manual_dir.
  SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {}
  LAYOUTS: tuple[Layout, ...] = SAME_NAME_LAYOUTS
  HOMEPAGE = ""
  CITATION = ""
  LABELLED = True

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
    # TFDS 4.9.10 finds a package builder's source through `importlib_resources`, which it
    # only installs on Python < 3.9 (tensorflow/datasets#11212); the file is all it needs.
    return epath.Path(inspect.getfile(cls))

  MANUAL_DOWNLOAD_INSTRUCTIONS = "See the builder's docstring for the expected folder layout."

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"rainy": _image_feature(), "name": tfds.features.Text(),
                "size": tfds.features.Tensor(shape=(2,), dtype=np.int32)}
    if self.LABELLED:
      features["clean"] = _image_feature()
    return tfds.core.DatasetInfo(
        builder=self, description=(type(self).__doc__ or "").strip().split("\n")[0],
        features=tfds.features.FeaturesDict(features), homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None, disable_shuffling=True,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    found = self.find_splits(manual_dir)
    return {split: self._generate_examples(split, pairs) for split, pairs in found.items()}

  # ---- overridable parts --------------------------------------------------------------------
  def pairs_in(self, folder: str, split: str) -> list[Pair]:
    """The pairs of one split folder (raises LayoutError if it fits no layout)."""
    del split
    return find_pairs(folder, self.LAYOUTS)[1]

  def fits(self, folder: str) -> bool:
    """Whether `folder` fits a layout at all (decides whether "." is a split)."""
    try:
      self.pairs_in(folder, "")
      return True
    except LayoutError:
      return False

  def load(self, pair: Pair) -> dict:
    """The record for one pair (overridden by builders whose files are not one image each)."""
    rainy, rainy_px = encode_image_file(pair.rainy)
    clean, clean_px = encode_image_file(pair.clean)
    if rainy_px.shape != clean_px.shape:
      raise LayoutError(f"{pair.rainy} is {rainy_px.shape[1]}x{rainy_px.shape[0]} but its clean "
                        f"partner {pair.clean} is {clean_px.shape[1]}x{clean_px.shape[0]}")
    return {"rainy": rainy, "clean": clean, "size": np.array(rainy_px.shape[:2], np.int32)}

  # ---------------------------------------------------------------------------------------------
  def find_splits(self, manual_dir: str) -> dict[str, list[Pair]]:
    """split -> pairs for every split found under `manual_dir`; LayoutError if none is."""
    if not os.path.isdir(manual_dir):
      raise LayoutError(f"{self.name}: manual_dir {manual_dir} is not a folder. "
                        + self.expected_layout())
    found = self.folder_splits(manual_dir)
    if not found:
      raise LayoutError(f"{self.name}: found no split in {manual_dir} "
                        f"({describe_folder(manual_dir)}). " + self.expected_layout())
    return found

  def folder_splits(self, manual_dir: str,
                    split_folders: dict[str, tuple[str, ...]] | None = None
                    ) -> dict[str, list[Pair]]:
    """The splits whose folder exists (a folder that fits no layout raises LayoutError)."""
    found = {}
    for split, folders in (split_folders or self.SPLIT_FOLDERS).items():
      for rel in folders:
        if rel == ".":
          if self.fits(manual_dir):
            found[split] = self.pairs_in(manual_dir, split)
            break
        else:
          folder = find_folder(manual_dir, rel)
          if folder is not None:
            found[split] = self.pairs_in(folder, split)
            break
    return found

  def expected_layout(self) -> str:
    splits = "; ".join(
        f"{split}: " + " or ".join("MANUAL_DIR itself" if f == "." else f"{f}/" for f in folders)
        for split, folders in self.SPLIT_FOLDERS.items())
    layouts = "\n  ".join(layout.expected() for layout in self.LAYOUTS)
    return (f"Expected split folders ({splits}), each in one of these layouts:\n  {layouts}\n"
            f"See the docstring of {type(self).__module__}.{type(self).__name__}.")

  def _generate_examples(self, split: str, pairs: Sequence[Pair]) -> Iterator[tuple[int, dict]]:
    sizes = []
    for index, pair in enumerate(pairs):
      record = self.load(pair)
      record["name"] = pair.name
      sizes.append([int(v) for v in record["size"]])
      yield index, record
    # Read back by the pipeline to plan patches without decoding any image.
    self.info.metadata.setdefault("sizes", {})[split] = sizes


# ---- the benchmarks ---------------------------------------------------------------------------
_PRENET_PREFIXED = (
    Layout("rain-N.png and norain-N.png side by side (PReNet/SAPNet RainTrainH/L archive)",
           "", "", r"rain-(?P<key>\d+)", r"norain-(?P<key>\d+)"),
    Layout("rainy/rain-N.png, with norain-N.png beside rainy/ (PReNet test archive)",
           "rainy", "", r"rain-(?P<key>\d+)", r"norain-(?P<key>\d+)"),
)


class Rain100H(PairedBuilder):
  """Rain100H (Yang et al., CVPR 2017): heavy synthetic rain, 100 test pairs, RainTrainH.

  MANUAL_DIR holds any of these split folders (the first one present is used):
    train: RainTrainH/ or train/RainTrainH/ or train/
    test:  Rain100H/ or test/Rain100H/ or test/ or MANUAL_DIR itself
  Each split folder is laid out in one of these ways (names pair by their number, so
  `rain-1.png` pairs with `norain-001.png`):
    1. rain-N.png and norain-N.png side by side: the PReNet/SAPNet archive (BaiduYun/OneDrive
       links in the PReNet README). Its RainTrainH keeps 1,254 of the 1,800 pairs: PReNet
       removed 546 whose backgrounds repeat test images.
    2. rainy/rain-N.png with norain-N.png beside rainy/ (the PReNet test archive).
    3. rainy/ + clean/ with equal names (e.g. the project's shared `rain100h/`: NNN.png).
    4. rain/ + norain/, names equal or rain-N / norain-N.
    5. input/ + target/ with equal names (MPRNet/Restormer test sets).
  """

  name = "rain100h"
  HOMEPAGE = "https://github.com/csdwren/PReNet#datasets"
  CITATION = ("@inproceedings{yang2017deep, title={Deep joint rain detection and removal from a "
              "single image}, author={Yang, Wenhan and Tan, Robby T and Feng, Jiashi and Liu, "
              "Jiaying and Guo, Zongming and Yan, Shuicheng}, booktitle={CVPR}, year={2017}}")
  SPLIT_FOLDERS = {"train": ("RainTrainH", "train/RainTrainH", "train"),
                   "test": ("Rain100H", "test/Rain100H", "test", ".")}
  LAYOUTS = _PRENET_PREFIXED + SAME_NAME_LAYOUTS


class Rain100L(Rain100H):
  """Rain100L (Yang et al., CVPR 2017): light synthetic rain, 100 test pairs, RainTrainL (200).

  MANUAL_DIR holds any of these split folders (the first one present is used):
    train: RainTrainL/ or train/RainTrainL/ or train/
    test:  Rain100L/ or test/Rain100L/ or test/ or MANUAL_DIR itself
  Layouts as for rain100h: rain-N + norain-N side by side (PReNet archive), rainy/rain-N +
  norain-N, rainy/ + clean/, rain/ + norain/, input/ + target/. The official Rain100L training
  also uses a horizontally mirrored copy of each image: `data.mirror_copies=True`.
  """

  name = "rain100l"
  SPLIT_FOLDERS = {"train": ("RainTrainL", "train/RainTrainL", "train"),
                   "test": ("Rain100L", "test/Rain100L", "test", ".")}


class Rain12(PairedBuilder):
  """Rain12 (Li et al., CVPR 2016): 12 synthetic test pairs.

  MANUAL_DIR holds test: Rain12/ or test12/ or test/Rain12/ or test/ or MANUAL_DIR itself,
  laid out in one of these ways:
    1. N_in.png + N_GT.png side by side (the authors' release).
    2. rainy/N.png + groundtruth/N.png (the PReNet `test12` archive).
    3. rainy/ + clean/, rain/ + norain/ or input/ + target/ with equal names.
  """

  name = "rain12"
  HOMEPAGE = "https://yu-li.github.io/"
  SPLIT_FOLDERS = {"test": ("Rain12", "test12", "test/Rain12", "test", ".")}
  LAYOUTS = (
      Layout("N_in.png and N_GT.png side by side (authors' release)", "", "",
             r"(?P<key>\d+)_in", r"(?P<key>\d+)_GT"),
      Layout("rainy/N.png + groundtruth/N.png (PReNet test12)", "rainy", "groundtruth"),
  ) + SAME_NAME_LAYOUTS


class Rain1400(PairedBuilder):
  """Rain1400 / DDN-Data (Fu et al., CVPR 2017): 14 rain renderings of each clean image.

  MANUAL_DIR holds any of these split folders:
    train: training/ or train/Rain12600/ or Rain12600/ or train/  (images 1..900: 12,600 pairs)
    test:  testing/ or test/Rain1400/ or Rain1400/ or test/      (images 901..1000: 1,400 pairs)
  Each laid out as rainy_image/N_M.jpg + ground_truth/N.jpg (M = 1..14 renderings share the
  clean image N), or rainy/ + clean/, rain/ + norain/, input/ + target/ with equal names.
  The official Rain12600 training uses stride-100 patches (`data.stride=100`).
  """

  name = "rain1400"
  HOMEPAGE = "https://xueyangfu.github.io/projects/cvpr2017.html"
  SPLIT_FOLDERS = {"train": ("training", "train/Rain12600", "Rain12600", "train"),
                   "test": ("testing", "test/Rain1400", "Rain1400", "test")}
  LAYOUTS = (
      Layout("rainy_image/N_M.jpg + ground_truth/N.jpg (DDN release: renderings M = 1..14 "
             "share the clean image N)",
             "rainy_image", "ground_truth", r"(?P<key>\d+)_\d+", r"(?P<key>\d+)",
             many_rainy_per_clean=True),
  ) + SAME_NAME_LAYOUTS


class Rain800(PairedBuilder):
  """Rain800 (Zhang et al., ID-CGAN, TCSVT 2019): 700 training and 100 test pairs.

  MANUAL_DIR holds train: training/ or train/ and test: test_syn/ or test/. A split folder is
  either the authors' release, where each image is one pair side by side (left half clean,
  right half rainy: pix2pix "BtoA", as the ID-CGAN README trains it), or one of the folder
  layouts rainy/ + clean/, rain/ + norain/, input/ + target/ with equal names.
  """

  name = "rain800"
  HOMEPAGE = "https://github.com/hezhangsprinter/ID-CGAN"
  SPLIT_FOLDERS = {"train": ("training", "train"), "test": ("test_syn", "test")}

  def pairs_in(self, folder: str, split: str) -> list[Pair]:
    try:
      return find_pairs(folder, self.LAYOUTS)[1]
    except LayoutError:
      names = image_names(folder)
      if not names:
        raise
    return [Pair(os.path.join(folder, n), None, n) for n in names]

  def load(self, pair: Pair) -> dict:
    if pair.clean is not None:
      return super().load(pair)
    pixels = imageio.to_uint8(imageio.read_image(pair.rainy))
    h, w = pixels.shape[:2]
    if w % 2:
      raise LayoutError(f"{pair.rainy}: width {w} is odd, so it is not a clean|rainy pair side "
                        "by side; use the folder layouts for pre-split files")
    clean, rainy = pixels[:, : w // 2], pixels[:, w // 2:]
    return {"rainy": png_bytes(np.ascontiguousarray(rainy)),
            "clean": png_bytes(np.ascontiguousarray(clean)),
            "size": np.array([h, w // 2], np.int32)}


class SpaData(PairedBuilder):
  """SPA-Data (Wang et al., CVPR 2019): real rainy photos with rain-free references.

  MANUAL_DIR is the unpacked archive. Splits come from the archive's lists when present:
    train: real_world.txt  (lines `rainy_path clean_path`, paths relative to MANUAL_DIR even
                            when they start with `/` or `./`)
    test:  real_test_1000.txt
  Otherwise from folders train/ and test/ (or real_test_1000/) laid out as rainy/ + clean/,
  rain/ + norain/ or input/ + target/ with equal names.
  """

  name = "spa_data"
  HOMEPAGE = "https://stevewongv.github.io/derain-project.html"
  SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "real_test_1000")}
  LISTS = {"train": "real_world.txt", "test": "real_test_1000.txt"}

  def folder_splits(self, manual_dir: str) -> dict[str, list[Pair]]:
    found = {split: pairs_from_list(os.path.join(manual_dir, name), manual_dir)
             for split, name in self.LISTS.items()
             if os.path.isfile(os.path.join(manual_dir, name))}
    rest = {split: folders for split, folders in self.SPLIT_FOLDERS.items() if split not in found}
    return {**found, **(super().folder_splits(manual_dir, rest) if rest else {})}

  def expected_layout(self) -> str:
    return ("Expected real_world.txt / real_test_1000.txt, or " + super().expected_layout())


class PairedFolder(PairedBuilder):
  """Any paired de-raining data: rainy/ + clean/ with equal file names.

  MANUAL_DIR holds rainy/ + clean/ directly (that becomes the `train` split), or split folders
  train/, validation/, test/ each holding rainy/ + clean/. rain/ + norain/ and input/ + target/
  are accepted too. Names pair by stem, so `a.jpg` pairs with `a.png`.
  """

  name = "paired_folder"
  SPLIT_FOLDERS = {"train": ("train", "."), "validation": ("validation",), "test": ("test",)}


class RealRain(PairedBuilder):
  """Unlabelled real rainy photos (SIRR, MOSS, Rain800 real, your own): any folder of images.

  Every image file under MANUAL_DIR (recursively, hidden files skipped) becomes one record of
  the `train` split, named by its path relative to MANUAL_DIR. Used as the unlabelled stream of
  semi-supervised training (`data.real_dataset`).
  """

  name = "real_rain"
  LABELLED = False
  SPLIT_FOLDERS = {"train": (".",)}

  def pairs_in(self, folder: str, split: str) -> list[Pair]:
    names = image_names(folder, recursive=True)
    if not names:
      raise LayoutError(f"{folder}: no image files found (extensions "
                        f"{', '.join(imageio.IMAGE_EXTENSIONS)})")
    return [Pair(os.path.join(folder, n), None, n) for n in names]

  def expected_layout(self) -> str:
    return "Expected image files anywhere under MANUAL_DIR."

  def load(self, pair: Pair) -> dict:
    rainy, pixels = encode_image_file(pair.rainy)
    return {"rainy": rainy, "size": np.array(pixels.shape[:2], np.int32)}


BUILDERS = {cls.name: cls for cls in (Rain100H, Rain100L, Rain12, Rain1400, Rain800, SpaData,
                                      PairedFolder, RealRain)}

for _cls in BUILDERS.values():
  # TFDS prints this when manual_dir is missing or empty.
  _cls.MANUAL_DOWNLOAD_INSTRUCTIONS = _cls.__doc__
