"""The TFDS builder of the embedded demo dataset: synthetic rain over clean photos that ship
with the package.

Nobody can download the de-raining benchmarks from a script, so the demo and the tests train
on pairs made here. The TFDS builder `synthetic_rain` has these configs:

  shipped  the four photos in `sapnet_jax/data/demo_images/` (public domain / CC0, from
           scikit-image's bundled data; see the README there). train: astronaut, coffee and
           rocket, 16 rain draws each = 48 pairs; validation: chelsea, 3 draws = 3 pairs.
           Needs nothing but the package.
  pool     the shipped photos plus every image in MANUAL_DIR (e.g. the project's
           `shared/data/clean_pool`, 150 photos). validation: chelsea and every 10th MANUAL_DIR
           image by name (1 draw each); train: all others (2 draws each).
  shipped_rain100h, pool_rain100h
           the same pairs with rain drawn like Rain100H's (`rain_renderer.RAIN100H`), closer to what
           the released weights were trained on (configs/finetune.py; docs/fidelity.md).

Validation scenes never appear in training (held out by image, not by draw). Every pair's
seed is derived from the image name and draw number (`pair_seed`), so a build gives the same
pairs every time, whatever the order or the other images. Draws cycle through the default,
heavy and light rain styles of `rain_renderer.py`, without their veil (rain streaks only), except in
the *_rain100h configs.

Built by `sapnet_jax.data.prepare` like every dataset; `demo.build_demo(data_dir)` builds the
shipped config and says where it is.
"""


from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds

from sapnet_jax.data import builders, imageio, rain_renderer
from sapnet_jax.data.pairs import LayoutError

IMAGES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_images")
SHIPPED = ("astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg")
SHIPPED_HELD_OUT = ("chelsea.jpg",)
# Streaks without the veil (rain_renderer.py still draws veils): three photos do not teach the small
# demo network to undo a global veil, while it learns streaks (docs/fidelity.md, Training).
DRAW_STYLES = tuple(dataclasses.replace(s, haze_probability=0.0)
                    for s in (rain_renderer.RainStyle(), rain_renderer.HEAVY, rain_renderer.LIGHT))
SEED = 20220104  # fixed: the dataset is part of the package, not of an experiment


@dataclasses.dataclass(eq=False)
class SyntheticRainConfig(tfds.core.BuilderConfig):
  """A `synthetic_rain` config: which clean photos (shipped only, or plus MANUAL_DIR) and the
  rain styles its draws cycle through."""

  pool: bool = False
  styles: tuple[rain_renderer.RainStyle, ...] = DRAW_STYLES


@dataclasses.dataclass(frozen=True)
class DemoItem:
  """One pair to synthesize: a clean photo, its source name, the record name, the rain draw."""

  clean: str
  source: str
  name: str
  draw: int


def pair_seed(seed: int, name: str, draw: int) -> int:
  """A seed that depends only on (seed, image name, draw): stable across machines and runs."""
  return zlib.crc32(f"{seed}:{name}:{draw}".encode("utf-8"))


def clean_sources(clean_dir: str | None = None) -> list[tuple[str, str]]:
  """(name, path) of the shipped photos, then of the images in `clean_dir` (sorted)."""
  sources = [(f"shipped/{n}", os.path.join(IMAGES_DIR, n)) for n in SHIPPED]
  if clean_dir:
    names = imageio.image_names(clean_dir)
    if not names:
      raise LayoutError(f"{clean_dir}: no clean image files found")
    sources += [(n, os.path.join(clean_dir, n)) for n in names]
  return sources


def demo_items(clean_dir: str | None) -> dict[str, list[DemoItem]]:
  """split -> items; `clean_dir` None gives the `shipped` config."""
  train, validation = [], []
  pool_draws = (2, 1)
  for index, (name, path) in enumerate(clean_sources(clean_dir)):
    shipped = name.startswith("shipped/")
    if shipped:
      held_out = os.path.basename(name) in SHIPPED_HELD_OUT
      draws = (3 if held_out else 16) if clean_dir is None else pool_draws[held_out]
    else:
      held_out = (index - len(SHIPPED)) % 10 == 9
      draws = pool_draws[held_out]
    stem = os.path.splitext(name)[0]
    items = [DemoItem(path, name, f"{stem}_r{d}.png", d) for d in range(draws)]
    (validation if held_out else train).extend(items)
  return {"train": train, "validation": validation}


class SyntheticRain(builders.PairedBuilder):
  """Synthetic rain over clean photos: the demo dataset (see sapnet_jax/data/synthetic_builder.py).

  Configs `shipped` and `shipped_rain100h` need no MANUAL_DIR; `pool` and `pool_rain100h` read
  the clean photos directly in MANUAL_DIR (not recursive), e.g. the project's
  shared/data/clean_pool.
  """

  name = "synthetic_rain"
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "shipped: 16 rain draws per training photo (was 4); 12 pairs let "
                            "the demo memorise a colour shift that wrecked the held-out scene.",
                   "1.2.0": "rain streaks without the atmospheric veil."}
  BUILDER_CONFIGS = [
      SyntheticRainConfig(name="shipped", description="the 4 shipped photos only"),
      SyntheticRainConfig(name="pool", description="shipped photos + MANUAL_DIR photos",
                          pool=True),
      SyntheticRainConfig(name="shipped_rain100h", styles=(rain_renderer.RAIN100H,),
                          description="the 4 shipped photos, Rain100H-like rain"),
      SyntheticRainConfig(name="pool_rain100h", pool=True, styles=(rain_renderer.RAIN100H,),
                          description="shipped + MANUAL_DIR photos, Rain100H-like rain"),
  ]
  DEFAULT_CONFIG_NAME = "shipped"

  def _split_generators(self, dl_manager):
    clean_dir = os.fspath(dl_manager.manual_dir) if self.builder_config.pool else None
    return {split: self._generate_examples(split, items)
            for split, items in demo_items(clean_dir).items()}

  def load(self, pair: DemoItem) -> dict:
    clean_bytes, clean = builders.encode_image_file(pair.clean)
    styles = self.builder_config.styles
    style = styles[pair.draw % len(styles)]
    rainy, _ = rain_renderer.add_rain(clean, pair_seed(SEED, pair.source, pair.draw), style)
    return {"rainy": builders.png_bytes(imageio.to_uint8(rainy)), "clean": clean_bytes,
            "size": np.array(clean.shape[:2], np.int32)}


SyntheticRain.MANUAL_DOWNLOAD_INSTRUCTIONS = SyntheticRain.__doc__
